"""Wiring shared by the CLI and the service: open the store, sync the directory, scan."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from ..config import Config
from ..store import Store, open_store
from ..store.sync import load_directory, sync_directory
from .classify import AUTOMATION_RULES_VERSION, Directory
from .folders import configured_folders, folder_states, mailboxes_listed, matches_no_folder, unmatched_patterns
from .reclassify import reclassify, reclassify_automation
from .reports import Progress, ScanReport
from .scan import Ingestor

log = logging.getLogger(__name__)


def configured_store(config: Config) -> Store:
    """Open (and migrate) the store the config names, with its settings."""
    settings = config.settings.store
    # Connections held at once by the worker: two per mailbox scan (its lock and its batches),
    # three for a check, one each for delivery, the digest and /healthz.
    pool_size = max(5, 2 * len(config.settings.mailboxes) + 6)
    return open_store(settings.connect_url(), sqlite_cache_mib=settings.sqlite_cache_mib, pool_size=pool_size)


def prepare_store(config: Config) -> tuple[Store, Directory]:
    """Open (and migrate) the store, sync who-is-who from the config, and classify stored
    messages again if that changed."""
    from ..store.locks import held

    store = configured_store(config)
    # Replicas starting together sync one after the other (the second finds nothing to do).
    with held(store, "directory"):
        changed = sync_directory(store, config)
        directory = load_directory(store, config)
        if changed:
            n = reclassify(store, directory)
            if n:
                log.info("directory changed: %d stored message(s) classified again", n)
        if _meta(store, "automation_rules") != AUTOMATION_RULES_VERSION:
            n = reclassify_automation(store)
            if n:
                log.info("automated-mail rules changed: %d stored message(s) judged again", n)
            _meta(store, "automation_rules", AUTOMATION_RULES_VERSION)  # done only once all is
    return store, directory


def _meta(store: Store, key: str, value: str | None = None) -> str | None:
    """Read a Meta fact, or write it when `value` is given."""
    from ..store.models import Meta

    with store.session() as db:
        row = db.get(Meta, key)
        if value is None:
            return row.value if row is not None else None
        row = row or Meta(key=key, value=value)
        row.value = value
        db.add(row)
        db.commit()
        return value


def run_scan(config: Config, store: Store, directory: Directory,
             stop: threading.Event | None = None, progress: Progress | None = None,
             mailboxes: list[str] | None = None) -> ScanReport:
    """Scan the chosen mailboxes (all by default). A mailbox that another process is scanning
    right now (the worker, a replica, a second `carewatch scan`) is left to it: two scans of
    one backlog would each read all of it, and report each other's messages as duplicates."""
    from ..store.locks import exclusive

    ingestor = Ingestor(store, config, directory, stop=stop, progress=progress)
    report = ScanReport()
    for mb in config.settings.mailboxes:
        if mailboxes and mb.name not in mailboxes:
            continue
        with exclusive(store, f"scan:{mb.name}") as mine:
            if not mine:
                msg = f"mailbox {mb.name!r} is being scanned by another process (the worker?); not scanned now"
                log.warning("%s", msg)
                report.errors.append(msg)
                continue
            one = ingestor.scan([mb])
        report.folders += one.folders
        report.errors += one.errors
    return report


#: A mailbox last read longer ago than this many of its scan intervals (and at least an hour)
#: is out of date for a status or check run by hand.
STALE_INTERVALS = 3


#: A firm that received at least this many messages from its contacts in the last
#: REPLIES_WINDOW_DAYS and was seen writing to none of them is almost certainly not scanning
#: the folders its replies are in.
REPLIES_MIN_INBOUND = 20
REPLIES_WINDOW_DAYS = 30


def replies_not_seen(store: Store, now: datetime) -> str | None:
    """A warning when contacts write and the firm is never seen writing back: its replies are
    not in the folders scanned (a shared mailbox's sent folder not configured, owners replying
    from their own mailboxes). Every contact then looks unanswered, and the first check would
    send every owner an alert for every thread. None when replies are seen.

    Two questions that stop early, each a seek per contact into message_contact's covering
    index: are there REPLIES_MIN_INBOUND messages from contacts in the window, and is there one
    to a contact. (Counting them all read the whole index: 0.13 s at 1M messages.)"""
    from sqlalchemy import exists, literal
    from sqlmodel import col, select

    from ..store.models import Contact, MessageContact

    since = now - timedelta(days=REPLIES_WINDOW_DAYS)

    def recent(inbound: bool) -> Any:
        # One seek per contact into the covering index (contact_id, inbound, automated, sent_at).
        return select(literal(1)).where(
            col(MessageContact.contact_id).in_(select(col(Contact.id))), col(MessageContact.inbound).is_(inbound),
            col(MessageContact.automated).is_(False), col(MessageContact.sent_at) >= since,
            col(MessageContact.sent_at) <= now)

    with store.session() as db:
        inbound = len(db.execute(recent(True).limit(REPLIES_MIN_INBOUND)).all())
        if inbound < REPLIES_MIN_INBOUND or db.execute(select(exists(recent(False)))).scalar():
            return None
    return (f"{REPLIES_MIN_INBOUND} or more messages from contacts in the last {REPLIES_WINDOW_DAYS} days and "
            "none from the firm to them: the firm's replies are not in the folders scanned, so every contact "
            "looks unanswered (README: Where the firm's replies are seen; validate --connect names the server's "
            "sent folder)")


def scan_notes(config: Config, store: Store, now: datetime) -> list[str]:
    """What a status or check run by hand should say about the mail it is based on: a mailbox
    never read (every contact reads "never" until it is), or one not read for a while (the
    worker stopped?). Judged at `now`, so a replay of the past says nothing."""
    from ..mailbox.base import is_pattern

    rows, listed = folder_states(store), mailboxes_listed(store)
    notes = []
    for mb in config.settings.mailboxes:
        read = {f: t for f, t in configured_folders(mb, rows).items() if t is not None}
        named = [f for f in mb.folders if not is_pattern(f)]
        unmatched = unmatched_patterns(mb, rows, listed)
        if unmatched:
            notes.append(f"mailbox {mb.name!r}: {matches_no_folder(unmatched)}")
        if not read:
            if named or not unmatched:  # (else the note above says why nothing is read)
                notes.append(f"mailbox {mb.name!r} has not been read yet: run `carewatch scan` (or add --scan); "
                             "until then its contacts show no mail")
            continue
        oldest = min(read.get(f) or datetime.min for f in named) if named else min(read.values())
        age = now - oldest
        if age > max(timedelta(minutes=mb.scan_interval_minutes * STALE_INTERVALS), timedelta(hours=1)):
            hours = age.total_seconds() / 3600
            when = ("never" if oldest == datetime.min
                    else f"{hours:.0f} hours ago" if hours < 48 else f"{hours / 24:.0f} days ago")
            notes.append(f"mailbox {mb.name!r} was last read {when}: newer mail is not counted "
                         "(is the worker running? add --scan to read it now)")
    missing = replies_not_seen(store, now)
    if missing:
        notes.append(missing)
    return notes
