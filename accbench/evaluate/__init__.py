"""Evaluation: perplexity, the request engine, tasks, judges and the code sandbox."""
