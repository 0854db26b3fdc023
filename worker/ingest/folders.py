"""Folder states as stored, which the scan keeps and /healthz and the notes read: each
configured folder's cursor, last good scan and last error, and folder patterns that match
nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from ..config import MailboxConfig
from ..errors import StoreError
from ..mailbox.base import folder_selected, is_pattern
from ..store.db import Store
from ..store.models import FolderState, Meta, table_of

log = logging.getLogger(__name__)


def configured_folders(mb: MailboxConfig, rows: Iterable[tuple[str, str, datetime | None]]
                       ) -> dict[str, datetime | None]:
    """The folders of `mb` the config asks for now, each with its last good scan: every folder
    it names (None if never read), then each folder with a scan state (`rows` of folder_state:
    mailbox, folder, last_ok_at) that one of its patterns matches. A folder taken out of the
    config keeps its state, to resume if it comes back, and is not among them."""
    out: dict[str, datetime | None] = {f: None for f in mb.folders if not is_pattern(f)}
    out.update({f: t for m, f, t in rows if m == mb.name and folder_selected(mb.folders, f)})
    return out


def folder_states(store: Store, mailbox: str | None = None) -> list[tuple[str, str, datetime | None]]:
    """(mailbox, folder, last good scan) of every folder with a scan state, or one mailbox's."""
    q = select(col(FolderState.mailbox), col(FolderState.folder), col(FolderState.last_ok_at))
    if mailbox is not None:
        q = q.where(col(FolderState.mailbox) == mailbox)
    with store.session() as db:
        return [(m, f, t) for m, f, t in db.execute(q).all()]


def folder_errors(store: Store) -> dict[tuple[str, str], str]:
    """(mailbox, folder) -> the error of its last failed scan, for folders whose last scan failed."""
    q = select(col(FolderState.mailbox), col(FolderState.folder), col(FolderState.last_error)).where(
        col(FolderState.last_error).is_not(None))
    with store.session() as db:
        return {(m, f): e for m, f, e in db.execute(q).all()}


def listed_key(mailbox: str) -> str:
    """The meta key that says a scan has listed a mailbox's folders for its patterns (its value:
    when it first did)."""
    return f"folders_listed:{mailbox}"


def mailboxes_listed(store: Store) -> set[str]:
    """The mailboxes whose folders a scan has listed to match their patterns."""
    prefix = listed_key("")
    with store.session() as db:
        keys = db.execute(select(col(Meta.key))
                          .where(col(Meta.key).startswith(prefix, autoescape=True))).scalars().all()
    return {k[len(prefix):] for k in keys}


def unmatched_patterns(mb: MailboxConfig, rows: Iterable[tuple[str, str, datetime | None]],
                       listed: set[str]) -> list[str]:
    """The patterns of `mb` that matched no folder on the server when a scan last listed its
    folders (`rows` as for configured_folders; `listed` from mailboxes_listed()): nothing is
    read through them. Empty for a mailbox never listed: nobody knows yet."""
    if mb.name not in listed:
        return []
    names = [f for m, f, _ in rows if m == mb.name]
    return [p for p in mb.folders if is_pattern(p) and not any(folder_selected([p], f) for f in names)]


def matches_no_folder(patterns: Sequence[str]) -> str:
    """"'Clients/*' matches no folder on the server ...", for a log line or a note."""
    one = len(patterns) == 1
    return (f"{' and '.join(map(repr, patterns))} {'matches' if one else 'match'} no folder on the server, so "
            f"nothing is read through {'it' if one else 'them'} (`carewatch validate --connect` lists the "
            "server's folders)")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def add_states(store: Store, db: Session, mailbox: str, folders: list[str]) -> None:
    """A scan state for each folder that has none yet (insert-or-ignore: another replica may
    create the same row at the same moment)."""
    store.insert_ignore(db, table_of(FolderState), [
        {"mailbox": mailbox, "folder": f, "last_uid": 0, "messages_seen": 0, "messages_skipped": 0}
        for f in folders], ["mailbox", "folder"])


def folder_state(store: Store, mailbox: str, folder: str) -> FolderState:
    """The folder's scan state, made if it has none yet."""
    where = (FolderState.mailbox == mailbox, FolderState.folder == folder)
    with store.session() as db:
        st = db.exec(sm_select(FolderState).where(*where)).first()
        if st is None:
            add_states(store, db, mailbox, [folder])
            db.commit()
            st = db.exec(sm_select(FolderState).where(*where)).one()
        return st


def record_error(store: Store, mailbox: str, folders: Iterable[str], error: str) -> None:
    """Note why these folders were not read (for /healthz, whichever replica asks). A folder
    never read yet gets its state row here: a first start that cannot log in says why too."""
    folders = list(folders)
    try:
        with store.session() as db:
            add_states(store, db, mailbox, folders)
            db.execute(update(FolderState).where(
                col(FolderState.mailbox) == mailbox, col(FolderState.folder).in_(list(folders))
            ).values(last_error=error[:2000], last_scan_at=utcnow()))
            db.commit()
    except StoreError:
        log.warning("could not record the scan error in the store")


def mark_ok(store: Store, mailbox: str, folder: str, uidvalidity: int, last_uid: int | None) -> None:
    """A good scan of the folder, up to `last_uid` (None: the cursor stays where it is)."""
    values: dict[str, Any] = {"uidvalidity": uidvalidity, "last_ok_at": utcnow(),
                              "last_scan_at": utcnow(), "last_error": None}
    if last_uid is not None:
        values["last_uid"] = last_uid
    with store.session() as db:
        db.execute(update(FolderState).where(col(FolderState.mailbox) == mailbox,
                                             col(FolderState.folder) == folder).values(**values))
        db.commit()


def sync_matched(store: Store, mb: MailboxConfig, folders: list[str]) -> None:
    """Bring the scan states of a mailbox's pattern-matched folders in line with what the
    server listed just now, and note that it was listed (see unmatched_patterns):
    * a folder matched before and no more (a client's folder deleted or renamed on the
      server) loses its state: it would never be scanned again and look stale to /healthz
      for ever. The messages read from it are kept;
    * a newly matched folder gets one before it is read, so that a scan stopped before
      reaching it does not make its pattern look as if it matched nothing."""
    patterns = [f for f in mb.folders if is_pattern(f)]
    if not patterns:
        return
    names = {f for _, f, _ in folder_states(store, mb.name)}
    with store.session() as db:
        gone = [n for n in names if n not in folders and n not in mb.folders and folder_selected(patterns, n)]
        if gone:
            db.execute(delete(FolderState).where(col(FolderState.mailbox) == mb.name,
                                                 col(FolderState.folder).in_(gone)))
        add_states(store, db, mb.name, [f for f in folders if f not in names and f not in mb.folders])
        store.insert_ignore(db, table_of(Meta), [{"key": listed_key(mb.name), "value": utcnow().isoformat()}],
                            ["key"])
        db.commit()
    for n in gone:
        log.info("mailbox %s: folder %r is no longer on the server (or no longer matched): its scan "
                 "state is dropped; the messages read from it are kept", mb.name, n)
