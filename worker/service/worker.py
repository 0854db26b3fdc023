"""`carewatch run`: the long-running worker.

APScheduler 3.x runs, from config (jobs live in memory; replicas coordinate through the
database, never through a shared job store):
  * a scan per mailbox every N minutes (coalesced, never overlapping itself, a missed run runs
    once);
  * the check (evaluation, alerts, delivery) after a scan that stored mail, when the last
    check said something falls due, and at least every 10 minutes;
  * IMAP IDLE per mailbox where the server supports it, as a wake-up signal for that scan
    (service/idle.py);
  * outbox delivery every minute (retries with backoff);
  * the weekly digest on a cron in the firm's time zone.
Failures are logged, counted and retried with capped exponential backoff without stopping the
other mailboxes or jobs. The first SIGTERM finishes the batch in hand, commits and exits 0; a
second exits at once.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select
from sqlmodel import col

from .. import __version__
from ..alerts.check import AlertLifecycle
from ..alerts.lifecycle import CLOSED
from ..config import Config, MailboxConfig
from ..digest.schedule import digest_trigger, last_digest_time
from ..errors import CarewatchError, MailboxAuthError
from ..ingest.folders import (
    folder_states,
    mailboxes_listed,
    matches_no_folder,
    unmatched_patterns,
)
from ..ingest.reports import ScanReport
from ..ingest.run import prepare_store, replies_not_seen
from ..ingest.scan import Ingestor
from ..mailbox.base import is_pattern
from ..notify.outbox import deliver
from ..notify.transport import make_transport
from ..retry import capped_backoff
from ..store.locks import exclusive
from ..store.models import Alert, OutboxEmail
from . import idle
from .health import health
from .metrics import HealthServer, Metrics

log = logging.getLogger(__name__)

#: Capped exponential backoff after failures, in seconds.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 600.0
DELIVERY_INTERVAL_SECONDS = 60.0
#: How often the worker asks whether a check (an evaluation of every client) is due.
CHECK_POLL_SECONDS = 60.0
#: A check runs after a scan that stored mail, when the last one said something changes by
#: time alone (a wait crossing its window, an escalation or a snooze falling due), and at least
#: this often for what it does not foresee to the minute (silence, going quiet, expiry), which
#: counts in days.
CHECK_MAX_INTERVAL = timedelta(minutes=10)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def backoff_seconds(failures: int) -> float:
    return capped_backoff(failures, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)


class Worker:
    def __init__(self, config: Config, metrics_port: int | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.store, self.directory = prepare_store(config)
        self.scheduler = BackgroundScheduler(
            timezone=self.settings.calendar.timezone,
            executors={"default": ThreadPoolExecutor(max_workers=max(4, len(self.settings.mailboxes) + 3))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.failures: dict[str, int] = {}
        # replies_not_seen: when it was last asked and last logged (monotonic), and its answer.
        self.replies_checked_at = self.replies_logged_at = -86400.0
        self.replies_warning: str | None = None
        #: A delivery failure no retry fixes by itself (login, TLS, sender refused), until a
        #: delivery succeeds: on /healthz and as carewatch_delivery_alarm.
        self.delivery_alarm: str | None = None
        self.not_before: dict[str, float] = {}
        #: When the next check is due without new mail (UTC); at once on start.
        self.check_due = utcnow()
        #: Per mailbox, when its last scan failed and why, until a scan succeeds (/healthz).
        self.scan_error: dict[str, tuple[str, str]] = {}
        #: Per mailbox, the folder patterns its last scan found matching no folder.
        self.unmatched: dict[str, list[str]] = {}
        self.signals = 0
        port = self.settings.service.metrics_port if metrics_port is None else metrics_port
        self.health_server = HealthServer(self.settings.service.metrics_host, port, self.metrics, self.health) \
            if port >= 0 else None
        self.idle_threads: list[threading.Thread] = []

    # --- jobs ---------------------------------------------------------------------------------
    def scan_job(self, name: str) -> None:
        mb = next(m for m in self.settings.mailboxes if m.name == name)
        if self.stop.is_set() or time.monotonic() < self.not_before.get(name, 0.0):
            return
        scanned: ScanReport | bool | None = None  # None: not tried; False: failed and reported
        try:
            with exclusive(self.store, f"scan:{name}") as mine:
                if not mine:
                    log.debug("mailbox %s is being scanned by another replica", name)
                    return
                scanned = self._scan(mb)
        except CarewatchError as exc:  # the store, at the lock: a database that went away
            if scanned is not False:  # (a scan that failed on it was reported once already)
                self._scan_failed(mb, exc)
            return
        if not isinstance(scanned, ScanReport):
            return
        if not self.stop.is_set() and (scanned.stored or utcnow() >= self.check_due):
            self.check_job()

    def check_if_due(self) -> None:
        """The check, when time alone may have changed its outcome since the last one."""
        if not self.stop.is_set() and utcnow() >= self.check_due:
            self.check_job()

    def _scan(self, mb: MailboxConfig) -> ScanReport | bool:
        """One scan of `mb`, with its metrics and notes; its report, or False if it failed (and
        was reported)."""
        name = mb.name
        t0 = time.perf_counter()
        try:
            rep = Ingestor(self.store, self.config, self.directory, stop=self.stop).scan([mb])
            if rep.errors:
                raise CarewatchError("; ".join(rep.errors))
        except CarewatchError as exc:
            self._scan_failed(mb, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug of ours: reported, counted, backed off, never a crash loop
            log.exception("scan of %s failed on an unexpected error (a bug: please report it)", name)
            self._scan_failed(mb, exc)
            return False
        finally:
            self.metrics.scan_duration.labels(name).observe(time.perf_counter() - t0)
        self.failures[name] = 0
        self.scan_error.pop(name, None)
        self.not_before.pop(name, None)
        self.metrics.last_scan_ok.labels(name).set(time.time())
        self._note_unmatched(mb)
        stored = rep.stored
        self.metrics.ingested.labels(name).inc(stored)
        self.metrics.skipped.labels(name).inc(sum(f.skipped for f in rep.folders))
        if stored:
            log.info("mailbox %s: %d new message(s)", name, stored)
            self._warn_if_replies_not_seen()
        return rep

    def _note_unmatched(self, mb: MailboxConfig) -> None:
        """Warn when a folder pattern comes to match no folder on the server (at the first scan
        that finds it so, not at every scan), and say when it matches again."""
        if not any(is_pattern(f) for f in mb.folders):
            return
        try:
            now = unmatched_patterns(mb, folder_states(self.store, mb.name), mailboxes_listed(self.store))
        except Exception:  # noqa: BLE001 - a diagnostic must never fail a scan
            log.debug("could not check the folder patterns of %s", mb.name, exc_info=True)
            return
        before = self.unmatched.get(mb.name, [])
        self.unmatched[mb.name] = now
        if now and now != before:
            log.warning("mailbox %s: %s", mb.name, matches_no_folder(now))
        elif before and not now:
            log.info("mailbox %s: every folder pattern matches a folder on the server again", mb.name)

    def _warn_if_replies_not_seen(self) -> None:
        """After a scan that stored mail: whether the firm's replies are seen. A warning in the
        log once a day at most; the gauge and /healthz's `warnings` as long as it lasts. While
        it lasts, every such scan checks again, so that a fix shows at once."""
        if self.replies_warning is None and time.monotonic() < self.replies_checked_at + 86400:
            return
        self.replies_checked_at = time.monotonic()
        try:
            missing = replies_not_seen(self.store, utcnow())
        except Exception:  # noqa: BLE001 - a diagnostic must never fail a scan
            log.debug("could not check whether replies are seen", exc_info=True)
            return
        if missing and time.monotonic() >= self.replies_logged_at + 86400:
            self.replies_logged_at = time.monotonic()
            log.warning("%s", missing)
        self.replies_warning = missing
        self.metrics.replies_not_seen.set(1 if missing else 0)

    def _scan_failed(self, mb: MailboxConfig, exc: Exception) -> None:
        n = self.failures.get(mb.name, 0) + 1
        self.failures[mb.name] = n
        self.scan_error[mb.name] = (f"{utcnow():%Y-%m-%dT%H:%M:%SZ}", str(exc) if isinstance(exc, CarewatchError)
                                    else f"{type(exc).__name__}: {exc}")
        self.metrics.scan_errors.labels(mb.name).inc()
        wait = backoff_seconds(n)
        if isinstance(exc, MailboxAuthError):
            wait = BACKOFF_CAP_SECONDS  # a wrong password will not fix itself in seconds
        log.error("scan of %s failed (%d in a row): %s; next try in %.0fs at the earliest", mb.name, n, exc, wait)
        # The job skips its runs until then. (It must not reschedule itself: APScheduler's
        # shutdown holds the job store lock while it waits for running jobs.)
        self.not_before[mb.name] = time.monotonic() + wait

    def check_job(self) -> None:
        if self.stop.is_set():
            return
        try:
            with exclusive(self.store, "check") as mine:
                if mine:
                    now = utcnow()
                    rep = AlertLifecycle(self.store, self.config).check(now, deliver=False)
                    self.check_due = min(rep.next_check or now + CHECK_MAX_INTERVAL, now + CHECK_MAX_INTERVAL)
                    if rep.held:
                        log.info("quiet hours: %d alert(s) held until %s UTC", len(rep.held),
                                 f"{rep.hold_until:%Y-%m-%d %H:%M}" if rep.hold_until else "the next opening")
                    if rep.new or rep.escalated or rep.resolved or rep.expired:
                        log.info("alerts: %d new, %d escalated, %d resolved, %d expired unanswered; "
                                 "%d email(s) queued", len(rep.new), len(rep.escalated), len(rep.resolved),
                                 len(rep.expired), len(rep.emails))
                else:  # another replica (or a `carewatch check`) is checking: it keeps the time
                    self.check_due = utcnow() + CHECK_MAX_INTERVAL
            self.deliver_job()  # which sets the gauges, the open alerts' included
        except CarewatchError as exc:
            self.metrics.job_errors.labels("check").inc()
            log.error("check failed: %s", exc)

    def deliver_job(self) -> None:
        try:
            with exclusive(self.store, "outbox") as mine:
                rep = deliver(self.store, make_transport(self.config), self.settings.notify.from_address, utcnow(),
                              self.settings.notify.give_up_delta) if mine else None
            if rep is not None:  # (None: another replica or command is delivering)
                for _ in rep.sent:
                    self.metrics.deliveries.labels("email").inc()
                if rep.errors:
                    self.metrics.delivery_errors.inc(len(rep.errors))
                if rep.alarm:
                    self.delivery_alarm = f"delivery: {rep.alarm}"
                elif rep.sent:
                    self.delivery_alarm = None
                self.metrics.delivery_alarm.set(1 if self.delivery_alarm else 0)
            self.refresh_gauges()
        except CarewatchError as exc:
            self.metrics.job_errors.labels("deliver").inc()
            log.error("delivery failed: %s", exc)

    def digest_job(self, at: datetime | None = None) -> None:
        from ..digest.build import queue_digests

        try:
            with exclusive(self.store, "digest") as mine:
                if mine:
                    queued = queue_digests(self.store, self.config, at or utcnow())
                    log.info("digest: %d queued", len(queued))
                    self.metrics.last_digest.set(time.time())
            self.deliver_job()
        except CarewatchError as exc:
            self.metrics.job_errors.labels("digest").inc()
            log.error("digest failed: %s", exc)

    def catch_up_digest(self, now: datetime | None = None) -> bool:
        """Jobs live in memory: a worker that was down at the digest's time would skip that
        week's digest. At start, the latest digest time of the past week is caught up, as of
        that time (the evaluation replays any moment), unless it went out already. Digests
        are one per partner per week (their Message-ID), so this never sends one twice."""
        from ..digest.build import digest_message_id

        at = last_digest_time(self.settings, now or utcnow())
        if at is None or not self.settings.partners:
            return False
        ids = [digest_message_id(self.config, p, at) for p in self.settings.partners]
        with self.store.session() as db:
            queued = set(db.execute(select(col(OutboxEmail.message_id))
                                    .where(col(OutboxEmail.message_id).in_(ids))).scalars())
        if len(queued) == len(ids):
            return False
        log.info("digest of %s UTC was not sent (the worker was not running): sending it now", f"{at:%Y-%m-%d %H:%M}")
        self.digest_job(at)
        return True

    def refresh_gauges(self) -> None:
        with self.store.session() as db:
            self.metrics.open_alerts.clear()
            for kind, n in db.execute(select(col(Alert.kind), func.count()).where(col(Alert.state).notin_(CLOSED))
                                      .group_by(col(Alert.kind))).all():
                self.metrics.open_alerts.labels(kind).set(n)
            by_status = select(col(OutboxEmail.status), func.count()).group_by(col(OutboxEmail.status))
            counts = dict(db.execute(by_status).all())
        # Every time, zero included: a drained backlog shows 0, not its last non-zero value.
        self.metrics.outbox_backlog.set(counts.get("pending", 0))
        self.metrics.outbox_failed.set(counts.get("failed", 0))

    # --- IDLE -----------------------------------------------------------------------------------
    def idle_loop(self, mb: MailboxConfig) -> None:
        idle.watch(mb, self.stop, self.wake, backoff_seconds)

    def wake(self, name: str) -> None:
        if self.stop.is_set():
            return
        job = self.scheduler.get_job(f"scan:{name}")
        if job is not None:
            self.not_before.pop(name, None)  # the server is back and talking: try now
            job.modify(next_run_time=datetime.now(job.trigger.timezone))

    # --- health ---------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        return health(self.store, self.settings, utcnow(), self.scan_error,
                      [self.replies_warning, self.delivery_alarm])

    # --- running ----------------------------------------------------------------------------------
    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("received %s: finishing the batch in hand, then stopping (send again to exit at once)",
                     signal.Signals(signum).name)
            self.stop.set()
        else:
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        # `kill -USR1` prints every thread's stack to stderr: for "why is it stuck?" in production.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def schedule(self) -> None:
        now = datetime.now(self.scheduler.timezone)
        for mb in self.settings.mailboxes:
            seconds = mb.scan_interval_minutes * 60
            self.scheduler.add_job(self.scan_job, IntervalTrigger(seconds=seconds), args=[mb.name],
                                   id=f"scan:{mb.name}", name=f"scan {mb.name}", next_run_time=now,
                                   misfire_grace_time=max(1, int(seconds)))
        self.scheduler.add_job(self.deliver_job, IntervalTrigger(seconds=DELIVERY_INTERVAL_SECONDS), id="deliver",
                               misfire_grace_time=int(DELIVERY_INTERVAL_SECONDS))
        self.scheduler.add_job(self.check_if_due, IntervalTrigger(seconds=CHECK_POLL_SECONDS), id="check",
                               misfire_grace_time=int(CHECK_POLL_SECONDS))
        self.scheduler.add_job(self.digest_job, digest_trigger(self.settings), id="digest", misfire_grace_time=3600)
        self.scheduler.add_job(self.catch_up_digest, id="digest-catch-up", next_run_time=now)

    def log_start(self) -> None:
        """What this worker will do, for the operator reading the log of a fresh start."""
        s = self.settings
        n = s.notify
        delivery = (f"SMTP {n.smtp.host}:{n.smtp.server_port}" if n.transport == "smtp" and n.smtp
                    else f".eml files in {n.dir}")
        log.info("carewatch %s running: %d mailbox(es), store %s, delivery by %s; digest %s %02d:%02d %s",
                 __version__, len(s.mailboxes), self.store.url, delivery, s.digest.day_of_week,
                 s.digest.hour, s.digest.minute, s.calendar.timezone)
        for mb in s.mailboxes:
            push = " and on IDLE" if mb.kind == "imap" and mb.idle else ""
            log.info("mailbox %s (%s %s): folders %s, scanned every %g min%s", mb.name, mb.kind, mb.where,
                     ", ".join(mb.folders), mb.scan_interval_minutes, push)

    def run(self) -> int:
        self.install_signal_handlers()
        if self.health_server:
            self.health_server.start()
        self.schedule()
        self.scheduler.start()
        for mb in self.settings.mailboxes:
            if mb.kind == "imap" and mb.idle:
                t = threading.Thread(target=self.idle_loop, args=[mb], name=f"idle:{mb.name}", daemon=True)
                t.start()
                self.idle_threads.append(t)
        self.log_start()
        while not self.stop.wait(1.0):
            pass
        # shutdown(wait=True) does not interrupt a running job: the jobs themselves see the stop
        # flag between batches and return after committing.
        self.scheduler.shutdown(wait=True)
        for t in self.idle_threads:
            t.join(timeout=idle.IDLE_POLL_SECONDS * 3)
        if self.health_server:
            self.health_server.stop()
        self.store.dispose()
        log.info("carewatch stopped cleanly")
        return 0
