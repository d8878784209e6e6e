"""Postgres schema and migrations, Redis snapshots, recovery."""
