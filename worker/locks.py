"""Coordination between replicas through the database (APScheduler job stores cannot be shared).

On PostgreSQL: session advisory locks, held on one dedicated connection for the whole unit of
work (they break under PgBouncer transaction pooling: use session pooling or a direct
connection). On SQLite there is one worker per file: an in-process lock is enough.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from .store import Store

log = logging.getLogger(__name__)
_local_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name."""
    return int.from_bytes(hashlib.sha256(f"carewatch:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(store: Store, name: str) -> Iterator[bool]:
    """Yield True if this process holds the lock `name` now, False if another one does."""
    if store.dialect != "postgresql":
        with _guard:
            lk = _local_locks.setdefault(name, threading.Lock())
        got = lk.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lk.release()
        return
    conn = store.engine.connect()
    try:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})
                conn.commit()
    finally:
        conn.close()


@contextmanager
def held(store: Store, name: str) -> Iterator[None]:
    """Wait for the lock `name` and hold it (PostgreSQL); a no-op on SQLite."""
    if store.dialect != "postgresql":
        yield
        return
    conn = store.engine.connect()
    try:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(name)})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})
            conn.commit()
    finally:
        conn.close()
