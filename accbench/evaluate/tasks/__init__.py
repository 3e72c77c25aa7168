"""Downstream tasks of the native engine: each file turns documents into requests and answers into a TaskResult."""
