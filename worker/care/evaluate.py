"""Evaluation: the care picture as a pure function of (stored messages, config, now).

Nothing here looks at the clock or the mailbox: `now` is given, messages sent after it are
ignored, and the output is ordered by names and times, so replaying a past moment gives the
same picture every time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median
from typing import Any

from sqlalchemy import DateTime, bindparam, select, text

from .. import defaults
from ..config import Config
from ..store import Store
from ..store.models import Client, Contact
from .clock import from_ts, to_ts
from .policy import PolicyBook

LAPSE_KINDS = ("unanswered", "chased", "silent", "going_quiet", "slowing", "unowned")
DAY = 86400.0
WEEK = 7 * DAY



@dataclass
class Wait:
    message_id: str
    subject: str
    since: datetime
    business_minutes: float
    wall_minutes: float
    chased: bool
    contact_id: int
    db_id: int


@dataclass
class Response:
    client_id: int
    contact_id: int
    inbound_at: float
    replied_at: float
    business_minutes: float
    wall_minutes: float
    chased: bool
    within_policy: bool


@dataclass
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

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "client": self.client, "contact": self.contact_email,
                "since": iso(self.since), "detail": self.detail, "expected": self.expected,
                "facts": self.facts}


@dataclass
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


@dataclass
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

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "email": self.email, "name": self.name, "role": self.role, "discovered": self.discovered,
            "client": self.client, "owner": self.owner,
            "last_inbound_at": iso(self.last_inbound_at), "last_outbound_at": iso(self.last_outbound_at),
            "days_since_inbound": days_between(self.last_inbound_at, now),
            "days_since_outbound": days_between(self.last_outbound_at, now),
            "waiting": [{"message_id": w.message_id, "subject": w.subject, "since": iso(w.since),
                         "business_minutes": rnd(w.business_minutes), "wall_minutes": rnd(w.wall_minutes),
                         "chased": w.chased} for w in self.waiting],
            "response_time": self.stats.to_json() if self.stats else None,
            "lapses": [lp.to_json() for lp in self.lapses],
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

    def to_json(self, now: datetime) -> dict[str, Any]:
        last_in = max((c.last_inbound_at for c in self.contacts if c.last_inbound_at), default=None)
        last_out = max((c.last_outbound_at for c in self.contacts if c.last_outbound_at), default=None)
        p = self.principal
        return {
            "name": self.name, "internal": self.internal, "owner": self.owner, "backup": self.backup,
            "last_inbound_at": iso(last_in), "last_outbound_at": iso(last_out),
            "days_since_inbound": days_between(last_in, now), "days_since_outbound": days_between(last_out, now),
            "principal": p.email if p else None,
            "days_since_outbound_to_principal": days_between(p.last_outbound_at, now) if p else None,
            "open_waits": self.open_waits,
            "response_time": self.stats.to_json() if self.stats else None,
            "lapses": [lp.to_json() for lp in self.lapses],
            "contacts": [c.to_json(now) for c in self.contacts],
        }


@dataclass
class CarePicture:
    now: datetime
    clients: list[ClientCare]
    observation_start: datetime | None
    messages_considered: int

    def client(self, name: str) -> ClientCare:
        return next(c for c in self.clients if c.name == name)

    @property
    def lapses(self) -> list[Lapse]:
        return [lp for c in self.clients for lp in c.all_lapses]

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return {"schema": 1, "generator": f"carewatch {__version__}", "now": iso(self.now),
                "observation_start": iso(self.observation_start),
                "messages_considered": self.messages_considered,
                "clients": [c.to_json(self.now) for c in self.clients]}


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.replace(microsecond=0).isoformat() + "Z"


def rnd(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


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


def fmt_minutes(m: float) -> str:
    """Business minutes for people: '45 min', '3.5 h'."""
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def evaluate(store: Store, config: Config, now: datetime, client_filter: str | None = None,
             history_days: int | None = None) -> CarePicture:
    """The care picture at `now` (naive UTC)."""
    book = PolicyBook(config)
    now_ts = to_ts(now)
    window_days = book.stats_window_days
    history = max(history_days or 0, defaults.SLOWING_BASELINE_DAYS + 7, window_days)
    keep_from = now_ts - history * DAY

    # --- directory -------------------------------------------------------------------------
    with store.session() as db:
        # Plain rows, not ORM objects: 10k contacts as ORM instances cost most of a second.
        clients = {c.id: c for c in db.execute(select(
            Client.id, Client.name, Client.internal, Client.owner_email, Client.backup_email).where(Client.active))}
        contacts = {c.id: c for c in db.execute(select(
            Contact.id, Contact.email, Contact.name, Contact.role, Contact.client_id, Contact.discovered)
            .where(Contact.active)) if c.client_id in clients}
    if client_filter:
        clients = {k: v for k, v in clients.items() if v.name.lower() == client_filter.lower()}

    # --- the heavy lifting happens in the database --------------------------------------------
    # Threads were joined at ingest, and each inbound message knows when the first reply in its
    # thread came (reply_at, store/threads.py). The inbound messages answered by the same reply
    # form one episode: its first message is when the wait began, the others are chasers. Only
    # open episodes and those answered within the history window are read, so the work grows
    # with recent activity, not with the whole mailbox.
    sqlite_db = store.dialect == "sqlite"

    def epoch(col: str) -> str:
        return (f"CAST(strftime('%s', {col}) AS REAL)" if sqlite_db else f"EXTRACT(EPOCH FROM {col})::float8")

    dt_params = [bindparam("now", type_=DateTime()), bindparam("keep", type_=DateTime())]
    episodes_sql = text(f"""
        WITH inb AS (
          SELECT m.id, m.thread_id, m.sent_at, m.client_id, m.contact_ids,
                 CASE WHEN m.reply_at <= :now THEN m.reply_at END AS reply_at
          FROM message m
          WHERE m.direction = 'inbound' AND NOT m.automated AND NOT m.acknowledgement
            AND (m.firm_in_to OR (:cc AND m.firm_in_cc)) AND m.contact_ids <> ''
            AND m.client_id IS NOT NULL AND m.thread_id IS NOT NULL AND m.sent_at <= :now
            AND (m.reply_at IS NULL OR m.reply_at > :now OR m.reply_at >= :keep)
        ), ranked AS (
          SELECT inb.*, ROW_NUMBER() OVER (PARTITION BY thread_id, reply_at ORDER BY sent_at, id) AS rn,
                 COUNT(*) OVER (PARTITION BY thread_id, reply_at) AS n
          FROM inb
        )
        SELECT r.id, {epoch("r.sent_at")}, {epoch("r.reply_at")}, r.client_id, r.contact_ids, r.rn, r.n,
               CASE WHEN r.reply_at IS NULL THEN m.message_id END, CASE WHEN r.reply_at IS NULL THEN m.subject END
        FROM ranked r JOIN message m ON m.id = r.id
        WHERE r.reply_at IS NULL OR (r.rn = 1 AND r.reply_at >= :keep)
    """).bindparams(*dt_params)
    keep_dt = from_ts(keep_from)
    client_name = {cid: c.name for cid, c in clients.items()}
    responses: dict[int, list[Response]] = defaultdict(list)
    #: contact -> (message pk, since, chased, Message-ID, subject) of each waiting message
    waits: dict[int, list[tuple[int, float, bool, str, str]]] = defaultdict(list)
    #: message pk of an open episode's first message -> chasers
    episode_chasers: dict[int, int] = {}
    count_cc = book.count_cc
    with store.engine.connect() as conn:
        for pk, since, reply, client_id, contact_ids, rn, n, mid, subject in conn.execute(
                episodes_sql, {"now": now, "keep": keep_dt, "cc": count_cc}):
            if client_id not in clients:
                continue
            contact = int(contact_ids.split(",")[0])
            if reply is None:
                waits[contact].append((pk, since, rn < n, mid or "", subject or ""))
                if rn == 1:
                    episode_chasers[pk] = n - 1
                continue
            cal = book.calendar(client_name[client_id])
            role = contacts[contact].role if contact in contacts else "user"
            biz = cal.minutes_between(since, reply)
            responses[client_id].append(Response(
                client_id, contact, since, reply, biz, (reply - since) / 60, n > 1,
                biz <= book.thresholds(client_name[client_id], role).reply_within_minutes))

        last_in: dict[int, float] = {}
        last_out: dict[int, float] = {}
        for contact, inbound, at in conn.execute(text(
                f"SELECT contact_id, inbound, {epoch('MAX(sent_at)')} FROM message_contact "
                "WHERE NOT automated AND sent_at <= :now GROUP BY contact_id, inbound").bindparams(dt_params[0]),
                {"now": now}):
            (last_in if inbound else last_out)[contact] = at
        obs_row = conn.execute(text(
            f"SELECT {epoch('MIN(sent_at)')}, COUNT(*) FROM message WHERE client_id IS NOT NULL "
            "AND direction IN ('inbound', 'outbound') AND sent_at <= :now").bindparams(dt_params[0]),
            {"now": now}).one()
        observation_start, considered = obs_row[0], int(obs_row[1])

        # Going quiet needs each contact's active days, but only for contacts silent longer
        # than the floor: the rest cannot be going quiet.
        active_days: dict[int, list[int]] = defaultdict(list)
        quiet = sorted(c for c, t in last_in.items() if now_ts - t > book.going_quiet_floor_seconds)
        day = ("CAST(strftime('%s', sent_at) AS INTEGER) / 86400" if sqlite_db
               else "FLOOR(EXTRACT(EPOCH FROM sent_at) / 86400)::bigint")
        # One row per contact with its active days joined into a string: row by row this was
        # most of the time on a big mailbox.
        agg = "GROUP_CONCAT(d)" if sqlite_db else "string_agg(d::text, ',')"
        for k in range(0, len(quiet), 500):
            part = quiet[k:k + 500]
            for contact, days_csv in conn.execute(text(
                    f"SELECT contact_id, {agg} FROM (SELECT DISTINCT contact_id, {day} AS d FROM message_contact "
                    "WHERE inbound AND NOT automated AND sent_at <= :now AND contact_id IN :ids) AS x "
                    "GROUP BY contact_id").bindparams(dt_params[0], bindparam("ids", expanding=True)),
                    {"now": now, "ids": part}):
                active_days[contact] = sorted(int(x) for x in str(days_csv).split(","))

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
    obs = observation_start
    for cid, cl in sorted(clients.items(), key=lambda kv: kv[1].name.lower()):
        cal = book.calendar(cl.name)
        care = ClientCare(id=cid, name=cl.name, internal=cl.internal, owner=cl.owner_email,
                          backup=cl.backup_email, contacts=by_client_contacts.get(cid, []),
                          responses=sorted(responses.get(cid, []), key=lambda r: (r.replied_at, r.inbound_at)))
        care.stats = stats_of(care.responses, now_ts - window_days * DAY, now_ts, window_days)
        per_contact: dict[int, list[Response]] = defaultdict(list)
        for r in care.responses:
            per_contact[r.contact_id].append(r)
        for cc in care.contacts:
            th = book.thresholds(cl.name, cc.role)
            cc.stats = stats_of(per_contact.get(cc.id, []), now_ts - window_days * DAY, now_ts, window_days)
            for db_id, since, chased, mid, subj in sorted(waits.get(cc.id, []), key=lambda w: (w[1], w[0])):
                w = Wait(mid, subj, from_ts(since), cal.minutes_between(since, now_ts), (now_ts - since) / 60,
                         chased, cc.id, db_id)
                cc.waiting.append(w)
                if db_id not in episode_chasers:
                    continue  # a later message of an episode: the first one carries the lapse
                chasers = episode_chasers[db_id]
                expected = f"a reply within {fmt_minutes(th.reply_within_minutes)} of business time"
                if w.business_minutes > th.reply_within_minutes:
                    cc.lapses.append(Lapse(
                        "unanswered", f"unanswered:{cc.id}:{mid}", cl.name, cc.email, w.since,
                        f"{cc.name} has waited {fmt_minutes(w.business_minutes)} of business time for a reply "
                        f"to \u201c{subj}\u201d", expected,
                        {"message_id": mid, "subject": subj, "business_minutes": rnd(w.business_minutes),
                         "reply_within_minutes": th.reply_within_minutes, "chasers": chasers}))
                if chasers:
                    cc.lapses.append(Lapse(
                        "chased", f"chased:{cc.id}:{mid}", cl.name, cc.email, w.since,
                        f"{cc.name} had to follow up {chasers} time(s) on \u201c{subj}\u201d, still unanswered",
                        expected, {"message_id": mid, "subject": subj, "chasers": chasers,
                                   "business_minutes": rnd(w.business_minutes)}))
            if th.silence_after_days is not None and obs is not None:
                since_ts = last_out.get(cc.id, obs)
                silent_days = (now_ts - since_ts) / DAY
                if silent_days > th.silence_after_days and not cc.discovered:
                    never = cc.id not in last_out
                    cc.lapses.append(Lapse(
                        "silent", f"silent:{cc.id}:{int(since_ts)}", cl.name, cc.email, from_ts(since_ts),
                        (f"nobody at the firm has written to {cc.name} ({cc.role}) "
                         + ("since records began" if never else f"for {silent_days:.0f} days")),
                        f"a word at least every {th.silence_after_days:.0f} days",
                        {"days": round(silent_days, 1), "silence_after_days": th.silence_after_days,
                         "never": never}))
            days = active_days.get(cc.id, [])
            if th.going_quiet and len(days) >= book.going_quiet_min:
                gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
                usual = median(gaps)
                current = now_ts / DAY - days[-1]
                if current > book.going_quiet_factor * usual and current * DAY > book.going_quiet_floor_seconds:
                    cc.lapses.append(Lapse(
                        "going_quiet", f"going_quiet:{cc.id}:{days[-1]}", cl.name, cc.email, from_ts(days[-1] * DAY),
                        f"{cc.name} usually writes every {usual:.0f} day(s) but has been quiet for {current:.0f} days",
                        f"regular contact (about every {usual:.0f} day(s))",
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
                       messages_considered=considered)
