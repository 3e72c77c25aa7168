"""Adapters to other evaluation tools: each runs a peer tool on accbench's models and reads its results back."""
