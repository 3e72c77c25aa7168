"""Evaluation: perplexity, model backends (backends/: the contract and the HF backend), the request pool,
tasks, judges and the code sandbox."""
