"""Causal-LM fine-tuning (Hugging Face Trainer) and training variants, one process per variant."""
