"""Incremental, idempotent ingest of mailbox folders into the store.

Per folder we remember UIDVALIDITY and the last UID committed. Only new UIDs are fetched, in
batches, one transaction per batch, and the cursor moves with the batch: an interrupted scan
resumes where it stopped, a re-read changes nothing (Message-ID dedupe), and a changed
UIDVALIDITY re-reads the folder without duplicating anything.
"""

from __future__ import annotations

import imaplib
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, OperationalError

from .. import defaults
from ..config import Config, MailboxConfig
from ..errors import FolderMissingError, MailboxError, ReadInterrupted, StoreError
from ..mailbox import MailboxSource, open_source
from ..mailbox.base import Item, is_pattern
from ..store.db import Store
from .classify import Directory
from .folders import configured_folders, folder_state, folder_states, mark_ok, record_error, sync_matched
from .helper import FetchHelper
from .prepare import PreparedBatch, collected_per_batch, prepared_batches
from .reports import FolderReport, LogProgress, Progress, ScanReport, merge_reports
from .storing import BatchWriter
from .unreadable import find_unreadable

log = logging.getLogger(__name__)


def scan_batches(items: Sequence[Item], batch_size: int = defaults.SCAN_BATCH_SIZE,
                 small_first: bool = True) -> list[Sequence[Item]]:
    """A folder's new items in the batches a scan reads and commits. A small first batch gets
    both stages going sooner; a folder that a helper process reads after another one does
    not need it (it has its first batch ready when the scan comes to it)."""
    if not items:
        return []
    first = min(batch_size, defaults.SCAN_FIRST_BATCH_SIZE) if small_first else batch_size
    return [items[:first]] + [items[i:i + batch_size] for i in range(first, len(items), batch_size)]


@dataclass
class _FolderPlan:
    """One folder as a scan found it before reading it (Ingestor._plan_folder)."""

    report: FolderReport
    uidvalidity: int
    #: Where reading starts (the last UID stored, 0 to read it all), and whether the folder's
    #: state must be set to it first (the first scan, or a changed UIDVALIDITY), or marked up
    #: to date (unchanged).
    cursor: int
    set_cursor: bool
    batches: list[Sequence[Item]]
    #: Handed to the fetch helper process (a big backlog), or read on a thread.
    in_helper: bool
    #: Seconds spent finding all that (FolderReport.seconds counts them).
    plan_seconds: float


