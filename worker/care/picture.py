"""The care picture: per client and contact, what waits for the firm, how fast it replies and
how long each contact has gone without word, with the lapses found; and how it is written
as JSON (`status --json`, the digest's data). Built by evaluate.py."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import orjson

from .facts import Response


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="seconds") + "Z"


def _as_is(dt: datetime | None) -> datetime | None:
    return dt


#: How a document writes its dates: iso() strings, or datetimes for orjson to format (_as_is).
DateOut = Callable[[datetime | None], str | datetime | None]

DAY = 86400.0
WEEK = 7 * DAY


@dataclass(slots=True)
class Wait:
    message_id: str
    subject: str
    since: datetime
    business_minutes: float
    wall_minutes: float
    chased: bool
    contact_id: int
    db_id: int


@dataclass(slots=True)
class Lapse:
    kind: str
    #: Identifies the episode: the same condition gives the same key at every check; a new
    #: episode (the contact waits again next month) gives a new key.
    key: str
    client: str
    contact_email: str | None
    since: datetime
    detail: str
    expected: str
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self, d: DateOut = iso) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "client": self.client, "contact": self.contact_email,
                "since": d(self.since), "detail": self.detail, "expected": self.expected,
                "facts": self.facts}


@dataclass(slots=True)
class ResponseStats:
    window_days: int
    count: int = 0
    median_business_minutes: float | None = None
    p90_business_minutes: float | None = None
    median_wall_minutes: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"window_days": self.window_days, "count": self.count,
                "median_business_minutes": rnd(self.median_business_minutes),
                "p90_business_minutes": rnd(self.p90_business_minutes),
                "median_wall_minutes": rnd(self.median_wall_minutes)}


@dataclass(slots=True)
class ContactCare:
    id: int
    email: str
    name: str
    role: str
    discovered: bool
    client: str
    owner: str | None
    last_inbound_at: datetime | None = None
    last_outbound_at: datetime | None = None
    waiting: list[Wait] = field(default_factory=list)
    stats: ResponseStats | None = None
    lapses: list[Lapse] = field(default_factory=list)
    #: Waits close to their reply window (policy.warn_at): not lapses yet, a warning to the owner.
    due_soon: list[Lapse] = field(default_factory=list)

    def to_json(self, now: datetime, d: DateOut = iso) -> dict[str, Any]:
        return {
            "email": self.email, "name": self.name, "role": self.role, "discovered": self.discovered,
            "client": self.client, "owner": self.owner,
            "last_inbound_at": d(self.last_inbound_at), "last_outbound_at": d(self.last_outbound_at),
            "days_since_inbound": days_between(self.last_inbound_at, now),
            "days_since_outbound": days_between(self.last_outbound_at, now),
            "waiting": [{"message_id": w.message_id, "subject": w.subject, "since": d(w.since),
                         "business_minutes": round(w.business_minutes, 1), "wall_minutes": round(w.wall_minutes, 1),
                         "chased": w.chased} for w in self.waiting],
            "response_time": self.stats.to_json() if self.stats else None,
            "lapses": [lp.to_json(d) for lp in self.lapses],
            "due_soon": [lp.to_json(d) for lp in self.due_soon],
        }


@dataclass
class ClientCare:
    id: int
    name: str
    internal: bool
    owner: str | None
    backup: str | None
    contacts: list[ContactCare] = field(default_factory=list)
    stats: ResponseStats | None = None
    lapses: list[Lapse] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)

    @property
    def all_lapses(self) -> list[Lapse]:
        return self.lapses + [lp for c in self.contacts for lp in c.lapses]

    @property
    def open_waits(self) -> int:
        return sum(len(c.waiting) for c in self.contacts)

    @property
    def principal(self) -> ContactCare | None:
        return next((c for c in self.contacts if c.role == "principal" and not c.discovered), None)

    def to_json(self, now: datetime, d: DateOut = iso) -> dict[str, Any]:
        last_in = max((c.last_inbound_at for c in self.contacts if c.last_inbound_at), default=None)
        last_out = max((c.last_outbound_at for c in self.contacts if c.last_outbound_at), default=None)
        p = self.principal
        return {
            "name": self.name, "internal": self.internal, "owner": self.owner, "backup": self.backup,
            "last_inbound_at": d(last_in), "last_outbound_at": d(last_out),
            "days_since_inbound": days_between(last_in, now), "days_since_outbound": days_between(last_out, now),
            "principal": p.email if p else None,
            "days_since_outbound_to_principal": days_between(p.last_outbound_at, now) if p else None,
            "open_waits": self.open_waits,
            "response_time": self.stats.to_json() if self.stats else None,
            "lapses": [lp.to_json(d) for lp in self.lapses],
            "contacts": [c.to_json(now, d) for c in self.contacts],
        }


@dataclass
class CarePicture:
    now: datetime
    clients: list[ClientCare]
    observation_start: datetime | None
    messages_considered: int
    #: The keys the unanswered and chased lapses of threads that stopped waiting unanswered
    #: (policy.waits_expire_after) within the last such span would have: their alerts end as
    #: "expired", not "resolved".
    expired: set[str] = field(default_factory=set)
    #: The next moment a wait crosses its warning or its reply window by time alone (no mail
    #: needed): when the worker must look again. None: no wait is about to.
    next_change: datetime | None = None

    def client(self, name: str) -> ClientCare:
        return next(c for c in self.clients if c.name == name)

    @property
    def lapses(self) -> list[Lapse]:
        return [lp for c in self.clients for lp in c.all_lapses]

    @property
    def warnings(self) -> list[Lapse]:
        """Waits that will lapse soon (policy.warn_at): the owner is warned once, never escalated."""
        return [lp for c in self.clients for ct in c.contacts for lp in ct.due_soon]

    def _head(self) -> dict[str, Any]:
        from .. import __version__

        return {"schema": 1, "generator": f"carewatch {__version__}", "now": iso(self.now),
                "observation_start": iso(self.observation_start),
                "messages_considered": self.messages_considered}

    def to_json(self) -> dict[str, Any]:
        with paused_gc():
            return {**self._head(), "clients": [c.to_json(self.now) for c in self.clients]}

    def write_json(self, out: BinaryIO) -> None:
        """Write to_json() as indented JSON, one client at a time: byte for byte what
        orjson.dumps(to_json(), option=OPT_INDENT_2) gives, without holding the whole document
        (100 MB for a million-message store) twice in memory."""
        # Dates go to orjson as datetimes, formatted in C exactly as iso() does ("...T10:00:00Z").
        indent = orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS
        with paused_gc():
            head = orjson.dumps(self._head(), option=indent)
            out.write(head[:-2])  # all but "\n}"
            out.write(b',\n  "clients": [')
            for i, c in enumerate(self.clients):
                out.write(b"\n    " if i == 0 else b",\n    ")
                # JSON strings never hold a raw newline, so every b"\n" is the layout's own.
                out.write(orjson.dumps(c.to_json(self.now, _as_is), option=indent).replace(b"\n", b"\n    "))
            out.write(b"\n  ]\n}" if self.clients else b"]\n}")


def rnd(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def whole_days(days: float, one: str = "1 day") -> str:
    """Days as everywhere in Carewatch (emails, status, digest): whole days completed."""
    n = int(days)
    return one if n == 1 else f"{n} days"


def days_between(a: datetime | None, b: datetime) -> float | None:
    return None if a is None else round((b - a).total_seconds() / DAY, 1)


def fmt_minutes(m: float) -> str:
    """Business minutes for people: '45 min', '3.5 h'."""
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a picture is built or serialised.

    A big picture allocates hundreds of thousands of objects, none in reference cycles; every
    few hundred allocations the collector would walk all of them again (a third of the time
    for a million-message store). Reference counting still frees everything as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
