"""`carewatch run` end to end: a subprocess against real Dovecot, aiosmtpd and the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import maildir_config, write_config
from servers import Dovecot, SmtpSink, free_port

from worker.synth import build_message

ALWAYS_OPEN = "{ " + ", ".join(f'{d} = "00:00-24:00"' for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")) + " }"


def service_env(smtp: SmtpSink) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CAREWATCH__NOTIFY__TRANSPORT": '"smtp"',
            "CAREWATCH__NOTIFY__QUIET_HOURS": "false",
            "CAREWATCH__POLICY__REPLY_WITHIN": '"1m"',
            "CAREWATCH__CALENDAR__HOURS": ALWAYS_OPEN,
            "CAREWATCH_LOG_LEVEL": "INFO",
        }
    )
    return env


def service_config(tmp_path: Path, db_url: str, dovecot: Dovecot, smtp: SmtpSink, interval: float = 0.05) -> Path:
    return write_config(
        tmp_path,
        db_url,
        dovecot,
        mailbox_extra=f"scan_interval_minutes = {interval}\nidle = true\n",
        extra=f'\n[notify.smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "none"\nallow_plaintext = true\n',
    )


def alerts(smtp: SmtpSink) -> list[tuple[str, list[str], bytes]]:
    """The alert emails the sink received (not the weekly digest a starting worker catches up)."""
    return [m for m in smtp.messages if b"X-Carewatch-Kind: digest" not in m[2]]


class Running:
    def __init__(self, config: Path, smtp: SmtpSink, name: str = "w") -> None:
        self.config = config
        self.port = free_port()
        self.log = config.parent / f"{name}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "--config",
                str(config),
                "--json-logs",
                "run",
                "--metrics-port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
            env=service_env(smtp),
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def wait_for(cond, timeout: float = 30, what: str = "condition", logs=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{logs()[-3000:]}" if logs else ""))


def question(n: int, sender: str = "alice@acme.example") -> bytes:
    return build_message(
        sender=sender,
        to=["shared@firm.example"],
        subject=f"Question {n}",
        date=datetime.now(UTC) - timedelta(minutes=30),
        message_id=f"<svc{n}.{time.time_ns()}@acme>",
    )


@pytest.mark.private_dovecot
def test_the_worker_alerts_survives_a_dovecot_restart_and_stops_cleanly(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink
) -> None:
    w = Running(service_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, smtp), smtp)
    try:
        wait_for(lambda: w.get("/healthz")[0] == 200, what="healthz 200", logs=w.logs)
        health = json.loads(w.get("/healthz")[1])
        assert health["store"] == "ok" and health["mailboxes"]["shared"]["ok"]
        # The start says what this worker will do.
        assert f"delivery by SMTP 127.0.0.1:{smtp.port}; digest mon 07:00 Europe/London" in w.logs()
        assert f"mailbox shared (imap 127.0.0.1:{dovecot.port}): folders INBOX, Sent, scanned every" in w.logs()
        dovecot.append([question(1)])
        wait_for(lambda: alerts(smtp), timeout=20, what="the first alert", logs=w.logs)
        assert alerts(smtp)[0][1] == ["olivia@firm.example"]
        # The IMAP server goes away and comes back: the worker logs, backs off and carries on.
        dovecot.stop(kill=True)
        wait_for(
            lambda: "connection" in w.logs().lower() or "cannot connect" in w.logs(),
            timeout=20,
            what="the worker to notice",
            logs=w.logs,
        )
        dovecot.start()
        dovecot.append([question(2, sender="gina@globex.example")])
        wait_for(lambda: len(alerts(smtp)) >= 2, timeout=60, what="the alert after the restart", logs=w.logs)
        assert alerts(smtp)[1][1] == ["oscar@firm.example"]
        status, metrics = w.get("/metrics")
        assert status == 200 and 'carewatch_messages_ingested_total{mailbox="shared"}' in metrics
        assert "carewatch_scan_errors_total" in metrics and "carewatch_open_alerts" in metrics
        assert w.stop() == 0
        assert "stopped cleanly" in w.logs()
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    # Nothing lost: every queued email was delivered exactly once.
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{tmp_path / 'cw.db'}")
    with eng.connect() as c:
        statuses = [r[0] for r in c.execute(text("SELECT status FROM outbox WHERE kind = 'alert'"))]
        messages = c.execute(text("SELECT count(*) FROM message")).scalar()
    assert statuses == ["sent", "sent"] and len(alerts(smtp)) == 2 and messages == 2


def test_a_second_sigterm_exits_at_once(tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink) -> None:
    w = Running(service_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, smtp), smtp)
    try:
        wait_for(lambda: w.get("/healthz")[0] == 200, what="healthz 200", logs=w.logs)
        w.proc.send_signal(signal.SIGTERM)
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(10) in (0, 1)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


@pytest.mark.private_dovecot
def test_health_is_not_ready_while_the_mailbox_cannot_be_scanned(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink
) -> None:
    dovecot.stop()
    w = Running(service_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, smtp), smtp)
    try:
        def named() -> bool:
            code, body = w.get("/healthz")
            return code == 503 and "last_error" in json.loads(body)["mailboxes"]["shared"]

        wait_for(named, what="healthz naming the error", logs=w.logs)
        code, body = w.get("/healthz")
        shared = json.loads(body)["mailboxes"]["shared"]
        assert code == 503 and shared["ok"] is False
        assert "cannot connect" in shared["last_error"]["error"] and shared["last_error"]["at"].endswith("Z")
        # Each stale folder says why, from the store (what any replica's /healthz reads), even
        # though no scan of it ever succeeded.
        assert sorted(shared["folder_errors"]) == shared["stale_folders"] == ["INBOX", "Sent"]
        assert all("cannot connect" in e for e in shared["folder_errors"].values())
        # The container's HEALTHCHECK reads the same answer on the port the config names.
        env = {**os.environ, "CAREWATCH_CONFIG": str(w.config), "CAREWATCH__SERVICE__METRICS_PORT": str(w.port)}
        hc = subprocess.run([sys.executable, "-m", "worker.service.healthcheck"], env=env, capture_output=True,
                            text=True)
        assert hc.returncode == 1 and "cannot connect" in hc.stdout
        assert w.stop() == 0
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


@pytest.mark.postgres
def test_two_replicas_on_postgres_never_duplicate(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, pg_url: str
) -> None:
    db_url = pg_url
    cfg = service_config(tmp_path, db_url, dovecot, smtp)
    dovecot.append(
        [
            question(k, sender=s)
            for k, s in enumerate(
                ["alice@acme.example", "bob@acme.example", "gina@globex.example", "ivan@firm.example"] * 3
            )
        ]
    )
    from sqlalchemy import create_engine, text

    eng = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))

    def stored() -> int:
        with eng.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM message")).scalar_one())

    a, b = Running(cfg, smtp, "a"), Running(cfg, smtp, "b")
    try:
        wait_for(
            lambda: a.get("/healthz")[0] == 200 and b.get("/healthz")[0] == 200,
            timeout=40,
            what="both ready",
            logs=lambda: a.logs() + b.logs(),
        )
        wait_for(lambda: len(smtp.messages) >= 2, timeout=40, what="alerts", logs=lambda: a.logs() + b.logs())
        for k in range(12, 20):
            dovecot.append([question(k)])
        # Until the later questions are stored and alerted on, however slow this machine, then
        # two scan intervals more with both replicas competing (a duplicate would show there).
        wait_for(lambda: stored() == 20 and len(smtp.messages) >= 3, timeout=60, what="the later questions",
                 logs=lambda: a.logs() + b.logs())
        time.sleep(6)
        assert a.stop() == 0 and b.stop() == 0
    finally:
        for w in (a, b):
            if w.proc.poll() is None:
                w.proc.kill()
    with eng.connect() as c:
        n_alerts = c.execute(text("SELECT count(*) FROM alert")).scalar_one()
        n_alert_keys = c.execute(text("SELECT count(DISTINCT key) FROM alert")).scalar_one()
        outbox = c.execute(text("SELECT message_id, status, kind FROM outbox")).all()
    eng.dispose()
    assert stored() == 20
    assert n_alerts == n_alert_keys and n_alerts >= 4
    received = [raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, _, raw in smtp.messages]
    assert sorted(received) == sorted(m for m, _, _ in outbox)  # every email once, none twice
    assert all(st == "sent" for _, st, _ in outbox)
    # Olivia and Oscar first; Olivia again for the later questions. (And the week's digest, which
    # both replicas catch up at start when its hour has passed: once.)
    assert [k for _, _, k in outbox].count("alert") == 3 and [k for _, _, k in outbox].count("digest") <= 1


def test_idle_sees_new_mail_long_before_the_scan_interval(tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink) -> None:
    # A 10-minute interval: only IMAP IDLE can bring the alert within seconds.
    w = Running(service_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, smtp, interval=10), smtp)
    try:
        wait_for(lambda: w.get("/healthz")[0] == 200, what="healthz 200", logs=w.logs)
        time.sleep(1.5)  # let the IDLE connection settle after the first scan
        t0 = time.monotonic()
        dovecot.append([question(1)])
        wait_for(lambda: smtp.messages, timeout=30, what="an alert woken by IDLE", logs=w.logs)
        assert time.monotonic() - t0 < 30
        assert w.stop() == 0
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


def test_the_digest_is_scheduled_weekly_in_the_firms_time_zone(tmp_path: Path) -> None:
    from worker.config import load_config
    from worker.service.worker import Worker

    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=tmp_path / "md"))
    w = Worker(cfg, metrics_port=-1)
    w.schedule()
    w.scheduler.start(paused=True)  # pending jobs get their defaults (coalesce, ...) at start
    job = w.scheduler.get_job("digest")
    trigger = job.trigger
    assert str(trigger.timezone) == "Europe/London"
    fields = {f.name: str(f) for f in trigger.fields}
    assert fields["day_of_week"] == "mon" and fields["hour"] == "7" and fields["minute"] == "0"
    scan = w.scheduler.get_job("scan:shared")
    assert scan.coalesce and scan.max_instances == 1
    w.scheduler.shutdown(wait=False)
    w.store.dispose()


def test_a_metrics_port_that_is_taken_is_a_clear_configuration_error(tmp_path: Path) -> None:
    import socket

    cfg = maildir_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "worker.cli", "--config", str(cfg), "run", "--metrics-port",
                            str(port)], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, CAREWATCH__SERVICE__METRICS_HOST='"127.0.0.1"', COLUMNS="300"))
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot serve /healthz and /metrics on 127.0.0.1:{port}: Address already in use" in r.stderr


def test_metrics_can_be_turned_off_in_the_config(tmp_path: Path) -> None:
    # -1 turned them off on the command line only; the config refused it (ge=0).
    from worker.config import load_config
    from worker.service.worker import Worker

    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=tmp_path / "md")
    cfg_path.write_text(cfg_path.read_text() + "\n[service]\nmetrics_port = -1\n")
    cfg = load_config(cfg_path)
    w = Worker(cfg)
    try:
        assert w.health_server is None
    finally:
        w.store.dispose()


def test_the_worker_evaluates_after_new_mail_and_when_time_is_due_not_after_every_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import maildir_config

    from worker.alerts.check import AlertLifecycle
    from worker.config import load_config
    from worker.service.worker import Worker, utcnow

    raw = build_message(sender="alice@acme.example", to=["shared@firm.example"], subject="Question",
                        date=datetime.now(UTC) - timedelta(minutes=5), message_id="<w1@acme.example>")
    cfg = load_config(maildir_config(tmp_path, [raw]))
    checks: list[datetime] = []
    real = AlertLifecycle.check

    def counted(self: AlertLifecycle, now: datetime, *a: object, **kw: object):  # type: ignore[no-untyped-def]
        checks.append(now)
        return real(self, now, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(AlertLifecycle, "check", counted)
    w = Worker(cfg, metrics_port=-1)
    try:
        name = cfg.settings.mailboxes[0].name
        w.scan_job(name)  # new mail: checked, and the next check is when the question's wait turns
        assert len(checks) == 1 and w.check_due > utcnow()
        w.scan_job(name)  # nothing new, nothing due: no evaluation
        w.check_if_due()
        assert len(checks) == 1
        (Path(tmp_path / "md" / "cur") / "2.host:2,").write_bytes(raw.replace(b"<w1@", b"<w2@"))
        w.scan_job(name)  # new mail: checked at once
        assert len(checks) == 2
        w.check_due = utcnow() - timedelta(seconds=1)  # time has come: the poll checks
        w.check_if_due()
        assert len(checks) == 3 and w.check_due > utcnow()
    finally:
        w.store.dispose()
