"""Evaluation: the care picture as a pure function of (stored messages, config, now).

Nothing here looks at the clock or the mailbox: `now` is given, messages sent after it are
ignored, and the output is ordered by names and times, so replaying a past moment gives the
same picture every time.
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Boolean, DateTime, bindparam, select, text
from sqlmodel import col

from .. import defaults
from ..config import Config
from ..store import Store
from ..store.db import epoch_sql
from ..store.models import Client, Contact, columns
from ..store.threads import among
from .clock import from_ts, to_ts
from .policy import PolicyBook


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="seconds") + "Z"


def _as_is(dt: datetime | None) -> datetime | None:
    return dt


#: How a document writes its dates: iso() strings, or datetimes for orjson to format (_as_is).
DateOut = Callable[[datetime | None], str | datetime | None]

LAPSE_KINDS = ("unanswered", "chased", "silent", "going_quiet", "slowing", "unowned")
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
class Response:
    client_id: int
    contact_id: int
    inbound_at: float
    replied_at: float
    business_minutes: float
    wall_minutes: float
    chased: bool
    within_policy: bool


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


def _whole_days(days: float, one: str = "1 day") -> str:
    """Days as everywhere in Carewatch (emails, status, digest): whole days completed."""
    n = int(days)
    return one if n == 1 else f"{n} days"


def days_between(a: datetime | None, b: datetime) -> float | None:
    return None if a is None else round((b - a).total_seconds() / DAY, 1)


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def stats_of(responses: list[Response], since: float, until: float, window_days: int) -> ResponseStats:
    sel = [r for r in responses if since < r.replied_at <= until]
    st = ResponseStats(window_days=window_days, count=len(sel))
    if sel:
        biz = [r.business_minutes for r in sel]
        st.median_business_minutes = median(biz)
        st.p90_business_minutes = p90(biz)
        st.median_wall_minutes = median(r.wall_minutes for r in sel)
    return st


def _wait_order(w: tuple[int, float, bool, str, str]) -> tuple[float, int]:
    return w[1], w[0]  # since, then message pk


def fmt_minutes(m: float) -> str:
    """Business minutes for people: '45 min', '3.5 h'."""
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


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


def evaluate(store: Store, config: Config, now: datetime, client_filter: str | None = None,
             history_days: int | None = None) -> CarePicture:
    """The care picture at `now` (naive UTC)."""
    with paused_gc():
        return _evaluate(store, config, now, client_filter, history_days)


def _evaluate(store: Store, config: Config, now: datetime, client_filter: str | None,
              history_days: int | None) -> CarePicture:
    book = PolicyBook(config)
    now_ts = to_ts(now)
    window_days = book.stats_window_days
    history = max(history_days or 0, defaults.SLOWING_BASELINE_DAYS + 7, window_days)
    keep_from = now_ts - history * DAY

    # --- directory -------------------------------------------------------------------------
    with store.session() as db:
        # Plain rows, not ORM objects: 10k contacts as ORM instances cost most of a second.
        clients = {c.id: c for c in db.execute(select(
            *columns(Client.id, Client.name, Client.internal, Client.owner_email, Client.backup_email))
            .where(col(Client.active)))}
        contacts = {c.id: c for c in db.execute(select(
            *columns(Contact.id, Contact.email, Contact.name, Contact.role, Contact.client_id, Contact.discovered,
                     Contact.first_seen_at))
            .where(col(Contact.active))) if c.client_id in clients}
    if client_filter:
        clients = {k: v for k, v in clients.items() if v.name.lower() == client_filter.lower()}

    # --- the heavy lifting happens in the database --------------------------------------------
    # Threads were joined at ingest, and each inbound message knows when the first reply in its
    # thread came (reply_at); the inbound messages answered by the same reply form an episode,
    # kept in the episode table (store/threads.py). So: answered episodes come from that narrow
    # table (only those answered within the history window), and the messages still waiting at
    # `now` are grouped here by thread. The work grows with recent activity and open waits, not
    # with the whole mailbox.
    sqlite_db = store.dialect == "sqlite"

    def epoch(col: str) -> str:
        return epoch_sql(store.dialect, col)

    now_param = bindparam("now", type_=DateTime())
    flags = [bindparam("t", True, type_=Boolean()), bindparam("f", False, type_=Boolean())]
    client_name = {cid: c.name for cid, c in clients.items()}
    role_of = {cid: c.role for cid, c in contacts.items()}
    responses: dict[int, list[Response]] = defaultdict(list)
    #: contact -> (message pk, since, chased, Message-ID, subject) of each waiting message
    waits: dict[int, list[tuple[int, float, bool, str, str]]] = defaultdict(list)
    #: message pk of an open episode's first message -> chasers
    episode_chasers: dict[int, int] = {}
    #: lapse keys of threads that stopped waiting unanswered (see CarePicture.expired)
    expired: set[str] = set()
    count_cc = book.count_cc
    with store.connection() as conn:
        minutes_of = {cid: book.calendar(name).minutes_between for cid, name in client_name.items()}
        limit_of: dict[tuple[int, int], float] = {}  # (client, contact) -> reply_within minutes
        for client_id, contact, since, reply, size in conn.execute(text(
                "SELECT client_id, contact_id, started_ts, reply_ts, size FROM episode "
                "WHERE scope = :scope AND reply_ts >= :keep AND reply_ts <= :now ORDER BY reply_ts, started_ts"),
                {"scope": "any" if count_cc else "to", "keep": keep_from, "now": now_ts}).all():
            minutes = minutes_of.get(client_id)
            if minutes is None:
                continue  # an inactive client, or not the one asked for
            limit = limit_of.get((client_id, contact))
            if limit is None:
                limit = limit_of[(client_id, contact)] = book.thresholds(
                    client_name[client_id], role_of.get(contact, "user")).reply_within_minutes
            biz = minutes(since, reply)
            responses[client_id].append(Response(client_id, contact, since, reply, biz, (reply - since) / 60,
                                                 size > 1, biz <= limit))

        # Waiting at `now`: never answered, or answered only later (a replay of the past). Two
        # index ranges on (direction, reply_at), sorted by thread in the database.
        # (SQLite's planner would otherwise walk every inbound message by (direction, sent_at)
        # and read each row; the hint makes it use the index that finds exactly the open ones.)
        hint = " INDEXED BY ix_message_dir_reply" if sqlite_db else ""
        waiting_sql = (
            f"SELECT m.id, {epoch('m.sent_at')} AS since, m.thread_id, m.client_id, m.contact_ids, m.message_id, "
            f"m.subject FROM message m{hint} WHERE m.direction = 'inbound' AND {{reply}} AND m.sent_at <= :now "
            "AND NOT m.automated AND NOT m.acknowledgement AND (m.firm_in_to OR (:cc AND m.firm_in_cc)) "
            "AND m.contact_ids <> '' AND m.client_id IS NOT NULL AND m.thread_id IS NOT NULL")
        open_rows = conn.execute(text(
            waiting_sql.format(reply="m.reply_at IS NULL") + " UNION ALL "
            + waiting_sql.format(reply="m.reply_at > :now") + " ORDER BY 3, 2, 1").bindparams(now_param),
            {"now": now, "cc": count_cc}).all()
        # Per thread, the open messages form one episode: the first began the wait, the others
        # are chasers. A thread whose last open message is older than the expiry waits no more
        # (policy.waits_expire_after), chasers and all.
        expired_before = now_ts - book.waits_expire_seconds if book.waits_expire_seconds else None
        # Only threads that stopped waiting within the last expiry span can still have an open
        # alert to end: a worker checks every few minutes. All of them would be years of
        # unanswered mail on a first start (183k keys, 28 MiB, in benchmarks/evaluate.py at 1M).
        recently_expired = 2 * expired_before - now_ts if expired_before is not None else 0.0
        prev_thread = None
        first = start = 0
        live = False
        for i, (pk, since, thread, client_id, contact_ids, mid, subject) in enumerate(open_rows):
            if thread != prev_thread:
                prev_thread, first = thread, i
                n = 1
                while first + n < len(open_rows) and open_rows[first + n][2] == thread:
                    n += 1
                last = first + n - 1
                # A client message after the thread had stopped waiting (a gap longer than the
                # expiry) starts an episode of its own, measured from itself: the old question
                # expired, it is not revived.
                start = first
                if expired_before is not None:
                    for k in range(first + 1, last + 1):
                        if open_rows[k][1] - open_rows[k - 1][1] > book.waits_expire_seconds:
                            start = k
                live = client_id in clients and (expired_before is None or open_rows[last][1] >= expired_before)
                ended = last if not live else start - 1  # the last message of an episode that expired
                if ended >= first and client_id in clients and open_rows[ended][1] >= recently_expired:
                    who, old_mid = open_rows[first][4].partition(",")[0], open_rows[first][5]
                    expired.update((f"unanswered:{who}:{old_mid}", f"chased:{who}:{old_mid}"))
                if live:
                    # Chasers: later messages sent after a real gap (policy.chaser_after), not a
                    # postscript a minute later.
                    gap = minutes_of.get(client_id)
                    episode_chasers[open_rows[start][0]] = sum(
                        1 for k in range(start + 1, last + 1)
                        if gap is not None and gap(open_rows[k - 1][1], open_rows[k][1]) >= book.chaser_after_minutes)
            if live and i >= start:
                waits[int(contact_ids.split(",")[0])].append((pk, since, i < last, mid, subject))
        # The last message each way per contact: one index seek each (ix_message_contact_covering).
        last_in: dict[int, float] = {}
        last_out: dict[int, float] = {}
        last_sql = ("(SELECT MAX(mc.sent_at) FROM message_contact mc WHERE mc.contact_id = c.id "
                    "AND mc.inbound = {dir} AND mc.automated = :f AND mc.sent_at <= :now)")
        for contact, at_in, at_out in conn.execute(text(
                f"SELECT c.id, {epoch(last_sql.format(dir=':t'))}, {epoch(last_sql.format(dir=':f'))} "
                "FROM contact c WHERE c.active").bindparams(now_param, *flags), {"now": now}).all():
            if at_in is not None:
                last_in[contact] = at_in
            if at_out is not None:
                last_out[contact] = at_out
        # Clients' mail only: client_id is set on inbound and outbound messages alone, so this
        # reads the (client_id, sent_at) index and no rows.
        obs_row = conn.execute(text(
            f"SELECT {epoch('MIN(sent_at)')}, COUNT(*) FROM message"
            f"{' INDEXED BY ix_message_client_sent' if sqlite_db else ''} WHERE client_id IS NOT NULL "
            "AND sent_at <= :now").bindparams(now_param), {"now": now}).one()
        observation_start: float | None = obs_row[0]  # epoch seconds of the first client message
        considered = int(obs_row[1])

        # A contact the firm never wrote to is silent since their first message (or, with none,
        # since records began): one grouped query for those contacts only.
        first_seen: dict[int, float] = {}
        never_written = [c for c in contacts if c not in last_out]
        cond_c, ids_c = among(store.dialect, "contact_id", "INTEGER")
        first_sql = text(
            f"SELECT contact_id, {epoch('MIN(sent_at)')} FROM message_contact WHERE {cond_c} "
            "AND automated = :f AND sent_at <= :now GROUP BY contact_id").bindparams(now_param, flags[1], ids_c)
        for k in range(0, len(never_written), 500):
            for contact, first_ts in conn.execute(first_sql, {"now": now, "ids": never_written[k:k + 500]}).all():
                if first_ts is not None:
                    first_seen[contact] = first_ts
        # Going quiet needs each contact's active days, but only for contacts silent longer
        # than the floor: the rest cannot be going quiet.
        active_days: dict[int, list[int]] = defaultdict(list)
        quiet = sorted(c for c, t in last_in.items() if now_ts - t > book.going_quiet_floor_seconds)
        # One row per contact with its active days joined into a string, read from the index.
        agg = "GROUP_CONCAT(DISTINCT day)" if sqlite_db else "string_agg(DISTINCT day::text, ',')"
        cond, ids_param = among(store.dialect, "contact_id", "INTEGER")
        days_sql = text(
            f"SELECT contact_id, {agg} FROM message_contact WHERE {cond} AND inbound = :t "
            "AND automated = :f AND sent_at <= :now GROUP BY contact_id"
        ).bindparams(now_param, *flags, ids_param)
        for k in range(0, len(quiet), 500):
            for contact, days_csv in conn.execute(days_sql, {"now": now, "ids": quiet[k:k + 500]}).all():
                active_days[contact] = sorted(map(int, str(days_csv).split(",")))

    # --- assemble the picture and derive lapses ---------------------------------------------
    by_client_contacts: dict[int, list[ContactCare]] = defaultdict(list)
    for ct in sorted(contacts.values(), key=lambda c: (c.client_id, c.discovered, c.email)):
        if ct.client_id not in clients:
            continue
        cl = clients[ct.client_id]
        cc = ContactCare(id=ct.id or 0, email=ct.email, name=ct.name, role=ct.role, discovered=ct.discovered,
                         client=cl.name, owner=cl.owner_email,
                         last_inbound_at=from_ts(last_in[ct.id]) if ct.id in last_in else None,
                         last_outbound_at=from_ts(last_out[ct.id]) if ct.id in last_out else None)
        by_client_contacts[ct.client_id].append(cc)

    out_clients: list[ClientCare] = []
    next_change: float | None = None
    obs = observation_start
    for cid, cl in sorted(clients.items(), key=lambda kv: kv[1].name.lower()):
        waited = book.calendar(cl.name).minutes_until(now_ts)
        care = ClientCare(id=cid, name=cl.name, internal=cl.internal, owner=cl.owner_email,
                          backup=cl.backup_email, contacts=by_client_contacts.get(cid, []),
                          responses=responses.get(cid, []))  # in (replied, since) order from SQL
        care.stats = stats_of(care.responses, now_ts - window_days * DAY, now_ts, window_days)
        per_contact: dict[int, list[Response]] = defaultdict(list)
        for r in care.responses:
            per_contact[r.contact_id].append(r)
        for cc in care.contacts:
            th = book.thresholds(cl.name, cc.role)
            cc.stats = stats_of(per_contact.get(cc.id, []), now_ts - window_days * DAY, now_ts, window_days)
            reply_within = th.reply_within_minutes
            expected = f"a reply within {fmt_minutes(reply_within)} of business time"
            for db_id, since, chased, mid, subj in sorted(waits.get(cc.id, ()), key=_wait_order):
                w = Wait(mid, subj, from_ts(since), waited(since), (now_ts - since) / 60, chased, cc.id, db_id)
                cc.waiting.append(w)
                chasers = episode_chasers.get(db_id)
                if chasers is None:
                    continue  # a later message of an episode: the first one carries the lapse
                for mark in (book.warn_at * reply_within if book.warn_at else None, reply_within):
                    if mark is not None and w.business_minutes < mark:
                        crossing = book.calendar(cl.name).add_minutes(since, mark)
                        next_change = crossing if next_change is None else min(next_change, crossing)
                        break
                biz = round(w.business_minutes, 1)
                if book.warn_at and not chasers and book.warn_at * reply_within <= w.business_minutes <= reply_within:
                    due = from_ts(book.calendar(cl.name).add_minutes(since, reply_within))
                    cc.due_soon.append(Lapse(
                        "due_soon", f"due_soon:{cc.id}:{mid}", cl.name, cc.email, w.since,
                        f"{cc.name} has waited {fmt_minutes(w.business_minutes)} of business time for a reply to "
                        f"\u201c{subj}\u201d: {fmt_minutes(reply_within - w.business_minutes)} left", expected,
                        {"message_id": mid, "subject": subj, "business_minutes": biz,
                         "reply_within_minutes": reply_within, "due_at": iso(due)}))
                if w.business_minutes > reply_within:
                    cc.lapses.append(Lapse(
                        "unanswered", f"unanswered:{cc.id}:{mid}", cl.name, cc.email, w.since,
                        f"{cc.name} has waited {fmt_minutes(w.business_minutes)} of business time for a reply "
                        f"to \u201c{subj}\u201d", expected,
                        {"message_id": mid, "subject": subj, "business_minutes": biz,
                         "reply_within_minutes": reply_within, "chasers": chasers}))
                if chasers:
                    cc.lapses.append(Lapse(
                        "chased", f"chased:{cc.id}:{mid}", cl.name, cc.email, w.since,
                        f"{cc.name} had to follow up {'once' if chasers == 1 else f'{chasers} times'} on "
                        f"\u201c{subj}\u201d, still unanswered",
                        expected, {"message_id": mid, "subject": subj, "chasers": chasers,
                                   "business_minutes": biz}))
            if th.silence_after_days is not None and obs is not None:
                never = cc.id not in last_out
                since_ts = last_out[cc.id] if not never else max(first_seen.get(cc.id, obs), obs)
                listed = contacts[cc.id].first_seen_at if cc.id in contacts else None
                if never and listed is not None and obs <= to_ts(listed) <= now_ts:
                    # Not silent since before Carewatch knew of them (the day the client was
                    # listed); a replay of a time before that counts as it always did.
                    since_ts = max(since_ts, to_ts(listed))
                silent_days = (now_ts - since_ts) / DAY
                if silent_days > th.silence_after_days and not cc.discovered:
                    # The key of a silence never broken does not move when older mail is stored
                    # (a new folder, an import): the alert is the same one until the firm writes.
                    key = f"silent:{cc.id}:never" if never else f"silent:{cc.id}:{int(since_ts)}"
                    cc.lapses.append(Lapse(
                        "silent", key, cl.name, cc.email, from_ts(since_ts),
                        (f"nobody at the firm has written to {cc.name} ({cc.role}) "
                         + ("since records began" if never else f"for {_whole_days(silent_days)}")),
                        f"a word at least every {th.silence_after_days:.0f} days",
                        {"days": round(silent_days, 1), "silence_after_days": th.silence_after_days,
                         "never": never}))
            days = active_days.get(cc.id, [])
            if th.going_quiet and len(days) >= book.going_quiet_min:
                gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
                usual = median(gaps)
                # Counted from their last message itself (not the UTC day it fell on), as the
                # silence is: the email's "since" and the digest's days agree to the minute.
                last_word = last_in.get(cc.id, days[-1] * DAY)
                current = (now_ts - last_word) / DAY
                if current > book.going_quiet_factor * usual and current * DAY > book.going_quiet_floor_seconds:
                    cc.lapses.append(Lapse(
                        "going_quiet", f"going_quiet:{cc.id}:{days[-1]}", cl.name, cc.email, from_ts(last_word),
                        f"{cc.name} usually writes every {_whole_days(usual, 'day')} but has been quiet for "
                        f"{_whole_days(current)}",
                        f"regular contact (about every {_whole_days(usual, 'day')})",
                        {"usual_gap_days": usual, "current_gap_days": round(current, 1), "active_days": len(days)}))
        recent = [r.business_minutes for r in care.responses if now_ts - WEEK < r.replied_at <= now_ts]
        base = [r.business_minutes for r in care.responses
                if now_ts - WEEK - defaults.SLOWING_BASELINE_DAYS * DAY < r.replied_at <= now_ts - WEEK]
        if len(recent) >= defaults.SLOWING_MIN_RECENT and len(base) >= defaults.SLOWING_MIN_BASELINE:
            m_recent, m_base = median(recent), median(base)
            if m_recent > book.slowing_factor * m_base and m_recent > book.slowing_floor_minutes:
                year, week, _ = now.isocalendar()
                care.lapses.append(Lapse(
                    "slowing", f"slowing:{cid}:{year}-W{week:02d}", cl.name, None, from_ts(now_ts - WEEK),
                    f"replies to {cl.name} took a median {fmt_minutes(m_recent)} this week against "
                    f"{fmt_minutes(m_base)} usually", f"replies near the usual {fmt_minutes(m_base)}",
                    {"recent_median_minutes": rnd(m_recent), "baseline_median_minutes": rnd(m_base),
                     "recent_count": len(recent), "baseline_count": len(base)}))
        if not cl.owner_email:
            care.lapses.append(Lapse("unowned", f"unowned:{cid}:owner", cl.name, None, from_ts(obs or now_ts),
                                     f"{cl.name} has no owner: nobody is accountable for the relationship",
                                     "exactly one owner per client", {"missing": "owner"}))
        principals = [c for c in care.contacts if c.role == "principal" and not c.discovered]
        if not principals:
            care.lapses.append(Lapse("unowned", f"unowned:{cid}:principal", cl.name, None, from_ts(obs or now_ts),
                                     f"{cl.name} has no principal: nobody on the client's side is named "
                                     "accountable", "exactly one principal contact per client",
                                     {"missing": "principal"}))
        out_clients.append(care)
    return CarePicture(now=now, clients=out_clients, observation_start=from_ts(obs) if obs else None,
                       messages_considered=considered, expired=expired,
                       next_change=from_ts(next_change) if next_change is not None else None)
