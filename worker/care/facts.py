"""What an evaluation reads from the store at a moment `now`: the directory, answered
episodes, the messages still waiting (grouped into episodes, chasers counted, expired ones
told apart), and per contact the last message each way, the first one and the active days.
The heavy lifting happens in the database; care/evaluate.py turns these facts into lapses."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, bindparam, select, text
from sqlmodel import col

from .. import defaults
from ..store import Store
from ..store.db import epoch_sql
from ..store.models import Client, Contact, columns
from ..store.sql import sql_in_list
from .clock import to_ts
from .policy import Policies

DAY = 86400.0


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


@dataclass
class Facts:
    clients: dict[int, Any]
    contacts: dict[int, Any]
    #: client -> its answered episodes in the history window, in (replied, since) order
    responses: dict[int, list[Response]] = field(default_factory=lambda: defaultdict(list))
    #: contact -> (message pk, since, chased, Message-ID, subject) of each waiting message
    waits: dict[int, list[tuple[int, float, bool, str, str]]] = field(default_factory=lambda: defaultdict(list))
    #: message pk of an open episode's first message -> chasers
    episode_chasers: dict[int, int] = field(default_factory=dict)
    #: lapse keys of threads that stopped waiting unanswered (see CarePicture.expired)
    expired: set[str] = field(default_factory=set)
    last_in: dict[int, float] = field(default_factory=dict)
    last_out: dict[int, float] = field(default_factory=dict)
    #: epoch seconds of the first client message, and how many client messages there are
    observation_start: float | None = None
    considered: int = 0
    first_seen: dict[int, float] = field(default_factory=dict)
    active_days: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))


def read_facts(store: Store, book: Policies, now: datetime, client_filter: str | None,
               history_days: int | None) -> Facts:
    now_ts = to_ts(now)
    history = max(history_days or 0, defaults.SLOWING_BASELINE_DAYS + 7, book.stats_window_days)
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

    f = Facts(clients, contacts)
    # --- the heavy lifting happens in the database --------------------------------------------
    # Threads were joined at ingest, and each inbound message knows when the first reply in its
    # thread came (reply_at); the inbound messages answered by the same reply form an episode,
    # kept in the episode table (store/threads.py). So: answered episodes come from that narrow
    # table (only those answered within the history window), and the messages still waiting at
    # `now` are grouped here by thread. The work grows with recent activity and open waits, not
    # with the whole mailbox.
    with store.connection() as conn:
        _read_responses(conn, book, f, keep_from, now_ts)
        _read_waits(conn, store.dialect, book, f, now, now_ts)
        _read_contact_times(conn, store.dialect, book, f, now, now_ts)
    return f


def _params() -> tuple[Any, list[Any]]:
    return (bindparam("now", type_=DateTime()),
            [bindparam("t", True, type_=Boolean()), bindparam("f", False, type_=Boolean())])


def _read_responses(conn: Any, book: Policies, f: Facts, keep_from: float, now_ts: float) -> None:
    """Answered episodes from the narrow episode table, with their business minutes."""
    clients, contacts, responses = f.clients, f.contacts, f.responses
    count_cc = book.count_cc
    client_name = {cid: c.name for cid, c in clients.items()}
    role_of = {cid: c.role for cid, c in contacts.items()}
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


def _read_waits(conn: Any, dialect: str, book: Policies, f: Facts, now: datetime, now_ts: float) -> None:
    """The messages waiting at `now`, grouped by thread into episodes."""
    clients, waits, episode_chasers, expired = f.clients, f.waits, f.episode_chasers, f.expired
    count_cc = book.count_cc
    sqlite_db = dialect == "sqlite"
    now_param, _flags = _params()
    minutes_of = {cid: book.calendar(c.name).minutes_between for cid, c in clients.items()}

    def epoch(col: str) -> str:
        return epoch_sql(dialect, col)

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


def _read_contact_times(conn: Any, dialect: str, book: Policies, f: Facts, now: datetime, now_ts: float) -> None:
    """Per contact: the last message each way, the first one of those never written to, and
    the active days of those quiet longer than the going-quiet floor."""
    contacts, last_in, last_out = f.contacts, f.last_in, f.last_out
    first_seen, active_days = f.first_seen, f.active_days
    sqlite_db = dialect == "sqlite"
    now_param, flags = _params()

    def epoch(col: str) -> str:
        return epoch_sql(dialect, col)

    # The last message each way per contact: one index seek each (ix_message_contact_covering).
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
    f.observation_start = obs_row[0]  # epoch seconds of the first client message
    f.considered = int(obs_row[1])

    # A contact the firm never wrote to is silent since their first message (or, with none,
    # since records began): one grouped query for those contacts only.
    never_written = [c for c in contacts if c not in last_out]
    cond_c, ids_c = sql_in_list(dialect, "contact_id", "INTEGER")
    first_sql = text(
        f"SELECT contact_id, {epoch('MIN(sent_at)')} FROM message_contact WHERE {cond_c} "
        "AND automated = :f AND sent_at <= :now GROUP BY contact_id").bindparams(now_param, flags[1], ids_c)
    for k in range(0, len(never_written), 500):
        for contact, first_ts in conn.execute(first_sql, {"now": now, "ids": never_written[k:k + 500]}).all():
            if first_ts is not None:
                first_seen[contact] = first_ts
    # Going quiet needs each contact's active days, but only for contacts silent longer
    # than the floor: the rest cannot be going quiet.
    quiet = sorted(c for c, t in last_in.items() if now_ts - t > book.going_quiet_floor_seconds)
    # One row per contact with its active days joined into a string, read from the index.
    agg = "GROUP_CONCAT(DISTINCT day)" if sqlite_db else "string_agg(DISTINCT day::text, ',')"
    cond, ids_param = sql_in_list(dialect, "contact_id", "INTEGER")
    days_sql = text(
        f"SELECT contact_id, {agg} FROM message_contact WHERE {cond} AND inbound = :t "
        "AND automated = :f AND sent_at <= :now GROUP BY contact_id"
    ).bindparams(now_param, *flags, ids_param)
    for k in range(0, len(quiet), 500):
        for contact, days_csv in conn.execute(days_sql, {"now": now, "ids": quiet[k:k + 500]}).all():
            active_days[contact] = sorted(map(int, str(days_csv).split(",")))
