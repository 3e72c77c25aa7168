"""Adapters to other tools: lm-eval drives accbench's model backend in-process (lm_eval.py), OpenCompass runs
as a subprocess on the saved models (opencompass.py). Model backends themselves are in evaluate/backends/."""
