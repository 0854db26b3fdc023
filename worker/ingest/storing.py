"""Storing a batch whatever it holds: copies and reused Message-IDs told apart, and a
message that cannot be stored found by halves and recorded, never blocking the folder."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import col

from ..errors import StoreError
from ..mailbox.base import Item
from ..store.models import (
    Message,
    columns,
)
from .headers import valid_text
from .prepare import PreparedBatch

log = logging.getLogger(__name__)


def _tied_to_a_message(exc: BaseException) -> bool:
    """Whether a failure to store a batch may come from what one message holds (a value the
    database refuses, a bug of ours that a message trips), not from the database being away,
    locked or full: those stop the scan, to be retried whole."""
    if isinstance(exc, StoreError):
        cause = exc.__cause__
        if isinstance(cause, OperationalError) or cause is None:
            return False
        return isinstance(cause, DBAPIError) and not cause.connection_invalidated
    return isinstance(exc, ValueError | TypeError | KeyError | IndexError | AttributeError | UnicodeError)


def _isolate(prepared: PreparedBatch, store: Callable[[PreparedBatch], None]) -> list[tuple[Item, str]]:
    """Store `prepared` in halves, down to the single messages that fail; returns those, with
    the error, as skipped messages are kept. The batch's skipped messages and commands go with
    the first part that holds their message."""
    failed: list[tuple[Item, str]] = []
    todo = [prepared]
    while todo:
        part = todo.pop(0)
        try:
            store(part)
            continue
        except Exception as exc:  # noqa: BLE001 - the same sorting as the whole batch's
            if not _tied_to_a_message(exc):
                raise
            if len(part.rows) <= 1:
                row = part.rows[0] if part.rows else None
                if row is None:
                    raise
                # An IMAP message by its UID; a Maildir one (no UID) by its Message-ID, digested
                # as skipped_uid() digests a file name.
                uid = row.get("uid")
                item = Item(uid, uid) if isinstance(uid, int) else Item(row["message_id"], 0)
                failed.append((item, valid_text(f"could not be stored: {type(exc).__name__}: {exc}")[:500]))
                continue
            todo[:0] = list(_halves(part))
    return failed


def _halves(p: PreparedBatch) -> tuple[PreparedBatch, PreparedBatch]:
    mid = len(p.rows) // 2
    parts = []
    for lo, hi in ((0, mid), (mid, len(p.rows))):
        rows = p.rows[lo:hi]
        ids = {r["message_id"] for r in rows}
        parts.append(PreparedBatch(
            p.now, rows, [(i - lo, people, pm) for i, people, pm in p.discovered if lo <= i < hi],
            [c for c in p.commands if c["message_id"] in ids], p.skipped if lo == 0 else []))
    return parts[0], parts[1]


def same_message(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two messages with one Message-ID are copies of one message (INBOX and Sent, Gmail
    labels, a re-import): the same sender and subject. A promotion that reuses a client's
    Message-ID (or a broken mailer that gives every message the same one) is not."""
    return bool(a["from_addr"] == b["from_addr"] and a["norm_subject"] == b["norm_subject"])


def reuse_id(row: dict[str, Any]) -> None:
    """Give a message that reuses another's Message-ID an id of its own, derived from what it
    is (so reading it again finds it stored), and stop it sharing the other's thread."""
    original = row["message_id"]
    mark = hashlib.sha256(f"{row['from_addr']}\n{row['norm_subject']}".encode()).hexdigest()[:12]
    row["message_id"] = f"{original[:-1][:960]}#reused-{mark}>"
    note = f"Message-ID {original} is also another message's: stored as {row['message_id']}"
    row["problems"] = f"{row['problems']}; {note}" if row["problems"] else note


def distinct_from_stored(db: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch's rows, those that reuse the Message-ID of a different stored message given
    an id of their own (a copy of a stored message keeps its id and is then a duplicate)."""
    if not rows:
        return rows
    stored = {r.message_id: r for r in db.execute(
        select(*columns(Message.message_id, Message.from_addr, Message.norm_subject))
        .where(col(Message.message_id).in_([r["message_id"] for r in rows]))).all()}
    if not stored:
        return rows
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        old = stored.get(row["message_id"])
        if old is not None and not same_message(old._asdict(), row):
            reuse_id(row)
        out.setdefault(row["message_id"], row)
    return list(out.values())
