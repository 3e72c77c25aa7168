"""Real-quant checkpoints: the quantized model written in a serving engine's format (compressed_tensors.py)."""
