"""Downstream tasks of the native engine: one file per benchmark."""
