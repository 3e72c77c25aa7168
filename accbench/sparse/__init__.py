"""Sparsity methods (llmc's `sparse:` section): Magnitude and Wanda prune weights, ShortGPT removes whole
decoder blocks. One file per method, the table in methods.py, the whole-model runner in runner.py."""
