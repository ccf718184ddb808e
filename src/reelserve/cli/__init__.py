"""The `reelserve` command: serve, worker, generate, keys, tasks, migrate."""