class Ingestor:
    def __init__(self, store: Store, config: Config, directory: Directory,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 on_batch: Callable[[FolderReport], None] | None = None) -> None:
        self.store = store
        self.config = config
        self.directory = directory
        self.stop = stop or threading.Event()
        self.progress = progress or LogProgress()
        #: Test and metrics hook, called after each committed batch.
        self.on_batch = on_batch
        self.writer = BatchWriter(store, directory)
        #: What a scan of a mailbox read before it was interrupted, and what find_unreadable
        #: read, added to that mailbox's folder reports when its scan ends.
        self.carried_reports: dict[str, list[FolderReport]] = {}

    # --- scanning ----------------------------------------------------------------------------
    def scan(self, mailboxes: list[MailboxConfig] | None = None) -> ScanReport:
        """Scan every configured mailbox; one failing mailbox does not stop the others."""
        report = ScanReport()
        for mb in mailboxes if mailboxes is not None else self.config.settings.mailboxes:
            if self.stop.is_set():
                break
            searches = 0
            while True:
                try:
                    with open_source(mb) as source:
                        source.stop = self.stop  # a stop request ends a FETCH still being answered
                        report.folders += merge_reports(self.scan_mailbox(mb, source, report.errors),
                                                        self.carried_reports.pop(mb.name, []))
                except ReadInterrupted as exc:
                    # Lost mid-folder. If one message makes the server drop the connection, every
                    # scan would stop at it for ever: look for it, record it, and scan again.
                    failed: MailboxError = exc
                    if searches < defaults.UNREADABLE_SEARCHES_PER_SCAN and not self.stop.is_set():
                        searches += 1
                        log.warning("%s; reading the folder's next messages in halves, each on a new connection, "
                                    "in case one message is what the server cannot send", exc)
                        try:
                            self.carried_reports.setdefault(mb.name, []).append(
                                find_unreadable(self, mb, exc.folder))
                            continue
                        except MailboxError as again:
                            failed = MailboxError(f"{exc.detail}; then, looking for a message the server cannot "
                                                  f"send: {again.detail}", where=exc.where)
                    self._mailbox_failed(mb, failed, report)
                except MailboxError as exc:
                    self._mailbox_failed(mb, exc, report)
                break
        return report

    def _mailbox_failed(self, mb: MailboxConfig, exc: MailboxError, report: ScanReport) -> None:
        log.error("%s", exc)
        report.errors.append(str(exc))
        record_error(self.store, mb.name, self._known_folders(mb), str(exc))
        self.carried_reports.pop(mb.name, None)

    def _known_folders(self, mb: MailboxConfig) -> list[str]:
        """The folders of `mb` the config asks for (see configured_folders)."""
        if not any(is_pattern(f) for f in mb.folders):
            return list(mb.folders)
        try:
            rows = folder_states(self.store, mb.name)
        except (StoreError, OperationalError, DBAPIError):
            return [f for f in mb.folders if not is_pattern(f)]  # the error is logged and reported either way
        return list(configured_folders(mb, rows))

    def scan_mailbox(self, mb: MailboxConfig, source: MailboxSource,
                     errors: list[str] | None = None) -> list[FolderReport]:
        helper = FetchHelper(mb, self.directory)  # started only if a folder has a big backlog
        try:
            return self._scan_folders(mb, source, helper, errors)
        finally:
            helper.close()

    def _scan_folders(self, mb: MailboxConfig, source: MailboxSource, helper: FetchHelper,
                      errors: list[str] | None) -> list[FolderReport]:
        out = []
        folders = source.folders_to_scan(mb.folders)
        sync_matched(self.store, mb, folders)
        # One folder ahead: the next folder is looked at (and, if its backlog is big, handed
        # to the helper process) before this one is stored, so that the helper reads its
        # first batches while the last ones of this folder are stored.
        plans = {0: self._plan_or_error(source, mb.name, folders[0], mb.batch_size, helper)} if folders else {}
        for k, folder in enumerate(folders):
            if self.stop.is_set():
                break
            plan = plans.pop(k)
            if k + 1 < len(folders):
                plans[k + 1] = self._plan_or_error(source, mb.name, folders[k + 1], mb.batch_size, helper)
            try:
                if isinstance(plan, BaseException):
                    raise plan
                out.append(self._read_folder(plan, source, helper))
            except FolderMissingError as exc:
                # A deleted or renamed folder must not stop the others.
                log.error("%s", exc)
                record_error(self.store, mb.name, [folder], str(exc))
                if errors is None:
                    raise
                errors.append(str(exc))
            except (OSError, EOFError, imaplib.IMAP4.error) as exc:
                if source.gave_up:  # we ended the connection: a deadline or a stop, not a lost server
                    raise MailboxError(source.gave_up, where=f"mailbox {mb.name!r}") from exc
                lost = ReadInterrupted(f"connection lost while reading "
                                       f"{folder!r}: {exc or type(exc).__name__}; committed batches "
                                       "are kept, the next scan resumes", where=f"mailbox {mb.name!r}",
                                       folder=folder)
                # What was stored before the loss still counts in this scan's report.
                self.carried_reports.setdefault(mb.name, []).extend(
                    [*out, *([] if isinstance(plan, BaseException) else [plan.report])])
                raise lost from exc
        return out

    def _plan_or_error(self, source: MailboxSource, mailbox: str, folder: str, batch_size: int,
                       helper: FetchHelper | None) -> _FolderPlan | Exception:
        """_plan_folder, or the error it raised, raised again when the folder's turn comes:
        looking ahead must not fail the folder in hand (a missing folder, a lost connection, a
        store that cannot be written fail where they did before, after that folder)."""
        try:
            return self._plan_folder(source, mailbox, folder, batch_size, helper)
        except Exception as exc:  # noqa: BLE001 - every error is raised again, as it is
            return exc

    def scan_folder(self, source: MailboxSource, mailbox: str, folder: str,
                    batch_size: int = defaults.SCAN_BATCH_SIZE,
                    helper: FetchHelper | None = None) -> FolderReport:
        """Store what is new in one folder. With a `helper`, a big backlog is fetched and
        parsed by a helper process that opens its own connection."""
        return self._read_folder(self._plan_folder(source, mailbox, folder, batch_size, helper), source, helper)

    def _plan_folder(self, source: MailboxSource, mailbox: str, folder: str, batch_size: int,
                     helper: FetchHelper | None) -> _FolderPlan:
        """What a scan of one folder will read: its state, its new items in batches; a big
        backlog is handed to the `helper` at once (see FetchHelper.submit)."""
        t0 = time.perf_counter()
        rep = FolderReport(mailbox, folder)
        st = folder_state(self.store, mailbox, folder)
        status = source.folder_status(folder)
        last = st.last_uid
        if st.uidvalidity is not None and st.uidvalidity != status.uidvalidity:
            log.warning("%s/%s: UIDVALIDITY changed (%s -> %s): re-reading the folder; "
                        "messages already stored are not duplicated",
                        mailbox, folder, st.uidvalidity, status.uidvalidity)
            last = 0
            rep.uidvalidity_reset = True
        elif st.uidvalidity is not None and status.uidnext is not None and status.uidnext - 1 <= last:
            rep.unchanged = True
            return _FolderPlan(rep, status.uidvalidity, last, True, [], False, time.perf_counter() - t0)
        # Nothing is written here: a scan stopped before it reads this folder leaves its state
        # as it was (a folder never read stays stale for /healthz; a changed UIDVALIDITY is
        # found again next time).
        items = source.new_items(folder, last)
        rep.new = len(items)
        # Two stages: while batch k is written to the store, batch k+1 is fetched, parsed and
        # classified, on a helper thread or, for a big backlog, in a helper process.
        # (A big backlog that fills more than its first batch.)
        in_helper = (helper is not None and len(items) > min(batch_size, defaults.SCAN_FIRST_BATCH_SIZE)
                     and len(items) >= defaults.SCAN_PROCESS_MIN_MESSAGES)
        if in_helper:
            assert helper is not None
            batches = scan_batches(items, batch_size, small_first=not helper.busy)
            helper.submit(folder, batches)
        else:
            batches = scan_batches(items, batch_size)
        first = rep.uidvalidity_reset or st.uidvalidity is None
        return _FolderPlan(rep, status.uidvalidity, last, first, batches, in_helper, time.perf_counter() - t0)

    def _read_folder(self, plan: _FolderPlan, source: MailboxSource, helper: FetchHelper | None) -> FolderReport:
        t0 = time.perf_counter() - plan.plan_seconds
        rep, mailbox, folder = plan.report, plan.report.mailbox, plan.report.folder
        if plan.set_cursor:  # unchanged, or read from `cursor` on (the first time, or anew)
            mark_ok(self.store, mailbox, folder, plan.uidvalidity, plan.cursor)
        if rep.unchanged:
            rep.seconds = time.perf_counter() - t0
            return rep
        batches = plan.batches
        self.progress.start(mailbox, folder, rep.new)
        if plan.in_helper:
            assert helper is not None
            prepared = helper.prepared(folder, batches)
        else:
            prepared = self._prepared_in_thread(source, mailbox, folder, batches)
        try:
            with collected_per_batch() as collect:
                for batch in batches:
                    if self.stop.is_set():
                        rep.interrupted = True
                        log.info("%s/%s: stop requested; committed up to here, the next scan resumes",
                                 mailbox, folder)
                        break
                    self.writer.write_isolating(next(prepared), mailbox, folder, plan.uidvalidity, batch, rep)
                    collect()
                    self.progress.advance(len(batch))
                    if self.on_batch:
                        self.on_batch(rep)
        finally:
            prepared.close()  # ends the helper: no FETCH left running on a connection in use
            self.progress.finish()
        if not rep.interrupted:
            mark_ok(self.store, mailbox, folder, plan.uidvalidity, None)
        rep.seconds = time.perf_counter() - t0
        return rep

    def _prepared_in_thread(self, source: MailboxSource, mailbox: str, folder: str,
                            batches: list[Sequence[Item]]) -> Generator[PreparedBatch, None, None]:
        """Prepared batches from a helper thread, one batch ahead. The mailbox connection is
        only ever used by that one thread meanwhile."""
        stage = prepared_batches(source, folder, batches, self.directory, mailbox)
        pool = ThreadPoolExecutor(1, thread_name_prefix="carewatch-fetch")
        try:
            pending = pool.submit(next, stage) if batches else None
            for k in range(len(batches)):
                assert pending is not None
                current = pending.result()
                pending = pool.submit(next, stage) if k + 1 < len(batches) else None
                yield current
        finally:
            # Never leave a FETCH running on the connection the caller is about to reuse or close.
            pool.shutdown(wait=True, cancel_futures=True)
            stage.close()

