"""Folder states as stored, which /healthz, the notes and the scan read: each configured
folder's last good scan and last error, and folder patterns that match nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlmodel import col

from ..config import MailboxConfig
from ..mailbox.base import folder_selected, is_pattern
from ..store.db import Store
from ..store.models import (
    FolderState,
    Meta,
)

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
