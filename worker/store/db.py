"""Engine set-up, migrations and the few dialect-specific operations (idempotent inserts)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Boolean, DateTime, Engine, Float, Integer, String, create_engine, event, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Session
from sqlmodel.sql.sqltypes import AutoString

from .. import defaults
from ..errors import StoreError

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def describe_db_error(exc: BaseException) -> str:
    """A one-line, actionable description of a database failure (no credentials in it)."""
    text = str(getattr(exc, "orig", exc) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = text.lower()
    if "database or disk is full" in low or "no space left" in low:
        return f"the disk holding the database is full ({text}); free space and rerun: nothing was lost"
    if "locked" in low:
        return f"the database is locked by another process ({text}); it will be retried"
    if "unable to open database" in low or "readonly" in low or "read-only" in low:
        return f"cannot open or write the database file ({text}); check the path and permissions"
    if "timeout expired" in low:
        return (f"the database server accepted the connection but did not answer in time ({text}; "
                "connect_timeout, 10 s unless the store URL sets it); it will be retried")
    if "connection refused" in low or "could not connect" in low or "connection" in low:
        return f"cannot reach the database server ({text})"
    return text


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, cache_kib: int = defaults.SQLITE_CACHE_KIB) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={defaults.SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    # The index pages an ingest batch touches are spread over the file: a bigger page cache
    # (the default is 2 MiB) keeps them, and checkpointing the WAL less often saves fsyncs.
    # The cache is a cap per connection, filled as the file outgrows it (store.sqlite_cache_mib).
    cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    cur.execute(f"PRAGMA wal_autocheckpoint={defaults.SQLITE_WAL_CHECKPOINT_PAGES}")
    cur.close()


def make_engine(url: str, sqlite_cache_mib: int | None = None, pool_size: int = 5) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(f"store.url {url!r} is not a database URL (e.g. sqlite:///carewatch.db or "
                         "postgresql+psycopg://user@host/db)") from None
    if u.drivername == "postgresql":
        # psycopg 3 is the driver we test with; plain postgresql:// would pick psycopg2.
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        # Some queries are written per dialect (dates as epoch seconds, insert-or-ignore, locks).
        raise StoreError(f"store.url: Carewatch stores in SQLite or PostgreSQL, not {u.get_backend_name()!r} "
                         "(e.g. sqlite:///carewatch.db or postgresql://user@host/db)")
    try:
        return _engine(u, sqlite_cache_mib, pool_size)
    except ModuleNotFoundError as exc:
        extra = " (pip install 'carewatch[postgres]')" if u.get_driver_name() == "psycopg" else ""
        raise StoreError(f"store.url: the database driver {u.get_driver_name()!r} is not installed: "
                         f"{exc}{extra}") from None


def _engine(u: URL, sqlite_cache_mib: int | None, pool_size: int) -> Engine:
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:":
            path = Path(db)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # Create the file private to us before SQLite does (it would use the umask):
                # it holds who wrote to whom.
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        # A pool, not a connection per session: closing the last connection to a WAL database
        # checkpoints it (5 ms a batch at ingest), and the pragmas would run for every session.
        engine = create_engine(u, pool_size=pool_size, max_overflow=10, connect_args={"timeout": 30})
        cache_kib = defaults.SQLITE_CACHE_KIB if sqlite_cache_mib is None else sqlite_cache_mib * 1024
        event.listen(engine, "connect", lambda c, r: _sqlite_pragmas(c, r, cache_kib))
        return engine
    connect_args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql" and u.get_driver_name() == "psycopg":
        # libpq's parameters (another driver takes none of them); what the URL sets
        # (?connect_timeout=30) stays as set.
        connect_args.update({k: v for k, v in defaults.POSTGRES_CONNECT.items() if k not in u.query})
        # psycopg prepares a statement after five runs, and PostgreSQL may then keep a generic
        # plan costed while the tables were small (a first scan fills them from empty): an
        # ingest batch's lookups turned into table scans and the scan slowed with every batch.
        # Plan each statement for its own parameters instead.
        connect_args["prepare_threshold"] = None
    return create_engine(u, pool_pre_ping=True, pool_size=pool_size, max_overflow=5, connect_args=connect_args,
                         pool_timeout=defaults.STORE_POOL_TIMEOUT_SECONDS)


def epoch_sql(dialect: str, col: str) -> str:
    """SQL for a DATETIME column (or expression) as POSIX seconds (float)."""
    if dialect == "sqlite":
        return f"CAST(strftime('%s', {col}) AS REAL)"
    return f"EXTRACT(EPOCH FROM {col})::float8"


#: The newest migration. Checked against alembic's own head by the tests; when the store is
#: already there, alembic (which imports every migration script) is not loaded at all.
SCHEMA_HEAD = "0008"


def schema_revision(engine: Engine) -> str | None:
    """The store's alembic revision, None for a new (or pre-alembic) database."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):
            return None


