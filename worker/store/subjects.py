"""Replies known by their subject alone (no References, no In-Reply-To): the latest earlier
message with the subject at the client, looked up one at a time or for a batch at once,
and earlier replies that a new batch turns out to answer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Integer,
    String,
    bindparam,
    column,
    select,
    text,
)
from sqlmodel import col

from .models import Message
from .sql import chunks, sql_in_list


def latest_before(conn: Connection, r: dict[str, Any], window: timedelta, *, not_thread: int | None = None,
                   not_mid: str | None = None) -> Any:
    """The latest message at r's client with r's subject sent in the window up to r (not in
    thread `not_thread`, not message `not_mid`): its Message-ID, thread and contacts."""
    q = select(col(Message.message_id), col(Message.thread_id), col(Message.contact_ids)).where(
        col(Message.client_id) == r["client_id"], col(Message.norm_subject) == r["norm_subject"],
        col(Message.sent_at) <= r["sent_at"], col(Message.sent_at) >= r["sent_at"] - window,
        col(Message.thread_id).is_not(None))
    if not_thread is not None:
        q = q.where(col(Message.thread_id) != not_thread)
    if not_mid is not None:
        q = q.where(col(Message.message_id) != not_mid)
    return conn.execute(q.order_by(col(Message.sent_at).desc()).limit(1)).first()


class EarlierBySubject:
    """latest_before for a batch's subject replies, from one query instead of one each.

    Used when the replies were sent within one window of each other (new mail, as a running
    worker reads it): the messages any of them may look back to are then the touched clients'
    messages from a window before the first reply to the last, few enough to read at once. A
    first scan's batches span years: there each reply asks on its own."""

    def __init__(self, conn: Connection, replies: Sequence[dict[str, Any]], window: timedelta) -> None:
        self.window = window
        #: (client, subject) -> [sent_at, message_id, thread_id, contact_ids] of each candidate.
        self.by_key: dict[tuple[int, str], list[list[Any]]] = {}
        wanted = {(r["client_id"], r["norm_subject"]) for r in replies}
        cond, ids_param = sql_in_list(conn.dialect.name, "client_id", "INTEGER")
        sql = (text(f"SELECT sent_at, message_id, thread_id, contact_ids, client_id, norm_subject FROM message "
                    f"WHERE {cond} AND sent_at >= :lo AND sent_at <= :hi AND thread_id IS NOT NULL")
               .bindparams(ids_param, bindparam("lo", type_=DateTime), bindparam("hi", type_=DateTime))
               .columns(column("sent_at", DateTime), column("message_id", String), column("thread_id", Integer),
                        column("contact_ids", String), column("client_id", Integer),
                        column("norm_subject", String)))
        span = {"lo": min(r["sent_at"] for r in replies) - window, "hi": max(r["sent_at"] for r in replies)}
        for chunk in chunks(sorted({client for client, _ in wanted})):
            for sent_at, mid, thread, contacts, client, subject in conn.execute(sql, {"ids": list(chunk), **span}):
                if (client, subject) in wanted:
                    self.by_key.setdefault((client, subject), []).append([sent_at, mid, thread, contacts])

    @staticmethod
    def usable(replies: Sequence[dict[str, Any]], window: timedelta) -> bool:
        return len(replies) > 1 and (max(r["sent_at"] for r in replies) - min(r["sent_at"] for r in replies)
                                     <= window)

    def latest_before(self, r: dict[str, Any], not_thread: int | None) -> Any:
        """As latest_before(conn, r, window, not_thread=...) would answer now."""
        best: list[Any] | None = None
        lo, hi = r["sent_at"] - self.window, r["sent_at"]
        for c in self.by_key.get((r["client_id"], r["norm_subject"]), ()):
            if lo <= c[0] <= hi and c[2] != not_thread and (best is None or c[0] > best[0]):
                best = c
        return None if best is None else SimpleNamespace(message_id=best[1], thread_id=best[2], contact_ids=best[3])

    def merged(self, threads: set[int], target: int) -> None:
        """Threads joined into `target` since the candidates were read (as _merge does in the store)."""
        for candidates in self.by_key.values():
            for c in candidates:
                if c[2] in threads:
                    c[2] = target


def share_people(a: str | None, b: str | None) -> bool:
    """Whether two messages with one subject may be one conversation: they share a contact,
    or one of them names none. (Same subject, other people: another conversation.)"""
    mine = set((a or "").split(",")) - {""}
    theirs = set((b or "").split(",")) - {""}
    return not (mine and theirs) or bool(mine & theirs)


#: Replies known by their subject alone, stored before, with one of these subjects (the
#: partial index ix_message_subject_reply holds only them).
_SUBJECT_REPLIES = ("SELECT message_id, client_id, norm_subject, sent_at, contact_ids FROM message "
                    "WHERE subject_reply AND {cond} AND sent_at >= :lo AND sent_at <= :hi")


def late_parents(conn: Connection, rows: Sequence[dict[str, Any]],
                  window: timedelta) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(reply, parent) pairs: a reply known by its subject alone, stored in an earlier batch,
    whose latest earlier message with its subject is a row of this batch. The reply joined
    nothing (or an older message) when it was stored; a scan reads INBOX and Sent one after
    the other, so a client's reply can come before the firm's message it answers, and the
    firm's reply before the client's question when Sent is listed first or INBOX failed."""
    parents: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("norm_subject") and r.get("client_id") is not None:
            parents.setdefault((r["client_id"], r["norm_subject"]), []).append(r)
    if not parents:
        return []
    cond, ids_param = sql_in_list(conn.dialect.name, "norm_subject", "TEXT")
    sql = (text(_SUBJECT_REPLIES.format(cond=cond))
           .bindparams(ids_param, bindparam("lo", type_=DateTime), bindparam("hi", type_=DateTime))
           .columns(column("message_id", String), column("client_id", Integer), column("norm_subject", String),
                    column("sent_at", DateTime), column("contact_ids", String)))
    in_batch = {r["message_id"]: r for r in rows}
    sent = [r["sent_at"] for group in parents.values() for r in group]
    span = {"lo": min(sent), "hi": max(sent) + window}
    pairs = []
    for chunk in chunks(sorted({subject for _, subject in parents})):
        for found in conn.execute(sql, {"ids": list(chunk), **span}).mappings().all():
            reply = dict(found)
            here = parents.get((reply["client_id"], reply["norm_subject"]))
            if not here or reply["message_id"] in in_batch:
                continue  # (a reply of this batch looked back already, after the batch was inserted)
            if not any(p["sent_at"] <= reply["sent_at"] <= p["sent_at"] + window for p in here):
                continue
            # Exactly the message it would have joined had everything come in order: the latest
            # before it, whatever thread that is in.
            latest = latest_before(conn, reply, window, not_mid=reply["message_id"])
            if latest is not None and latest.message_id in in_batch:
                pairs.append((reply, in_batch[latest.message_id]))
    return sorted(pairs, key=lambda pair: pair[0]["sent_at"])
