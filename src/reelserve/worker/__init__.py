"""The worker: claims tasks, runs them on providers, and never loses one."""
