"""Persistence: tables, migrations, the durable task queue and API keys (SQLite or PostgreSQL)."""
