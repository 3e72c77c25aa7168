"""accbench: prove that a changed (quantized or re-trained) language model is still as accurate as before.

Importing the package stays light: torch, transformers and friends load only where used.
"""

__version__ = "0.1.0"
