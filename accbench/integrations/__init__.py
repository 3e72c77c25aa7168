"""Adapters that let other evaluation tools drive accbench's engine (lm-eval) or run as subprocesses."""
