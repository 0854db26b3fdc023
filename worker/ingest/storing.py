"""Storing a prepared batch whatever it holds: discovered contacts, copies and reused
Message-IDs told apart, threads, the folder's cursor; a message that cannot be stored is found
by halves and recorded as skipped, never blocking the folder."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import col

from ..errors import StoreError
from ..mailbox.base import Item
from ..store.db import Store, describe_db_error
from ..store.locks import lock_for_storing
from ..store.models import AlertCommand, Contact, FolderState, Message, SkippedMessage, columns, table_of
from ..store.threads import finish_threads, link_contacts, plan_threads
from .classify import ContactRef, Directory, classify
from .headers import valid_text
from .prepare import PreparedBatch, classified
from .reports import FolderReport

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


def skipped_uid(item: Item) -> int:
    """The number a skipped message is recorded under: its UID, or for a Maildir file a
    digest of its name. Not hash(): that changes with every process (PYTHONHASHSEED)."""
    if isinstance(item.key, int):
        return item.cursor
    digest = hashlib.blake2b(str(item.key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**62


class BatchWriter:
    """Stage two of a scan, on the scanning thread: a prepared batch into the store, in one
    transaction that stores, threads and moves the folder's cursor."""

    def __init__(self, store: Store, directory: Directory) -> None:
        self.store = store
        self.directory = directory

    def discover(self, found: dict[str, tuple[str, int]], now: datetime) -> None:
        """Record unknown people at client domains as discovered contacts."""
        rows = [{"email": addr, "name": name or addr, "role": "user", "client_id": cid,
                 "discovered": True, "active": True, "first_seen_at": now}
                for addr, (name, cid) in found.items()]
        with self.store.session() as db:
            self.store.insert_ignore(db, table_of(Contact), rows, ["email"])
            db.commit()
            for c in db.execute(select(*columns(Contact.id, Contact.email, Contact.client_id, Contact.role,
                                                Contact.active))
                                .where(col(Contact.email).in_(list(found)))).all():
                if c.active and c.client_id in self.directory.domain_clients.values():
                    self.directory.contacts[c.email] = ContactRef(c.id, c.client_id, c.role)

    def write_isolating(self, prepared: PreparedBatch, mailbox: str, folder: str, uidvalidity: int,
                         batch: Sequence[Item], rep: FolderReport) -> None:
        """Store a batch; if that fails for a reason tied to what a message holds (not the
        database being away), store it in halves until the message is found, record it as
        skipped with the error, and go on: one poison message (or a bug of ours that it trips)
        never stops the firm's mailbox. The cursor moves only once the whole batch is done."""
        cursor = max(it.cursor for it in batch)
        try:
            self.write(prepared, mailbox, folder, uidvalidity, cursor, rep)
        except Exception as exc:  # noqa: BLE001 - sorted below: only a message's fault is isolated
            if not _tied_to_a_message(exc) or len(prepared.rows) == 0:
                raise
            log.warning("%s/%s: a batch of %d could not be stored (%s); finding the message that fails",
                        mailbox, folder, len(prepared.rows), exc)
            failed = _isolate(prepared, lambda b: self.write(b, mailbox, folder, uidvalidity, None, rep))
            # The messages that fail are recorded as skipped, as any unreadable one is, and the
            # cursor moves past the batch with them.
            self.write(PreparedBatch(prepared.now, [], [], [], failed), mailbox, folder, uidvalidity, cursor,
                              rep)

    def write(self, prepared: PreparedBatch, mailbox: str, folder: str, uidvalidity: int,
                     cursor: int | None, rep: FolderReport) -> None:
        """Stage two, on the scanning thread: discovered contacts, then one transaction that
        stores the batch, threads it and moves the folder's cursor to `cursor` (None: it stays)."""
        now, command_rows, skipped = prepared.now, prepared.commands, prepared.skipped
        # People, not newsletters or bounces, become discovered contacts.
        found: dict[str, tuple[str, int]] = {}
        for i, people, _ in prepared.discovered:
            if not prepared.rows[i]["automated"]:
                for addr, name, cid in people:
                    found.setdefault(addr, (name, cid))
        if found:
            self.discover(found, now)
        for i, _, pm in prepared.discovered:
            # Classified before the people it names were stored (here, by the batch before, or
            # in another process): classify again to link them.
            prepared.rows[i].update(classified(classify(pm, self.directory)))
        rows: dict[str, dict[str, Any]] = {}
        for row in prepared.rows:
            seen = rows.get(row["message_id"])
            if seen is not None and not same_message(seen, row):
                reuse_id(row)  # another message under a reused Message-ID: kept, not dropped
                seen = rows.get(row["message_id"])
            if seen is not None:
                rep.duplicates += 1
                continue
            rows[row["message_id"]] = row
            if row["automated"]:
                rep.automated += 1
            if row["problems"]:
                log.debug("%s/%s uid %s: %s", mailbox, folder, row["uid"], row["problems"])

        for item, reason in skipped:
            log.warning("%s/%s: skipped message %s: %s", mailbox, folder, item.cursor, reason)
        try:
            with self.store.session() as db:
                conn = db.connection()
                lock_for_storing(self.store, conn)
                batch_rows = distinct_from_stored(db, list(rows.values()))
                merged = plan_threads(conn, batch_rows) if batch_rows else set()  # sets thread_id
                inserted = self.store.insert_ignore(db, table_of(Message), batch_rows, ["message_id"])
                if batch_rows:
                    finish_threads(conn, batch_rows, merged=merged)
                    link_contacts(conn, batch_rows)
                if command_rows:
                    self.store.insert_ignore(db, table_of(AlertCommand), command_rows, ["message_id"])
                if skipped:
                    self.store.insert_ignore(db, table_of(SkippedMessage), [
                        {"mailbox": mailbox, "folder": folder, "uidvalidity": uidvalidity,
                         "uid": skipped_uid(it),
                         "reason": reason, "seen_at": now} for it, reason in skipped
                    ], ["mailbox", "folder", "uidvalidity", "uid"])
                moved = {} if cursor is None else {"last_uid": cursor}
                db.execute(update(FolderState).where(
                    col(FolderState.mailbox) == mailbox, col(FolderState.folder) == folder).values(
                    **moved, uidvalidity=uidvalidity,
                    messages_seen=FolderState.messages_seen + inserted,
                    messages_skipped=FolderState.messages_skipped + len(skipped),
                    last_scan_at=now))
                db.commit()
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"{mailbox}/{folder}: could not store a batch: "
                             f"{describe_db_error(exc)}") from exc
        rep.stored += inserted
        rep.duplicates += len(rows) - inserted
        rep.skipped += len(skipped)
