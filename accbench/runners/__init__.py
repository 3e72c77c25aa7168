"""Data-parallel evaluation: model replicas in local processes (one per GPU group, or CPU cores split
between them) or as Ray actors, each answering a shard of a task's requests."""