def run_migrations(engine: Engine) -> None:
    """Bring the schema to the newest revision (alembic), safe to call on every start."""
    if schema_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as conn:
        sqlite_conn = conn.connection.driver_connection if engine.dialect.name == "sqlite" else None
        try:
            if sqlite_conn is not None:
                # pysqlite commits on its own before every DDL statement: a first start killed
                # mid-migration left some tables and no alembic_version, and every start after
                # failed with "table client already exists". With the driver's transaction
                # handling off, one explicit transaction makes a migration all or nothing, and
                # IMMEDIATE makes replicas starting together migrate one after the other.
                sqlite_conn.isolation_level = None
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif engine.dialect.name == "postgresql":
                # Replicas starting together migrate one after the other; the lock ends with
                # the transaction.
                conn.execute(text("SELECT pg_advisory_xact_lock(8146235541)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if sqlite_conn is not None:
                sqlite_conn.isolation_level = ""  # the driver's default again, for the pool


def _sqlite_datetime(v: Any) -> Any:
    # SQLAlchemy's storage format for DATETIME on SQLite: "2026-11-16 09:00:00.000000".
    if isinstance(v, datetime):
        return (v.replace(tzinfo=None) if v.tzinfo else v).isoformat(" ", "microseconds")
    return v


def _plain_rows(table: Any, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[tuple[Any, ...]]] | None:
    """The columns an insert of `rows` writes (theirs, then those with a scalar default) and
    the rows as tuples in that order; None when SQLAlchemy's own path is needed (a callable
    default, a column type beyond strings, numbers, booleans and datetimes, rows with
    differing keys)."""
    first = rows[0]
    cols = [table.c[k] for k in first]
    for c in table.columns:
        if c.key not in first and c.default is not None:
            if not c.default.is_scalar:
                return None
            cols.append(c)
    if not all(isinstance(c.type, (String, Integer, Float, Boolean, DateTime, AutoString)) for c in cols):
        return None  # (Text is a String)
    n = len(first)
    if any(len(r) != n for r in rows):
        return None
    # Rows as long as the first that all hold its keys hold exactly its keys: itemgetter
    # finds a key missing (KeyError), which costs nothing per row where comparing each
    # row's keys with the first's cost 3 µs a message.
    defaults_ = [c.default.arg for c in cols[n:]]
    get = itemgetter(*first)
    try:
        if n == 1:
            return cols, [(get(r), *defaults_) for r in rows]
        if defaults_:
            return cols, [(*get(r), *defaults_) for r in rows]
        return cols, [get(r) for r in rows]
    except KeyError:
        return None


def _sqlite_insert_ignore(conn: Connection | Session, table: Any, rows: Sequence[dict[str, Any]],
                          conflict: Sequence[str]) -> int | None:
    """The same INSERT ... ON CONFLICT DO NOTHING, straight to sqlite3's executemany.

    SQLAlchemy builds and type-processes every parameter set in Python, half the cost of
    storing an ingest batch. Values are adapted here exactly as SQLAlchemy stores them
    (DATETIME as text with microseconds; booleans are ints to sqlite3 already). None when
    SQLAlchemy's own path is needed (see _plain_rows)."""
    plain = _plain_rows(table, rows)
    if plain is None:
        return None
    cols, params = plain
    dates = [i for i, c in enumerate(cols) if isinstance(c.type, DateTime)]
    if dates:
        # A message row holds the same moment several times (Date, INTERNALDATE, sent at) and
        # a batch shares its ingest time: format each distinct value once.
        text_of: dict[Any, Any] = {}
        adapted = []
        for values in params:
            v = list(values)
            for i in dates:
                d = v[i]
                t = text_of.get(d)
                if t is None:
                    t = text_of[d] = _sqlite_datetime(d)
                v[i] = t
            adapted.append(tuple(v))
        params = adapted
    names = ", ".join(f'"{c.name}"' for c in cols)
    marks = ", ".join("?" * len(cols))
    target = ", ".join(f'"{c}"' for c in conflict)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT ({target}) DO NOTHING'
    connection = conn if isinstance(conn, Connection) else conn.connection()
    result = connection.exec_driver_sql(sql, params)
    return max(result.rowcount, 0)


def _postgres_insert_ignore(conn: Connection | Session, table: Any, rows: Sequence[dict[str, Any]],
                            conflict: Sequence[str]) -> int | None:
    """The same INSERT ... ON CONFLICT DO NOTHING as one statement with one array per column
    (INSERT ... SELECT FROM unnest(...)). SQLAlchemy's multi-row VALUES sends thousands of
    parameters that PostgreSQL parses and plans for every batch (about 300 us a row); this
    sends one per column. Its rowcount is exact, so no RETURNING is needed. None when
    SQLAlchemy's own path is needed (see _plain_rows)."""
    plain = _plain_rows(table, rows)
    if plain is None:
        return None
    cols, params = plain
    arrays = [list(column) for column in zip(*params, strict=True)]
    dialect = postgresql.dialect()
    names = ", ".join(f'"{c.name}"' for c in cols)
    casts = ", ".join(f"%s::{c.type.compile(dialect=dialect)}[]" for c in cols)
    target = ", ".join(f'"{c}"' for c in conflict)
    sql = f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({casts}) ON CONFLICT ({target}) DO NOTHING'
    connection = conn if isinstance(conn, Connection) else conn.connection()
    result = connection.exec_driver_sql(sql, tuple(arrays))
    return max(result.rowcount, 0)


def insert_ignore(conn: Connection | Session, table: Any, rows: Sequence[dict[str, Any]],
                  conflict: Sequence[str], dialect: str | None = None) -> int:
    """Insert rows, skipping those whose `conflict` columns already exist. Returns inserted.

    `dialect` is needed for a Session; a Connection knows its own."""
    if not rows:
        return 0
    dialect = dialect or conn.dialect.name  # type: ignore[union-attr]
    if dialect == "sqlite":
        fast = _sqlite_insert_ignore(conn, table, rows, conflict)
        if fast is not None:
            return fast
        # sqlite3's executemany sums rowcount exactly for INSERT OR IGNORE, and skipping
        # RETURNING halves the cost of a batch.
        lite = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        result = conn.execute(lite, list(rows))
        return max(cast(CursorResult[Any], result).rowcount, 0)
    if dialect == "postgresql":
        fast = _postgres_insert_ignore(conn, table, rows, conflict)
        if fast is not None:
            return fast
        # psycopg's rowcount of a multi-row insert is not reliable: count RETURNING rows.
        pk = list(table.primary_key.columns)[0]
        pg = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        return len(conn.execute(pg.returning(pk), list(rows)).all())
    n = 0  # other dialects: insert one by one
    for r in rows:
        try:
            conn.execute(insert(table).values(**r))
            n += 1
        except DBAPIError:
            pass
    return n


def _pool_exhausted(engine: Engine) -> str:
    return (f"every one of the {engine.pool.size()} database connections (plus overflow) stayed busy for "  # type: ignore[attr-defined]
            f"{defaults.STORE_POOL_TIMEOUT_SECONDS:.0f}s: too many jobs at once for the pool, or a database "
            "server that stopped answering")


class Store:
    """The database: engine, sessions and the few operations that differ per dialect."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._lock_namespace: str | None = None

    @property
    def lock_namespace(self) -> str:
        """What keeps this store's PostgreSQL advisory locks apart from another's: advisory
        locks are database-wide, so two deployments (or test schemas) in one database would
        otherwise block each other. The database and schema name it; SQLite's locks belong
        to its file already."""
        if self._lock_namespace is None:
            if self.dialect == "postgresql":
                with self.connection() as conn:
                    row = conn.execute(text("SELECT current_database(), current_schema()")).one()
                self._lock_namespace = f"{row[0]}.{row[1]}"
            else:
                self._lock_namespace = ""
        return self._lock_namespace

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
            except (OperationalError, DBAPIError) as exc:
                s.rollback()
                raise StoreError(describe_db_error(exc)) from exc
            except PoolTimeoutError as exc:
                raise StoreError(_pool_exhausted(self.engine)) from exc

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection of its own (advisory locks, long reads). As with session(), a database
        that fails or cannot be reached is a StoreError that says so in one line: the jobs of
        the worker report it and try again, instead of dying with a driver's traceback."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(describe_db_error(exc)) from exc
        except PoolTimeoutError as exc:
            raise StoreError(_pool_exhausted(self.engine)) from exc

    def insert_ignore(self, conn: Connection | Session, table: Any, rows: Sequence[dict[str, Any]],
                      conflict: Sequence[str]) -> int:
        """Insert rows, skipping those whose `conflict` columns already exist. Returns inserted."""
        return insert_ignore(conn, table, rows, conflict, self.dialect)

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(url: str, migrate: bool = True, sqlite_cache_mib: int | None = None, pool_size: int = 5) -> Store:
    engine = make_engine(url, sqlite_cache_mib, pool_size)
    try:
        if migrate:
            run_migrations(engine)
        else:
            with engine.connect():
                pass
    except (OperationalError, DBAPIError) as exc:
        engine.dispose()
        raise StoreError(f"store {make_url(url).render_as_string(hide_password=True)}: "
                         f"{describe_db_error(exc)}") from exc
    return Store(engine)
