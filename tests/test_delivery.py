"""Delivery that loses and doubles nothing: long SMTP outages (on a clock the test controls),
deliveries racing each other, failed emails put back, and a digest missed while the worker was
down."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from servers import SmtpSink
from test_alerts import ALICE, BOB, GINA, SHARED, Firm, at, london

from worker.notify.outbox import deliver, enqueue, retry
from worker.notify.render import build_email
from worker.notify.transport import make_transport


def waiting_firm(tmp_path: Path, smtp: SmtpSink, db_url: str) -> Firm:
    f = Firm(tmp_path, smtp, db_url)
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.mail.add(BOB, [SHARED], "Access to the portal", london(2026, 11, 16, 9, 30))
    f.mail.add(GINA, [SHARED], "Board pack", london(2026, 11, 16, 9, 0))
    return f


def received_ids(smtp: SmtpSink) -> Counter[str]:
    import email

    return Counter(str(email.message_from_bytes(raw)["Message-ID"]) for _, _, raw in smtp.messages)


def test_a_six_hour_smtp_outage_loses_nothing_and_sends_each_email_once(tmp_path: Path, smtp: SmtpSink, db_url: str,
                                                                         request: pytest.FixtureRequest) -> None:
    firm = waiting_firm(tmp_path, smtp, db_url)
    smtp.stop()  # the server is down: connections are refused
    t0 = at(2026, 11, 17, 12, 0)
    rep = firm.check(t0)
    assert rep.delivery is not None and rep.delivery.sent == [] and rep.delivery.retrying
    queued = {r.message_id for r in firm.outbox()}
    assert len(queued) == 2  # one email per owner
    for minutes in range(10, 6 * 60 + 1, 10):  # the worker's delivery every 10 minutes, for 6 hours
        rep_d = deliver(firm.store, make_transport(firm.config), "carewatch@firm.example",
                        t0 + timedelta(minutes=minutes))
        assert rep_d.failed == [] and rep_d.sent == []
    assert all(r.status == "pending" for r in firm.outbox())
    smtp = SmtpSink(port=smtp.port).start()  # back, on the same port
    request.addfinalizer(smtp.stop)
    back = t0 + timedelta(hours=6, minutes=10)
    sent: list[str] = []
    for minutes in range(0, 61, 10):  # within the hour the backoff is capped at
        sent += deliver(firm.store, make_transport(firm.config), "carewatch@firm.example",
                        back + timedelta(minutes=minutes)).sent
    assert sorted(sent) == sorted(queued)
    assert received_ids(smtp) == Counter(dict.fromkeys(queued, 1))
    assert {r.status for r in firm.outbox()} == {"sent"}


def test_an_email_is_given_up_only_after_give_up_after_and_can_be_put_back(tmp_path: Path, smtp: SmtpSink) -> None:
    firm = waiting_firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    smtp.refuse_code = "421 4.3.2 try again later"
    t0 = at(2026, 11, 17, 12, 0)
    firm.check(t0)
    transport = make_transport(firm.config)
    # Two days and 23 hours in: still retried.
    assert deliver(firm.store, transport, "carewatch@firm.example", t0 + timedelta(days=2, hours=23)).failed == []
    late = deliver(firm.store, make_transport(firm.config), "carewatch@firm.example", t0 + timedelta(days=3, hours=1))
    assert late.failed and not late.ok
    assert any(r.status == "failed" and "421" in (r.last_error or "") for r in firm.outbox())
    smtp.refuse_code = None
    assert retry(firm.store, t0 + timedelta(days=4)) >= 1
    everything = t0 + timedelta(days=4, hours=2)
    for step in range(0, 3):
        deliver(firm.store, make_transport(firm.config), "carewatch@firm.example", everything + timedelta(hours=step))
    assert {r.status for r in firm.outbox()} == {"sent"}
    assert set(received_ids(smtp).values()) == {1}


def test_a_refused_sender_is_retried_and_said_loudly_until_fixed(tmp_path: Path, smtp: SmtpSink) -> None:
    """Every email would be refused the same way (Microsoft 365 without SendAs for the login):
    nothing is failed, the report carries the alarm the worker shows on /healthz, and the
    emails go once it is fixed."""
    firm = waiting_firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    smtp.refuse_sender = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    t0 = at(2026, 11, 17, 12, 0)
    rep = firm.check(t0)
    assert rep.delivery is not None and rep.delivery.alarm and "refuses the sender" in rep.delivery.alarm
    assert rep.delivery.failed == [] and rep.delivery.retrying and not rep.delivery.ok
    smtp.refuse_sender = None  # fixed on Monday
    later = deliver(firm.store, make_transport(firm.config), "carewatch@firm.example", t0 + timedelta(days=2))
    assert later.sent and later.alarm is None and later.ok


def _queue(firm: Firm, n: int, round_: int, now: datetime | None = None) -> list[str]:
    now = now or at(2026, 11, 17, 12, 0)
    ids = []
    with firm.store.session() as db:
        for k in range(n):
            mid = f"<race.{round_}.{k}@firm.example>"
            msg = build_email(from_addr="carewatch@firm.example", from_name="Carewatch", to=["olivia@firm.example"],
                              subject=f"race {round_}.{k}", text="x", html=None, message_id=mid,
                              date=now, headers={})
            assert enqueue(firm.store, db, msg, kind="alert", now=now)
            ids.append(mid)
        db.commit()
    return ids


def test_deliveries_racing_each_other_send_every_email_exactly_once(tmp_path: Path, smtp: SmtpSink,
                                                                     db_url: str) -> None:
    """20 rounds: two `carewatch outbox deliver` processes and two delivering threads at once,
    over the same queue. Each email is claimed before it is sent, so none goes twice."""
    firm = Firm(tmp_path, smtp, db_url)
    now = at(2026, 11, 17, 12, 5)
    env = {"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"'}
    import os

    queued: list[str] = []
    for round_ in range(20):
        queued += _queue(firm, 6, round_)
        procs = [subprocess.Popen([sys.executable, "-m", "worker.cli", "--config", str(firm.path), "outbox", "deliver",
                                   "--now", f"{now.isoformat()}Z"], env={**os.environ, **env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
        threads = [threading.Thread(target=deliver, args=(firm.store, make_transport(firm.config),
                                                          "carewatch@firm.example", now)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    got = received_ids(smtp)
    assert got == Counter(dict.fromkeys(queued, 1))  # none lost, none twice
    assert {r.status for r in firm.outbox()} == {"sent"}


def test_a_worker_down_over_the_digest_hour_sends_that_digest_once_when_it_starts(tmp_path: Path,
                                                                                  smtp: SmtpSink) -> None:
    from worker.digest.build import digest_message_id
    from worker.digest.schedule import last_digest_time
    from worker.service.worker import Worker

    firm = waiting_firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    firm.scan()
    w = Worker(firm.config, metrics_port=-1)
    try:
        partner = firm.config.settings.partners[0]
        monday = at(2026, 11, 23, 7, 0)  # the digest's default time: Monday 07:00 London
        assert last_digest_time(w.settings, at(2026, 11, 24, 9, 0)) == monday
        assert last_digest_time(w.settings, at(2026, 11, 23, 6, 59)) == monday - timedelta(days=7)
        # Stopped on Sunday, started on Tuesday: Monday's digest goes out, as of Monday 07:00.
        assert w.catch_up_digest(at(2026, 11, 24, 9, 0))
        ids = [r.message_id for r in firm.outbox() if r.kind == "digest"]
        assert ids == [digest_message_id(firm.config, partner, monday)]
        assert not w.catch_up_digest(at(2026, 11, 24, 9, 30))  # a second start that day: nothing more
        assert [r.message_id for r in firm.outbox() if r.kind == "digest"] == ids
        assert list(received_ids(smtp)).count(ids[0]) == 1
    finally:
        w.store.dispose()


def test_the_backlog_gauge_follows_every_delivery_down_to_zero(tmp_path: Path, smtp: SmtpSink) -> None:
    from worker.service.worker import Worker, utcnow

    firm = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    w = Worker(firm.config, metrics_port=-1)
    try:
        smtp.refuse_code = "451 4.3.0 try later"
        _queue(firm, 3, 0, now=utcnow())
        w.deliver_job()
        assert w.metrics.outbox_backlog._value.get() == 3
        smtp.refuse_code = None
        with firm.store.session() as db:  # due again now (the backoff is a clock we skip)
            from sqlalchemy import update

            from worker.store.models import OutboxEmail
            db.execute(update(OutboxEmail).values(next_attempt_at=at(2026, 1, 1)))
            db.commit()
        w.deliver_job()
        assert w.metrics.outbox_backlog._value.get() == 0
    finally:
        w.store.dispose()


def test_a_relay_that_trickles_is_given_up_at_the_deadline_and_retried(tmp_path: Path, smtp: SmtpSink) -> None:
    from types import SimpleNamespace

    from servers import TcpProxy

    # Replies at 40 bytes a second, in 20-byte pieces: never silent for the 1 s timeout, so
    # only an overall deadline (4 round trips x 1 s for the login) ends the conversation.
    proxy = TcpProxy(smtp.port, rate=40)
    try:
        firm = Firm(tmp_path, SimpleNamespace(port=proxy.port, messages=[]),  # type: ignore[arg-type]
                    f"sqlite:///{tmp_path / 'cw.db'}", extra="timeout_seconds = 1\n")  # in [notify.smtp]
        assert firm.config.settings.notify.smtp is not None and firm.config.settings.notify.smtp.timeout_seconds == 1
        firm.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
        rep = firm.check(at(2026, 11, 17, 12, 0))
        assert rep.delivery is not None and rep.delivery.sent == [] and rep.delivery.retrying
        [row] = firm.outbox()
        assert row.status == "pending" and "too slowly" in (row.last_error or ""), row.last_error
    finally:
        proxy.close()
    assert proxy.trickled > 0 and smtp.messages == []
