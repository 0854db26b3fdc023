"""Wiring shared by the CLI and the service: open the store, sync the directory, scan."""

from __future__ import annotations

import logging
import threading

from .classify import Directory
from .config import Config
from .ingest import Ingestor, Progress, ScanReport, reclassify
from .store import Store, open_store
from .store.sync import load_directory, sync_directory

log = logging.getLogger(__name__)


def configured_store(config: Config) -> Store:
    """Open (and migrate) the store the config names, with its settings."""
    settings = config.settings.store
    return open_store(settings.url, sqlite_cache_mib=settings.sqlite_cache_mib)


def prepare_store(config: Config) -> tuple[Store, Directory]:
    """Open (and migrate) the store, sync who-is-who from the config, and classify stored
    messages again if that changed."""
    from .locks import held

    store = configured_store(config)
    # Replicas starting together sync one after the other (the second finds nothing to do).
    with held(store, "directory"):
        changed = sync_directory(store, config)
        directory = load_directory(store, config)
        if changed:
            n = reclassify(store, directory)
            if n:
                log.info("directory changed: %d stored message(s) classified again", n)
    return store, directory


def run_scan(config: Config, store: Store, directory: Directory,
             stop: threading.Event | None = None, progress: Progress | None = None,
             mailboxes: list[str] | None = None) -> ScanReport:
    """Scan the chosen mailboxes (all by default). A mailbox that another process is scanning
    right now (the worker, a replica, a second `carewatch scan`) is left to it: two scans of
    one backlog would each read all of it, and report each other's messages as duplicates."""
    from .locks import exclusive

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
