"""Locks between replicas and commands: one holder per job within a deployment, and two
deployments that share a PostgreSQL database (each in its own schema) never block each other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from worker.store.db import Store, open_store
from worker.store.locks import exclusive, lock_key


@pytest.fixture
def two_schemas(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    from conftest import _pg_schema

    first = _pg_schema(request)
    url_a = next(first)
    second = _pg_schema(_Renamed(request, "-other"))  # type: ignore[arg-type]
    url_b = next(second)
    yield url_a, url_b
    for gen in (first, second):
        next(gen, None)


class _Renamed:
    """A request whose node id differs, so _pg_schema names a second schema."""

    def __init__(self, request: pytest.FixtureRequest, suffix: str) -> None:
        self.node = type("Node", (), {"nodeid": request.node.nodeid + suffix})()


def _stores(*urls: str) -> list[Store]:
    return [open_store(u) for u in urls]


def test_two_deployments_in_one_postgres_database_do_not_block_each_other(two_schemas: tuple[str, str]) -> None:
    url_a, url_b = two_schemas
    a, a_again, b = _stores(url_a, url_a, url_b)
    try:
        assert a.lock_namespace != b.lock_namespace
        with exclusive(a, "check") as mine:
            assert mine
            with exclusive(b, "check") as other_deployment:
                assert other_deployment  # another schema: its own lock
            with exclusive(a_again, "check") as same_deployment:
                assert not same_deployment  # a replica of the same deployment waits its turn
        with exclusive(a_again, "check") as after:
            assert after
    finally:
        for s in (a, a_again, b):
            s.dispose()


def test_a_sqlite_lock_is_held_once_per_file(tmp_path: Path) -> None:
    a, a_again, b = _stores(f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db")
    try:
        with exclusive(a, "outbox") as mine, exclusive(b, "outbox") as other_file:
            assert mine and other_file
            with exclusive(a_again, "outbox") as same_file:
                assert not same_file
    finally:
        for s in (a, a_again, b):
            s.dispose()


def test_a_pool_with_no_free_connection_is_a_clear_store_error(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import ExitStack

    from worker import defaults
    from worker.errors import StoreError

    monkeypatch.setattr(defaults, "STORE_POOL_TIMEOUT_SECONDS", 0.5)
    store = open_store(pg_url, pool_size=1)
    try:
        with ExitStack() as held:
            for _ in range(1 + 5):  # the pool and its overflow, all busy
                held.enter_context(store.connection())
            with pytest.raises(StoreError, match="database connections .* stayed busy"), store.session() as db:
                db.execute(text("SELECT 1"))
    finally:
        store.dispose()


def test_a_job_whose_lock_connection_dropped_stops_before_writing(pg_url: str) -> None:
    """A session lock lives on its connection: when that connection drops (a database restart,
    a network cut), the lock is gone without a word and a replica may take over. The next write
    notices and stops, instead of working beside the replica."""
    from worker.errors import StoreError
    from worker.store.locks import assert_locks_held, lock_for_storing

    store, other = _stores(pg_url, pg_url)
    try:
        with exclusive(store, "scan:shared") as mine:
            assert mine
            assert_locks_held()  # alive: nothing to say
            with other.connection() as c:  # the lock's connection is cut from the server's side
                key = lock_key("scan:shared", store.lock_namespace) & 0xFFFFFFFFFFFFFFFF
                pids = c.execute(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :hi "
                                      "AND objid = :lo"), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalars().all()
                assert len(pids) == 1
                for pid in pids:
                    c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                c.commit()
            with exclusive(other, "scan:shared") as replica:
                assert replica  # released with the connection
            with pytest.raises(StoreError, match="lost the 'scan:shared' lock"), store.session() as db:
                lock_for_storing(store, db.connection())
    finally:
        store.dispose()
        other.dispose()
