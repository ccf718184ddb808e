"""Persistence, and nothing else: every SQL statement reelserve runs, behind named methods, on
SQLite or PostgreSQL. Tables (`tables.py`) and their Alembic migrations (`db.py`), the task queue
(`queue.py`: submit, claim, the fenced writes of a running task; its reads in `task_reads.py`
and upkeep in `task_maintenance.py`), API keys, webhook deliveries and usage records."""
