"""Threads, assigned at ingest and kept in the store.

`thread_link` maps every Message-ID seen (as a message or only as a reference) to a thread:
a union-find that lives in the database. A new message joins the thread of any id it shares
(itself, its In-Reply-To, its References); when it links two threads, they merge (the smaller
id wins, deterministic whatever the order of arrival). A reply that lost its references but
says "Re:" joins the latest message with the same normalised subject at the same client within
30 days before it, if they share a participant, whichever of the two is stored first (a message
stored after such replies looks them up: subject_reply and its partial index). Evaluation then
reads integer thread ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    Table,
    bindparam,
    or_,
    select,
    text,
    update,
)
from sqlmodel import col

from .. import defaults
from ..ingest.fields import is_subject_reply
from .db import epoch_sql, insert_ignore
from .models import Message, MessageContact, ThreadLink, table_of
from .sql import chunks, sql_in_list
from .subjects import EarlierBySubject, late_parents, latest_before, share_people

EPOCH = datetime(1970, 1, 1)


def utc_day(at: datetime) -> int:
    """The UTC day number (days since 1970-01-01) of a naive UTC datetime."""
    return (at - EPOCH).days


def thread_hash(mid: str) -> int:
    """A stable positive 63-bit id for a new thread, from its first Message-ID."""
    return int.from_bytes(hashlib.sha256(mid.encode("utf-8", "surrogatepass")).digest()[:8], "big") >> 1


T = TypeVar("T", str, int)


class UnionFind(Generic[T]):
    """Disjoint sets in which the smallest member names its set, so the result is the same
    whatever order things arrive in."""

    def __init__(self) -> None:
        self.parent: dict[T, T] = {}

    def find(self, x: T) -> T:
        parent = self.parent
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: T, b: T) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


MERGE_STATEMENTS = (
    text("UPDATE message SET thread_id = :target WHERE thread_id = :old"),
    text("UPDATE thread_link SET thread_id = :target WHERE thread_id = :old"),
    # The merged thread's episodes are recomputed by refresh_replies (the target is touched).
    text("UPDATE episode SET thread_id = :target WHERE thread_id = :old"),
)


def _merge_many(conn: Connection, moves: dict[int, int], episodes: bool = True) -> None:
    """Move every stored thread `old` into `moves[old]`: one statement per table however many
    moves. `episodes=False` only for migrations that run before that table exists."""
    params = [{"old": old, "target": target} for old, target in moves.items() if old != target]
    if params:
        for stmt in MERGE_STATEMENTS if episodes else MERGE_STATEMENTS[:2]:
            conn.execute(stmt, params)


def _merge(conn: Connection, target: int, others: set[int], episodes: bool = True) -> None:
    _merge_many(conn, {o: target for o in others}, episodes)


#: An inbound message's reply: the first human outbound message after it in its thread.
FIRST_REPLY = ("(SELECT MIN(o.sent_at) FROM message o WHERE o.thread_id = message.thread_id "
               "AND o.direction = 'outbound' AND NOT o.automated AND o.sent_at > message.sent_at)")
REFRESH_REPLIES = f"UPDATE message SET reply_at = {FIRST_REPLY} WHERE direction = 'inbound'"


def episodes_sql(dialect: str, some_threads: bool) -> str:
    """INSERT ... SELECT of the answered episodes (all, or those of the threads in :ids).

    An episode is the inbound messages of one thread answered by the same reply (same
    reply_at); its first message began the wait. Computed for both readings of count_cc."""
    first_contact = ("CAST(contact_ids AS INTEGER)" if dialect == "sqlite"  # the leading number of "12,34"
                     else "split_part(contact_ids, ',', 1)::bigint")
    only = f"AND {sql_in_list(dialect, 'm.thread_id', 'BIGINT')[0]}" if some_threads else ""
    # For a few threads, SQLite's planner preferred (direction, reply_at) and so read every
    # answered inbound message of the store for each batch: ingest slowed as the store grew.
    hint = " INDEXED BY ix_message_thread_dir_sent" if some_threads and dialect == "sqlite" else ""
    # Messages first, then the two scopes (CROSS JOIN fixes that order in SQLite): each message
    # is read once, not once per scope. Both window functions share one window, so the rows
    # are sorted once, not twice.
    return f"""
        INSERT INTO episode (scope, thread_id, first_pk, client_id, contact_id, started_ts, reply_ts, size)
        SELECT scope, thread_id, id, client_id, {first_contact}, {epoch_sql(dialect, "sent_at")},
               {epoch_sql(dialect, "reply_at")}, n
        FROM (
          SELECT s.scope, m.thread_id, m.id, m.client_id, m.contact_ids, m.sent_at, m.reply_at,
                 ROW_NUMBER() OVER w AS rn,
                 COUNT(*) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS n
          FROM message m{hint} CROSS JOIN (SELECT 'to' AS scope UNION ALL SELECT 'any' AS scope) s
          WHERE (m.firm_in_to OR (s.scope = 'any' AND m.firm_in_cc))
            AND m.direction = 'inbound' AND NOT m.automated AND NOT m.acknowledgement
            AND m.contact_ids <> '' AND m.client_id IS NOT NULL AND m.thread_id IS NOT NULL
            AND m.reply_at IS NOT NULL {only}
          WINDOW w AS (PARTITION BY s.scope, m.thread_id, m.reply_at ORDER BY m.sent_at, m.id)
        ) x
        WHERE rn = 1"""


def refresh_replies(conn: Connection, thread_ids: Iterable[int] | None = None,
                    merged: Iterable[int] = ()) -> None:
    """Recompute reply_at for the inbound messages of these threads (all threads if None), and
    then the answered episodes of the threads where it changed or that were `merged`.

    Only rows whose reply_at changes are written: most inbound messages of a thread a batch
    touches are answered already, and rewriting them dirtied pages all over the message table
    and its reply index for every batch."""
    dialect = conn.dialect.name
    if thread_ids is None:
        conn.execute(text(REFRESH_REPLIES))
        conn.execute(text("DELETE FROM episode"))
        conn.execute(text(episodes_sql(dialect, False)))
        return
    ids = sorted(set(thread_ids))
    cond, ids_param = sql_in_list(dialect, "thread_id", "BIGINT")
    differs = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    update_sql = text(f"{REFRESH_REPLIES} AND {cond} AND reply_at {differs} {FIRST_REPLY} "
                      "RETURNING thread_id").bindparams(ids_param)
    changed = set(merged)
    for chunk in chunks(ids):
        changed.update(conn.execute(update_sql, {"ids": list(chunk)}).scalars())
    for chunk in chunks(sorted(changed)):
        params = {"ids": list(chunk)}
        conn.execute(text(f"DELETE FROM episode WHERE {cond}").bindparams(ids_param), params)
        conn.execute(text(episodes_sql(dialect, True)).bindparams(ids_param), params)


def plan_threads(conn: Connection, rows: Sequence[dict[str, Any]], episodes: bool = True) -> set[int]:
    """Before a batch is inserted: give every row its thread (row["thread_id"]), merging the
    stored threads it links and recording its ids in thread_link. Returns the stored threads
    that others were merged into."""
    mids: UnionFind[str] = UnionFind()
    find = mids.find
    for r in rows:
        mid = r["message_id"]
        find(mid)
        for ref in _refs(r):
            mids.union(mid, ref)

    ids = list(mids.parent)
    existing: dict[str, int] = {}
    cond, ids_param = sql_in_list(conn.dialect.name, "mid", "TEXT")
    known_sql = text(f"SELECT mid, thread_id FROM thread_link WHERE {cond}").bindparams(ids_param)
    for chunk in chunks(ids):
        # .all(): one fetchall, where iterating fetches (and hands the GIL over) row by row
        for mid, tid in conn.execute(known_sql, {"ids": list(chunk)}).all():
            existing[mid] = tid

    # Stored threads that this batch links are merged into the smallest id. Two components of
    # one batch may each link the same stored thread: a second union-find over thread ids
    # settles the final target of every stored thread before anything is written.
    threads: UnionFind[int] = UnionFind()
    tfind = threads.find

    components: dict[str, list[str]] = {}
    for mid in ids:
        components.setdefault(find(mid), []).append(mid)
    known_of: dict[str, list[int]] = {}
    for root, members in components.items():
        known = [existing[m] for m in members if m in existing]
        known_of[root] = known
        for t in known[1:]:
            threads.union(known[0], t)
    moves = {t: tfind(t) for t in list(threads.parent)}
    _merge_many(conn, moves, episodes)

    target_of: dict[str, int] = {}
    new_links: list[dict[str, Any]] = []
    for root, members in components.items():
        known = known_of[root]
        target = tfind(known[0]) if known else thread_hash(min(members))
        target_of[root] = target
        new_links += [{"mid": m, "thread_id": target} for m in members if m not in existing]
    insert_ignore(conn, table_of(ThreadLink), new_links, ["mid"])
    for r in rows:
        r["thread_id"] = target_of[find(r["message_id"])]
    return {target for old, target in moves.items() if old != target}


def _refs(r: dict[str, Any]) -> list[str]:
    return ([r["in_reply_to"]] if r.get("in_reply_to") else []) + (r.get("references") or "").split()


def finish_threads(conn: Connection, rows: Sequence[dict[str, Any]], refresh: bool = True,
                   merged: set[int] | None = None) -> set[int]:
    """After a batch is inserted: join replies that lost their references by subject (those of
    the batch to earlier messages, and earlier stored ones to the messages of the batch they
    answer), then bring reply_at up to date in every thread the batch touched. `merged`:
    threads plan_threads merged others into. Returns the threads touched."""
    merged = set(merged or ())
    window = timedelta(days=defaults.SUBJECT_THREAD_WINDOW_DAYS)

    earlier: EarlierBySubject | None = None

    def join(a: int, b: int) -> None:
        target = min(a, b)
        _merge(conn, target, {a, b}, episodes=refresh)
        merged.add(target)
        for other in rows:
            if other["thread_id"] in (a, b):
                other["thread_id"] = target
        if earlier is not None:
            earlier.merged({a, b}, target)

    replies = [r for r in sorted(rows, key=lambda r: r["sent_at"])
               if r.get("norm_subject") and r.get("client_id") is not None
               and is_subject_reply(r.get("in_reply_to"), (r.get("references") or "").split(), r.get("subject") or "")]
    if EarlierBySubject.usable(replies, window):
        earlier = EarlierBySubject(conn, replies, window)
    for r in replies:
        prev = (earlier.latest_before(r, r["thread_id"]) if earlier is not None
                else latest_before(conn, r, window, not_thread=r["thread_id"]))
        if prev is not None and share_people(r.get("contact_ids"), prev.contact_ids):
            join(r["thread_id"], prev.thread_id)
    # (Not in migration 0003, before subject_reply existed: 0006 joins what it left apart.)
    for reply, parent in late_parents(conn, rows, window) if refresh else ():
        if not share_people(reply["contact_ids"], parent.get("contact_ids")):
            continue
        # Its thread now: a join before this one may have moved it.
        thread = conn.execute(select(col(Message.thread_id))
                              .where(col(Message.message_id) == reply["message_id"])).scalar()
        if thread is not None and thread != parent["thread_id"]:
            join(thread, parent["thread_id"])
    touched = {r["thread_id"] for r in rows}
    if refresh:
        # A merged thread that is no longer anyone's target has gone into another one.
        refresh_replies(conn, touched, merged & touched)
    return touched


def assign_threads(conn: Connection, rows: Sequence[dict[str, Any]], refresh: bool = True) -> set[int]:
    """Thread messages that are already stored (the migration's backfill, tests). Without
    `refresh` (migration 0003, before reply_at and episodes existed) only threads are set."""
    rows = [dict(r) for r in rows]
    merged = plan_threads(conn, rows, episodes=refresh)
    conn.execute(update(Message).where(col(Message.message_id) == bindparam("m")).values(thread_id=bindparam("t"))
                 .execution_options(synchronize_session=False),
                 [{"m": r["message_id"], "t": r["thread_id"]} for r in rows])
    return finish_threads(conn, rows, refresh, merged)


def mark_subject_replies(conn: Connection) -> int:
    """Migration 0006: set subject_reply on the stored messages it describes, then join each
    to the latest earlier message with its subject, as ingest now does whatever the order the
    two were stored in (before, a reply stored first stayed alone: its wait answered by
    nothing, or an answered question left waiting). Returns how many replies were flagged."""
    m = table_of(Message)
    candidates = conn.execute(
        select(m.c.id, m.c.message_id, m.c.subject, m.c.norm_subject, m.c.client_id, m.c.thread_id, m.c.sent_at,
               m.c.contact_ids, m.c.in_reply_to, m.c.references)
        .where(or_(m.c.in_reply_to.is_(None), m.c.in_reply_to == ""), m.c.references == "")).mappings().all()
    # Flagged as ingest flags them (whatever their client: one may come with a config change);
    # joined where threading can, as finish_threads decides.
    replies = [dict(r) for r in candidates if is_subject_reply(r["in_reply_to"], r["references"].split(),
                                                               r["subject"] or "")]
    for chunk in chunks([r["id"] for r in replies]):
        conn.execute(update(m).where(m.c.id.in_(list(chunk))).values(subject_reply=True))
    threaded = [r for r in replies if r["thread_id"] is not None]
    if threaded:
        finish_threads(conn, threaded)
    return len(replies)


def link_contacts(conn: Connection, rows: Sequence[dict[str, Any]], day: bool = True) -> None:
    """message_contact rows for the messages in `rows` (by Message-ID). `day=False` only for
    migration 0003, before the column existed (0005 fills it)."""
    pks: dict[str, int] = {}
    mids = [r["message_id"] for r in rows if r.get("contact_ids")]
    cond, ids_param = sql_in_list(conn.dialect.name, "message_id", "TEXT")
    pk_sql = text(f"SELECT id, message_id FROM message WHERE {cond}").bindparams(ids_param)
    for chunk in chunks(mids):
        for pk, mid in conn.execute(pk_sql, {"ids": list(chunk)}).all():
            pks[mid] = pk
    links = []
    for r in rows:
        pk = pks.get(r["message_id"])
        if pk is None:
            continue
        for c in (r.get("contact_ids") or "").split(","):
            if c:
                links.append({"message_pk": pk, "contact_id": int(c), "inbound": r["direction"] == "inbound",
                              "automated": bool(r.get("automated")), "sent_at": r["sent_at"]})
                if day:
                    links[-1]["day"] = utc_day(r["sent_at"])
    table = table_of(MessageContact) if day else _MESSAGE_CONTACT_0003
    insert_ignore(conn, table, links, ["message_pk", "contact_id"])


#: message_contact as migration 0003 created it (the model's default for `day` would name it).
_MESSAGE_CONTACT_0003 = Table(
    "message_contact", MetaData(), Column("id", Integer, primary_key=True), Column("message_pk", Integer),
    Column("contact_id", Integer), Column("inbound", Boolean), Column("automated", Boolean),
    Column("sent_at", DateTime))
