"""Storage: SQLModel tables, engine set-up and migrations (SQLite by default, PostgreSQL too)."""

from .db import Store, open_store

__all__ = ["Store", "open_store"]
