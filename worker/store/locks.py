"""Coordination between replicas through the database (APScheduler job stores cannot be shared).

On PostgreSQL: session advisory locks, held on one dedicated connection for the whole unit of
work (they break under PgBouncer transaction pooling: use session pooling or a direct
connection). On SQLite there is one worker per file, but a command run beside it (`carewatch
scan` in the worker's container) is another process: an in-process lock for the worker's
threads, plus a byte-range lock on `<database>.locks` for other processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import defaults
from ..errors import StoreError
from . import Store

log = logging.getLogger(__name__)
_local_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()


def lock_key(name: str, namespace: str = "") -> int:
    """A stable signed 64-bit key for a lock name within a namespace (Store.lock_namespace)."""
    return int.from_bytes(hashlib.sha256(f"carewatch:{namespace}:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(store: Store, name: str) -> Iterator[bool]:
    """Yield True if this process holds the lock `name` now, False if another one does."""
    if store.dialect != "postgresql":
        with _guard:
            lk = _local_locks.setdefault((str(store.engine.url.database), name), threading.Lock())
        got = lk.acquire(blocking=False)
        try:
            with _file_lock(store, name, got) as other_process_free:
                yield got and other_process_free
        finally:
            if got:
                lk.release()
        return
    key = lock_key(name, store.lock_namespace)
    with store.connection() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        if got:
            _held_here().append((name, conn))
        try:
            yield got
        finally:
            if got:
                _held_here().remove((name, conn))
                with contextlib.suppress(SQLAlchemyError):  # a lost connection took the lock with it
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()


#: Open `<database>.locks` files: path -> [descriptor, locks this process holds on it].
_lock_files: dict[str, list[int]] = {}


@contextmanager
def _file_lock(store: Store, name: str, wanted: bool) -> Iterator[bool]:
    """Another process's hold on `name` for this SQLite file: one byte of `<database>.locks`
    per name, locked with fcntl (released by the kernel if the process dies). The file is
    closed only when this process holds no lock on it: POSIX drops all of a process's record
    locks on a file when any descriptor of it is closed."""
    db = store.engine.url.database
    if not wanted or not db or db == ":memory:":
        yield wanted
        return
    path = f"{db}.locks"
    with _guard:
        entry = _lock_files.get(path)
        if entry is None:
            entry = _lock_files[path] = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600), 0]
        entry[1] += 1
    fd, offset = entry[0], lock_key(name) & 0x7FFFFFFF
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _lock_files[path]
                os.close(fd)


@contextmanager
def waited_for(store: Store, name: str, timeout: float = defaults.LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock `name` as the worker's job of that name does, waiting for it up to
    `timeout` seconds: a command run beside the worker (`carewatch check`, `outbox deliver`,
    `digest --send`) takes its turn instead of doing the same work at the same time."""
    deadline = time.monotonic() + timeout
    while True:
        with exclusive(store, name) as mine:
            if mine:
                yield
                return
        if time.monotonic() >= deadline:
            raise StoreError(f"another Carewatch process has held the {name!r} lock for over {timeout:.0f}s "
                             "(the worker, or another command): try again when it is done")
        time.sleep(0.2)


@contextmanager
def held(store: Store, name: str) -> Iterator[None]:
    """Wait for the lock `name` and hold it (PostgreSQL); a no-op on SQLite."""
    if store.dialect != "postgresql":
        yield
        return
    key = lock_key(name, store.lock_namespace)
    with store.connection() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


_thread = threading.local()


def _held_here() -> list[tuple[str, Connection]]:
    """The PostgreSQL locks this thread holds, with the connection that holds each."""
    if not hasattr(_thread, "held"):
        _thread.held = []
    return _thread.held


def assert_locks_held() -> None:
    """Raise StoreError if a lock this thread took is gone: a session lock lives on its
    connection, and a connection that dropped (a database restart, a network cut, a pooler)
    released it without a word. Work done after that could run beside a replica's, so it
    stops before it writes."""
    for name, conn in _held_here():
        try:
            conn.execute(text("SELECT 1"))
            conn.commit()
        except SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
            raise StoreError(f"lost the {name!r} lock (its database connection dropped: "
                             f"{type(cause).__name__}); stopping before writing") from exc


def lock_for_storing(store: Store, conn: Connection) -> None:
    """Make the transaction just begun on `conn` the only one storing mail until it ends.

    Storing a batch reads the threads its messages link to and then writes: two scans at once
    (the worker's mailboxes each have a thread; replicas scan different mailboxes) each read
    the store before the other wrote, and a reply stored beside the question it answers
    started a thread of its own, leaving the question waiting. SQLite takes its write lock now
    instead of at the first write (waiting up to the busy timeout); PostgreSQL takes an
    advisory lock that ends with the transaction."""
    if store.dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif store.dialect == "postgresql":
        assert_locks_held()
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("store a batch", store.lock_namespace)})
