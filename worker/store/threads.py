"""Threads, assigned at ingest and kept in the store.

`thread_link` maps every Message-ID seen (as a message or only as a reference) to a thread:
a union-find that lives in the database. A new message joins the thread of any id it shares
(itself, its In-Reply-To, its References); when it links two threads, they merge (the smaller
id wins, deterministic whatever the order of arrival). A reply that lost its references but
says "Re:" joins the latest message with the same normalised subject at the same client within
30 days, if they share a participant. Evaluation then reads integer thread ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, update

from .. import defaults
from ..headers import has_reply_prefix
from .db import insert_ignore
from .models import Message, MessageContact, ThreadLink

CHUNK = 500


def thread_hash(mid: str) -> int:
    """A stable positive 63-bit id for a new thread, from its first Message-ID."""
    return int.from_bytes(hashlib.sha256(mid.encode("utf-8", "surrogatepass")).digest()[:8], "big") >> 1


def _chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


MERGE_STATEMENTS = (
    text("UPDATE message SET thread_id = :target WHERE thread_id = :old"),
    text("UPDATE thread_link SET thread_id = :target WHERE thread_id = :old"),
)


def _merge_many(conn: Connection, moves: dict[int, int]) -> None:
    """Move every stored thread `old` into `moves[old]`: two statements however many moves."""
    params = [{"old": old, "target": target} for old, target in moves.items() if old != target]
    if params:
        for stmt in MERGE_STATEMENTS:
            conn.execute(stmt, params)


def _merge(conn: Connection, target: int, others: set[int]) -> None:
    _merge_many(conn, {o: target for o in others})


REFRESH_REPLIES = (
    "UPDATE message SET reply_at = (SELECT MIN(o.sent_at) FROM message o WHERE o.thread_id = message.thread_id "
    "AND o.direction = 'outbound' AND NOT o.automated AND o.sent_at > message.sent_at) "
    "WHERE direction = 'inbound'"
)


def refresh_replies(conn: Connection, thread_ids: Iterable[int] | None = None) -> None:
    """Recompute reply_at for the inbound messages of these threads (all threads if None)."""
    if thread_ids is None:
        conn.execute(text(REFRESH_REPLIES))
        return
    ids = sorted(set(thread_ids))
    for chunk in _chunks(ids):
        conn.execute(text(REFRESH_REPLIES + " AND thread_id IN :ids").bindparams(bindparam("ids", expanding=True)),
                     {"ids": list(chunk)})


def plan_threads(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Before a batch is inserted: give every row its thread (row["thread_id"]), merging the
    stored threads it links and recording its ids in thread_link."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in rows:
        mid = r["message_id"]
        find(mid)
        for ref in _refs(r):
            union(mid, ref)

    ids = list(parent)
    existing: dict[str, int] = {}
    for chunk in _chunks(ids):
        # .all(): one fetchall, where iterating fetches (and hands the GIL over) row by row
        for mid, tid in conn.execute(select(ThreadLink.mid, ThreadLink.thread_id)
                                     .where(ThreadLink.mid.in_(chunk))).all():  # type: ignore[attr-defined]
            existing[mid] = tid

    # Stored threads that this batch links are merged into the smallest id. Two components of
    # one batch may each link the same stored thread: a second union-find over thread ids
    # settles the final target of every stored thread before anything is written.
    tparent: dict[int, int] = {}

    def tfind(x: int) -> int:
        root = x
        while tparent.setdefault(root, root) != root:
            root = tparent[root]
        while tparent[x] != root:
            tparent[x], x = root, tparent[x]
        return root

    components: dict[str, list[str]] = {}
    for mid in ids:
        components.setdefault(find(mid), []).append(mid)
    known_of: dict[str, list[int]] = {}
    for root, members in components.items():
        known = [existing[m] for m in members if m in existing]
        known_of[root] = known
        for t in known[1:]:
            a, b = tfind(known[0]), tfind(t)
            if a != b:
                tparent[max(a, b)] = min(a, b)
    _merge_many(conn, {t: tfind(t) for t in list(tparent)})

    target_of: dict[str, int] = {}
    new_links: list[dict[str, Any]] = []
    for root, members in components.items():
        known = known_of[root]
        target = tfind(known[0]) if known else thread_hash(min(members))
        target_of[root] = target
        new_links += [{"mid": m, "thread_id": target} for m in members if m not in existing]
    insert_ignore(conn, ThreadLink.__table__, new_links, ["mid"])
    for r in rows:
        r["thread_id"] = target_of[find(r["message_id"])]


def _refs(r: dict[str, Any]) -> list[str]:
    return ([r["in_reply_to"]] if r.get("in_reply_to") else []) + (r.get("references") or "").split()


def finish_threads(conn: Connection, rows: Sequence[dict[str, Any]], refresh: bool = True) -> set[int]:
    """After a batch is inserted: join replies that lost their references by subject, then bring
    reply_at up to date in every thread the batch touched. Returns those threads."""
    window = timedelta(days=defaults.SUBJECT_THREAD_WINDOW_DAYS)
    for r in sorted(rows, key=lambda r: r["sent_at"]):
        if _refs(r) or not r.get("norm_subject") or r.get("client_id") is None:
            continue
        if not has_reply_prefix(r.get("subject") or ""):
            continue
        mine = r["thread_id"]
        prev = conn.execute(
            select(Message.thread_id, Message.contact_ids).where(
                Message.client_id == r["client_id"], Message.norm_subject == r["norm_subject"],
                Message.sent_at <= r["sent_at"], Message.sent_at >= r["sent_at"] - window,
                Message.thread_id != mine, Message.thread_id.is_not(None))  # type: ignore[union-attr]
            .order_by(Message.sent_at.desc()).limit(1)).first()  # type: ignore[attr-defined]
        if prev is None:
            continue
        a = set((r.get("contact_ids") or "").split(",")) - {""}
        b = set((prev.contact_ids or "").split(",")) - {""}
        if a and b and not a & b:
            continue  # same subject, other people: another conversation
        target = min(mine, prev.thread_id)
        _merge(conn, target, {mine, prev.thread_id})
        for other in rows:
            if other["thread_id"] in (mine, prev.thread_id):
                other["thread_id"] = target
    touched = {r["thread_id"] for r in rows}
    if refresh:
        refresh_replies(conn, touched)
    return touched


def assign_threads(conn: Connection, rows: Sequence[dict[str, Any]], refresh: bool = True) -> set[int]:
    """Thread messages that are already stored (the migration's backfill, tests)."""
    rows = [dict(r) for r in rows]
    plan_threads(conn, rows)
    conn.execute(update(Message).where(Message.message_id == bindparam("m")).values(thread_id=bindparam("t"))
                 .execution_options(synchronize_session=False),
                 [{"m": r["message_id"], "t": r["thread_id"]} for r in rows])
    return finish_threads(conn, rows, refresh)


def link_contacts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """message_contact rows for the messages in `rows` (by Message-ID)."""
    pks: dict[str, int] = {}
    mids = [r["message_id"] for r in rows if r.get("contact_ids")]
    for chunk in _chunks(mids):
        for pk, mid in conn.execute(select(Message.id, Message.message_id)
                                    .where(Message.message_id.in_(chunk))).all():  # type: ignore[attr-defined]
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
    insert_ignore(conn, MessageContact.__table__, links, ["message_pk", "contact_id"])
