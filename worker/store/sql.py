"""SQL that reads the same on SQLite and PostgreSQL: "column is one of :ids" in one parameter,
and the chunks long lists are sent in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    String,
    TypeDecorator,
    bindparam,
)

CHUNK = 500


class _JsonArray(TypeDecorator[list[Any]]):
    """A list bound as one JSON text, for SQLite's json_each()."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return json.dumps(list(value), ensure_ascii=False)


def sql_in_list(dialect: str, column: str, pg_type: str) -> tuple[str, BindParameter[Any]]:
    """SQL for "column is one of :ids" and the parameter to bind: one parameter either way.
    PostgreSQL gets an array (= ANY), SQLite a JSON array read by json_each() (the planner
    probes the column's index per value, as for an IN list). An expanding IN list of 500
    parameters was rendered by SQLAlchemy and parsed by the database again for every batch."""
    if dialect == "postgresql":
        return f"{column} = ANY(CAST(:ids AS {pg_type}[]))", bindparam("ids")
    return f"{column} IN (SELECT value FROM json_each(:ids))", bindparam("ids", type_=_JsonArray())


def chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
