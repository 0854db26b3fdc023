"""Alembic environment: run against the connection Carewatch hands over (or store.url)."""

from __future__ import annotations

import sqlmodel  # noqa: F401  (generated migrations refer to sqlmodel types)
from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from worker.store import models  # noqa: F401  (registers the tables)

config = context.config
target_metadata = SQLModel.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        # Carewatch hands over a connection; only a hand-made alembic config (a developer
        # writing a migration with `alembic revision --autogenerate`) lands here.
        raise SystemExit("alembic: set sqlalchemy.url to the store's URL")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
