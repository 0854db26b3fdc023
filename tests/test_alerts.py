"""Alerts end to end: Maildir -> scan -> check -> a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import os
import re
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import write_config
from servers import SmtpSink
from sqlalchemy import select, update
from sqlmodel import col
from test_care import ALICE, BOB, GINA, OLIVIA, OSCAR, SHARED, Mail
from typer.testing import CliRunner

from worker.alerts.check import AlertLifecycle
from worker.cli.main import app
from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.notify.render import build_email
from worker.notify.transport import make_transport
from worker.store.models import Alert, AlertCommand, OutboxEmail

LONDON = ZoneInfo("Europe/London")
PAUL = "paul@firm.example"
runner = CliRunner()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """London wall time -> naive UTC, as Carewatch keeps time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=LONDON).astimezone(UTC).replace(tzinfo=None)


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


def part(msg: email.message.EmailMessage, kind: str) -> str:
    """The text of an email's plain or html part."""
    body = msg.get_body((kind,))
    assert body is not None, f"no {kind} part in {msg['Subject']!r}"
    return str(body.get_content())


class Firm:
    """A Maildir, a store, an SMTP sink and the desk, with helpers to scan and check."""

    def __init__(self, tmp_path: Path, smtp: SmtpSink, db_url: str, extra: str = "") -> None:
        self.mail = Mail(tmp_path / "Maildir")
        smtp_section = (
            f'\n[notify.smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "none"\nallow_plaintext = true\n'
        )
        self.path = write_config(tmp_path, db_url, maildir=self.mail.root, extra=smtp_section + extra)
        os.environ["CAREWATCH__NOTIFY__TRANSPORT"] = '"smtp"'
        self.config = load_config(self.path)
        del os.environ["CAREWATCH__NOTIFY__TRANSPORT"]
        self.smtp = smtp
        self.store, self.directory = prepare_store(self.config)

    def scan(self) -> None:
        assert run_scan(self.config, self.store, self.directory).ok

    def check(self, now: datetime, **kw):  # type: ignore[no-untyped-def]
        self.scan()
        return AlertLifecycle(self.store, self.config).check(now, **kw)

    def received(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=policy.default) for _, _, raw in self.smtp.messages]

    def alerts(self) -> dict[str, Alert]:
        with self.store.session() as db:
            return {a.key: a for a in db.execute(select(Alert)).scalars()}

    def outbox(self) -> list[OutboxEmail]:
        with self.store.session() as db:
            return list(db.execute(select(OutboxEmail).order_by(col(OutboxEmail.id))).scalars())


@pytest.fixture
def firm(tmp_path: Path, smtp: SmtpSink) -> Firm:
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.mail.add(BOB, [SHARED], "Access to the portal", london(2026, 11, 16, 9, 30))
    f.mail.add(GINA, [SHARED], "Board pack", london(2026, 11, 16, 9, 0))
    return f


def test_one_email_per_owner_per_check_and_no_repeat(firm: Firm) -> None:
    rep = firm.check(at(2026, 11, 17, 12, 0))
    assert len(rep.new) == 3 and rep.delivery and len(rep.delivery.sent) == 2
    got = {m["To"]: m for m in firm.received()}
    assert set(got) == {OLIVIA, OSCAR}
    olivia = got[OLIVIA]
    body = part(olivia, "plain")
    assert "Alice Principal" in body and "Bob User" in body and "Budget 2027" in body
    assert "What to do:" in body and "snooze 3d" in body
    assert olivia["Auto-Submitted"] == "auto-generated" and olivia["X-Auto-Response-Suppress"] == "All"
    assert olivia["Reply-To"] == SHARED and "[cw:" in olivia["Subject"]
    html = part(olivia, "html")
    assert 'style="' in html and "<style" not in html  # CSS inlined for mail clients
    # The next check tells nobody anything new.
    firm.smtp.clear()
    rep2 = firm.check(at(2026, 11, 17, 12, 30))
    assert rep2.new == [] and rep2.emails == [] and firm.smtp.messages == []


def test_escalation_after_the_threshold_goes_to_owner_and_backup(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    firm.smtp.clear()
    # 8 business hours after Tue 12:00 is Wed 11:30.
    assert firm.check(at(2026, 11, 18, 11, 0)).escalated == []
    rep = firm.check(at(2026, 11, 18, 11, 45))
    assert len(rep.escalated) == 3
    got = {m["To"]: m for m in firm.received()}
    assert set(got) == {OLIVIA, OSCAR, PAUL}
    assert str(got[PAUL]["Subject"]).strip().startswith("Escalated: ")
    paul_body = part(got[PAUL], "plain")
    assert paul_body.count("ESCALATED") == 3 and "owner: Olivia Owner" in paul_body
    assert all(a.level == 1 and a.state == "escalated" for a in firm.alerts().values())
    # One level only by default: no second escalation.
    firm.smtp.clear()
    assert firm.check(at(2026, 11, 20, 12, 0)).escalated == [] and firm.smtp.messages == []


def test_an_alert_resolves_when_the_reply_lands(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    budget = next(k for k in firm.alerts() if "unanswered" in k and "m1@" in k)
    firm.mail.add(
        OLIVIA, [ALICE], "Re: Budget 2027", london(2026, 11, 17, 13, 0), reply_to="<m1@acme.example>", folder="Sent"
    )
    rep = firm.check(at(2026, 11, 17, 14, 0))
    assert budget in rep.resolved
    a = firm.alerts()[budget]
    assert a.state == "resolved" and a.resolved_at == at(2026, 11, 17, 14, 0)


def test_quiet_hours_hold_an_alert_until_morning(firm: Firm) -> None:
    rep = firm.check(at(2026, 11, 17, 22, 0))
    assert len(rep.held) == 3 and rep.emails == [] and firm.smtp.messages == []
    assert rep.hold_until == at(2026, 11, 18, 9, 0)
    assert all(a.state == "open" for a in firm.alerts().values())
    rep = firm.check(at(2026, 11, 18, 9, 5))
    assert len(rep.new) == 3 and len(firm.smtp.messages) == 2


def _reply(
    firm: Firm, sender: str, text: str, to_email: email.message.EmailMessage, when: datetime, token: str | None = None
) -> None:
    subject = "Re: " + str(to_email["Subject"])
    if token is not None:
        subject = subject.split("[cw:")[0] + f"[cw:{token}]"
    firm.mail.add(sender, [SHARED], subject, when, reply_to=str(to_email["Message-ID"]), body=text)


def test_snooze_by_reply_is_honoured_only_from_the_right_person(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    olivia_mail = next(m for m in firm.received() if m["To"] == OLIVIA)
    oscar_mail = next(m for m in firm.received() if m["To"] == OSCAR)
    # Oscar is not owner or backup of Acme's alerts; Bob is the client; a forged token fails.
    _reply(firm, OSCAR, "done", olivia_mail, london(2026, 11, 17, 12, 10))
    _reply(firm, BOB, "snooze 1w", olivia_mail, london(2026, 11, 17, 12, 11))
    _reply(firm, OLIVIA, "snooze 3d", olivia_mail, london(2026, 11, 17, 12, 12), token="0" * 20)
    # Olivia snoozes her email's alerts; Oscar closes only item 1 of his.
    _reply(firm, OLIVIA, "Snooze 3d\n\nOn Tue, Carewatch wrote:\n> ...", olivia_mail, london(2026, 11, 17, 12, 15))
    _reply(firm, OSCAR, "done 1", oscar_mail, london(2026, 11, 17, 12, 16))
    firm.smtp.clear()
    rep = firm.check(at(2026, 11, 17, 12, 30))
    results = sorted(rep.commands)
    assert sum("refused" in r for r in results) == 3 and sum("snoozed 2" in r for r in results) == 1
    assert any("closed 1" in r for r in results)
    with firm.store.session() as db:
        statuses = {c.from_addr + c.command: c.status for c in db.execute(select(AlertCommand)).scalars()}
    assert statuses[BOB + "snooze"] == "refused"
    alerts = firm.alerts()
    acme = [a for a in alerts.values() if a.client_name == "Acme Ltd"]
    assert all(a.state == "snoozed" and a.snoozed_until == at(2026, 11, 20, 12, 15) for a in acme)
    assert next(a for a in alerts.values() if a.client_name == "Globex").state == "acknowledged"
    # Snoozed and acknowledged alerts neither escalate nor remind. (Bob's own reply is real
    # client mail that now waits in its own right: that is the only new alert.)
    rep = firm.check(at(2026, 11, 18, 15, 0))
    assert rep.escalated == [] and all("m5@acme" in k for k in rep.new), rep.new
    # ...until the snooze ends: then the owner hears again.
    firm.smtp.clear()
    rep = firm.check(at(2026, 11, 20, 12, 30))
    assert sorted(k for k in rep.new if "m5@" not in k) == sorted(a.key for a in acme)
    got = {m["To"]: part(m, "plain") for m in firm.received()}
    assert "Budget 2027" in got[OLIVIA] and "Access to the portal" in got[OLIVIA]
    # Paul hears only of Bob's newer wait, which has now escalated; not of the snoozed ones.
    assert set(got) == {OLIVIA, PAUL} and "Budget 2027" not in got[PAUL] and "ESCALATED" in got[PAUL]


def test_smtp_down_then_up_loses_nothing_and_doubles_nothing(firm: Firm) -> None:
    firm.smtp.refuse_code = "451 4.3.0 try again later"
    rep = firm.check(at(2026, 11, 17, 12, 0))
    assert rep.delivery and rep.delivery.sent == [] and len(rep.delivery.retrying) == 1
    assert [r.status for r in firm.outbox()] == ["pending", "pending"]
    firm.smtp.refuse_code = None
    # Backoff: nothing is retried before its time...
    rep = firm.check(at(2026, 11, 17, 12, 0, 30))
    assert rep.delivery and len(rep.delivery.sent) == 1  # the one never tried goes now
    rep = firm.check(at(2026, 11, 17, 12, 5))
    assert rep.delivery and len(rep.delivery.sent) == 1
    assert [r.status for r in firm.outbox()] == ["sent", "sent"]
    ids = [m["Message-ID"] for m in firm.received()]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_permanent_failure_is_kept_and_visible(firm: Firm) -> None:
    firm.smtp.refuse_code = "550 5.1.1 no such user"
    firm.check(at(2026, 11, 17, 12, 0))
    assert [r.status for r in firm.outbox()] == ["failed", "failed"]
    r = runner.invoke(
        app,
        ["--config", str(firm.path), "outbox", "list", "--status", "failed"],
        env={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', "COLUMNS": "200"},
    )
    assert r.exit_code == 0 and r.output.count("failed") >= 2 and "550" in r.output
    r = runner.invoke(app, ["--config", str(firm.path), "outbox", "list", "--status", "faild"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "'faild' is not one of 'pending', 'sent', 'failed'" in r.output, r.output


def test_a_crash_between_sent_and_marked_sent_resends_the_same_message(firm: Firm) -> None:
    from worker.notify import outbox as ob

    class Crash(BaseException):
        pass

    transport = make_transport(firm.config)
    real_send = transport.send

    def send_then_crash(*a, **kw):  # type: ignore[no-untyped-def]
        real_send(*a, **kw)
        raise Crash()  # the process dies after the server accepted, before we noted it

    transport.send = send_then_crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        firm.check(at(2026, 11, 17, 12, 0), transport=transport)
    assert len(firm.smtp.messages) == 1 and all(r.status == "pending" for r in firm.outbox())
    # The email being sent is held (leased) for a while, so that another process does not send
    # it too meanwhile; the other one goes at once, the held one after the lease.
    rep = ob.deliver(firm.store, make_transport(firm.config), "carewatch@firm.example", at(2026, 11, 17, 12, 1))
    assert len(rep.sent) == 1
    rep = ob.deliver(firm.store, make_transport(firm.config), "carewatch@firm.example", at(2026, 11, 17, 12, 11))
    assert len(rep.sent) == 1
    ids = [m["Message-ID"] for m in firm.received()]
    assert len(ids) == 3 and len(set(ids)) == 2  # the resend carries the same Message-ID
    assert len(firm.outbox()) == 2 and firm.check(at(2026, 11, 17, 12, 2)).new == []


def test_headers_and_markup_cannot_be_injected(tmp_path: Path, smtp: SmtpSink) -> None:
    extra = (
        '\n[[clients]]\nname = "Evil\\r\\nBcc: victim@evil.example\\r\\nX-Injected: yes"\n'
        'domains = ["evil.example"]\nowner = "olivia@firm.example"\n'
        'contacts = [{ name = "<script>alert(1)</script>", email = "eve@evil.example", role = "principal" }]\n'
    )
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}", extra=extra)
    f.mail.add("eve@evil.example", [SHARED], "<b>Hi</b>\r\nBcc: x@evil.example", london(2026, 11, 16, 9, 0))
    f.check(at(2026, 11, 17, 12, 0))
    [(mail_from, rcpts, raw)] = smtp.messages
    assert rcpts == [OLIVIA]
    msg = email.message_from_bytes(raw, policy=policy.default)
    # The client name is folded into the Subject's text, never a header of its own.
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert "Bcc: victim@evil.example" in str(msg["Subject"])
    html = part(msg, "html")
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>Hi</b>" not in html


def test_dry_run_sends_nothing_and_changes_nothing(firm: Firm) -> None:
    r = runner.invoke(
        app,
        ["--config", str(firm.path), "check", "--dry-run", "--scan", "--now", "2026-11-17T12:00:00Z"],
        env={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"'},
    )
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and "Alice Principal" in r.output and "To: olivia@firm.example" in r.output
    assert firm.smtp.messages == [] and firm.outbox() == [] and firm.alerts() == {}


def test_check_and_alerts_commands_from_the_cli(firm: Firm) -> None:
    env = {"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', "COLUMNS": "200"}
    r = runner.invoke(app, ["--config", str(firm.path), "check", "--scan", "--now", "2026-11-17T12:00:00Z"], env=env)
    assert r.exit_code == 0 and "3 new" in r.output and "2 sent" in r.output, r.output
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "list"], env=env)
    assert r.exit_code == 0 and "notified" in r.output and "Acme Ltd" in r.output
    first = min(firm.alerts().values(), key=lambda a: a.id or 0)
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "snooze", str(first.id), "--for", "2d"], env=env)
    assert r.exit_code == 0 and "snoozed" in r.output
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "ack", "999"], env=env)
    assert r.exit_code == 2 and "no alert with id 999" in r.output


def test_file_outbox_is_the_embedded_default(tmp_path: Path) -> None:
    mail = Mail(tmp_path / "Maildir")
    mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root)
    r = runner.invoke(app, ["--config", str(cfg), "check", "--scan", "--now", "2026-11-17T12:00:00Z"])
    assert r.exit_code == 0, r.output
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1
    msg = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert msg["To"] == OLIVIA and "Budget" in part(msg, "plain")


def test_a_replayed_or_expired_reply_is_not_applied_again(firm: Firm, monkeypatch: pytest.MonkeyPatch) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    olivia_mail = next(m for m in firm.received() if m["To"] == OLIVIA)
    _reply(firm, OLIVIA, "done", olivia_mail, london(2026, 11, 17, 12, 10))
    # The very same message again (a mail loop or a malicious replay): one command only.
    first = sorted((firm.mail.root / "cur").glob("*"))[-1]
    (firm.mail.root / "cur" / "replayed.test:2,S").write_bytes(first.read_bytes())
    firm.check(at(2026, 11, 17, 12, 30))
    with firm.store.session() as db:
        cmds = db.execute(select(AlertCommand)).scalars().all()
    assert len(cmds) == 1 and cmds[0].status == "applied"
    # A reference used long after the email was sent is refused (the window is 30 days; 2 here).
    import worker.alerts.check

    monkeypatch.setattr(worker.alerts.check, "TOKEN_VALID_DAYS", 2)
    _reply(firm, OLIVIA, "snooze 1w", olivia_mail, london(2026, 11, 20, 10, 0))
    firm.scan()
    rep = AlertLifecycle(firm.store, firm.config).check(at(2026, 11, 20, 10, 5), deliver=False)
    assert any("expired" in c for c in rep.commands), rep.commands


def test_ops_can_point_the_config_at_their_own_templates(tmp_path: Path, smtp: SmtpSink) -> None:
    own = tmp_path / "my-templates"
    own.mkdir()
    (own / "alert.txt").write_text("OUR OWN WORDING for {{ recipient_name }}: {{ items|length }} item(s)\n")
    cfg = tmp_path / "carewatch.toml"
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    # templates_dir is a top-level key: it must come before the first [section].
    cfg.write_text(f'templates_dir = "{own}"\n' + cfg.read_text())
    f.config = load_config(cfg, environ={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', **os.environ})
    f.mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    f.check(at(2026, 11, 17, 12, 0))
    msg = f.received()[0]
    assert part(msg, "plain").startswith("OUR OWN WORDING for Olivia Owner: 1 item(s)")
    assert "What to do" in part(msg, "html")  # the HTML falls back to ours


def test_a_template_that_does_not_render_says_where_sends_nothing_and_loses_nothing(
        tmp_path: Path, smtp: SmtpSink) -> None:
    """An own template with a misspelt field (the config check catches misspelt names, not
    the fields of what they hold) used to crash `check` with Jinja2's traceback, and every
    check of the worker after it. Now the error names the template and line, the alert stays
    due, and once the template is fixed it goes out."""
    from worker.errors import TemplateError

    own = tmp_path / "my-templates"
    own.mkdir()
    (own / "alert.txt").write_text("Dear {{ recipient_name }},\n{% for it in items %}{{ it.clinet }}{% endfor %}\n")
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.path.write_text(f'templates_dir = "{own}"\n' + f.path.read_text())
    f.config = load_config(f.path, environ={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', **os.environ})
    f.mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    said = "template alert.txt, line 2: 'dict object' has no attribute 'clinet'"
    with pytest.raises(TemplateError) as ei:
        f.check(at(2026, 11, 17, 12, 0))
    assert ei.value.problems == [said]
    assert f.outbox() == [] and smtp.messages == []
    assert all(a.state == "open" for a in f.alerts().values())  # nothing marked as told

    r = runner.invoke(app, ["--config", str(f.path), "check", "--now", "2026-11-17T12:00:00Z"],
                      env={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"'})
    assert r.exit_code == 3 and said in r.output, r.output
    assert "Traceback" not in r.output and smtp.messages == []

    (own / "alert.txt").write_text("Dear {{ recipient_name }},\n")
    f.check(at(2026, 11, 17, 12, 5))
    assert [part(m, "plain").strip() for m in f.received()] == ["Dear Olivia Owner,"]


def test_our_own_alert_emails_are_ignored_by_the_scan(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    # An alert copy lands in the scanned mailbox (e.g. an owner forwards it to the shared box).
    raw = firm.smtp.messages[0][2]
    (firm.mail.root / "cur" / "alert-copy.test:2,S").write_bytes(raw)
    firm.scan()
    with firm.store.session() as db:
        from worker.store.models import Message

        ours = db.execute(select(Message).where(col(Message.subject).contains("[cw:"))).scalars().all()
    assert len(ours) == 1 and ours[0].automated and ours[0].automated_reason.startswith("Auto-Submitted")


def test_an_alert_whose_thread_expires_unanswered_ends_expired_not_resolved(firm: Firm) -> None:
    """An unanswered thread stops waiting 30 days after the client's last word on it
    (policy.waits_expire_after). Its alert used to end "resolved", the word for a reply sent:
    `alerts list --all` and the partner digest told a question nobody answered as care done."""
    rep = firm.check(at(2026, 11, 17, 12, 0))
    budget = next(k for k in rep.new if k.startswith("unanswered:") and "m1@" in k)
    portal = next(k for k in rep.new if k.startswith("unanswered:") and "m2@" in k)
    # The owner closes one by hand ("done": a phone call, say): handled, so resolved at expiry.
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "ack", str(firm.alerts()[portal].id)])
    assert r.exit_code == 0, r.output

    rep = firm.check(at(2026, 12, 17, 12, 0))  # 31 days on, still unanswered
    assert budget in rep.expired and budget not in rep.resolved
    assert portal in rep.resolved and portal not in rep.expired
    assert "expired" in rep.to_json() and budget in rep.to_json()["expired"]
    a = firm.alerts()[budget]
    assert a.state == "expired" and a.resolved_at == at(2026, 12, 17, 12, 0)
    assert firm.alerts()[portal].state == "resolved"

    # Closed like a resolved alert: out of the default list, in --all, not to be snoozed.
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "list"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "Budget 2027" not in r.output, r.output
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "list", "--all"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "expired" in r.output and "Budget 2027" in r.output, r.output
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "snooze", str(a.id)])
    assert r.exit_code == 2 and f"alert {a.id} is already expired" in r.output, r.output
    r = runner.invoke(app, ["--config", str(firm.path), "check", "--now", "2026-12-17T12:05:00Z"])
    assert r.exit_code == 0 and "expired unanswered" not in r.output, r.output  # told once

    # The client chases: the thread waits again from its first message, and the alert reopens.
    firm.smtp.clear()
    firm.mail.add(ALICE, [SHARED], "Re: Budget 2027", london(2026, 12, 18, 9, 0), reply_to="<m1@acme.example>",
                  body="Did you see this?")
    rep = firm.check(at(2026, 12, 18, 12, 0))
    assert budget in rep.reopened and budget in rep.new
    assert firm.alerts()[budget].state == "notified"
    assert any("Budget 2027" in part(m, "plain") for m in firm.received())


def test_the_check_command_counts_expired_alerts_apart(firm: Firm) -> None:
    env = {"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', "COLUMNS": "200"}
    r = runner.invoke(app, ["--config", str(firm.path), "check", "--scan", "--now", "2026-11-17T12:00:00Z"], env=env)
    assert r.exit_code == 0 and "3 new" in r.output, r.output
    r = runner.invoke(app, ["--config", str(firm.path), "check", "--now", "2026-12-17T12:00:00Z"], env=env)
    assert r.exit_code == 0 and "0 resolved, 3 expired unanswered" in r.output, r.output


def test_a_snooze_is_capped_at_notify_max_snooze(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    olivia_mail = next(m for m in firm.received() if m["To"] == OLIVIA)
    _reply(firm, OLIVIA, "snooze 999w", olivia_mail, london(2026, 11, 17, 12, 15))
    firm.check(at(2026, 11, 17, 12, 30))
    acme = [a for a in firm.alerts().values() if a.client_name == "Acme Ltd"]
    assert acme and all(a.snoozed_until == at(2026, 12, 15, 12, 15) for a in acme)  # four weeks, not 2046
    one = acme[0].id
    r = runner.invoke(app, ["--config", str(firm.path), "alerts", "snooze", str(one), "--for", "999w"])
    assert r.exit_code == 2 and "longer than notify.max_snooze (4w)" in r.output


def test_token_secret_env_signs_references_and_is_never_stored(firm: Firm, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.alerts.tokens import make_token, token_secret
    from worker.store.models import Meta

    monkeypatch.setenv("CW_TEST_TOKEN_SECRET", "a long secret from the vault")
    firm.config.settings.notify.token_secret_env = "CW_TEST_TOKEN_SECRET"
    firm.check(at(2026, 11, 17, 12, 0))
    mail = next(m for m in firm.received() if m["To"] == OLIVIA)
    with firm.store.session() as db:
        secret = token_secret(firm.store, db, "CW_TEST_TOKEN_SECRET")
        assert db.get(Meta, "token_secret") is None  # nothing in the store to steal
    assert f"[cw:{make_token(secret, str(mail['Message-ID']))}]" in str(mail["Subject"])
    monkeypatch.delenv("CW_TEST_TOKEN_SECRET")
    with firm.store.session() as db, pytest.raises(Exception, match="CW_TEST_TOKEN_SECRET is not set"):
        token_secret(firm.store, db, "CW_TEST_TOKEN_SECRET")


def test_emails_written_to_files_are_private(tmp_path: Path) -> None:
    from worker.notify.transport import FileTransport

    raw = build_email(from_addr="c@firm.example", from_name="C", to=["o@firm.example"], subject="s", text="t",
                      html="<p>h</p>", message_id="<p1@firm.example>").as_bytes()
    t = FileTransport(tmp_path / "outbox")
    t.send(raw, "c@firm.example", ["o@firm.example"], "<p1@firm.example>")
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.suffix for f in files] == [".eml", ".html"]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700


def test_an_alert_told_again_after_a_snooze_escalates_only_escalate_after_that_notice(
        tmp_path: Path, smtp: SmtpSink) -> None:
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}", extra="\n[policy]\nescalation_levels = 2\n")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.check(at(2026, 11, 17, 10, 0))  # told Olivia
    rep = f.check(at(2026, 11, 18, 10, 0))  # 8 business hours on: escalated to Paul
    (a,) = f.alerts().values()
    assert rep.escalated == [a.key] and a.level == 1
    with f.store.session() as db:  # snoozed by Olivia until the next morning
        db.execute(update(Alert).where(col(Alert.id) == a.id).values(
            state="snoozed", snoozed_until=at(2026, 11, 19, 9, 0)))
        db.commit()
    rep = f.check(at(2026, 11, 19, 9, 5))
    assert rep.new == [a.key] and rep.escalated == []  # told again when the snooze ends
    # Five minutes later is not eight business hours after that notice: no escalation yet.
    assert f.check(at(2026, 11, 19, 9, 10)).escalated == []
    assert f.check(at(2026, 11, 19, 17, 0)).escalated == []
    assert f.check(at(2026, 11, 20, 9, 10)).escalated == [a.key]


def test_a_postscript_minutes_later_is_no_chaser(tmp_path: Path, smtp: SmtpSink) -> None:
    """"Forgot the attachment" three minutes later: the client did not have to chase. A further
    message an hour of business time or more after the last one did."""
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    q = f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.mail.add(ALICE, [SHARED], "Re: Budget 2027", london(2026, 11, 16, 10, 3), reply_to=q,
               body="Forgot the attachment, here it is.")
    rep = f.check(at(2026, 11, 17, 12, 0))
    assert [k.split(":")[0] for k in rep.new] == ["unanswered"]
    assert "follow up" not in part(f.received()[0], "plain")
    f.mail.add(ALICE, [SHARED], "Re: Budget 2027", london(2026, 11, 17, 9, 30), reply_to=q, body="Any news?")
    rep = f.check(at(2026, 11, 17, 12, 5))
    assert [k.split(":")[0] for k in rep.new] == ["chased"]


def test_one_email_counts_clients_leads_with_the_most_urgent_and_tells_each_thread_once(
        tmp_path: Path, smtp: SmtpSink) -> None:
    extra = ('\n[[clients]]\nname = "Initech"\ndomains = ["initech.example"]\nowner = "olivia@firm.example"\n'
             'contacts = [{ name = "Ian Principal", email = "ian@initech.example", role = "principal" }]\n'
             '\n[[clients]]\nname = "Hooli"\ndomains = ["hooli.example"]\nowner = "olivia@firm.example"\n')
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}", extra=extra)
    q = f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.mail.add(ALICE, [SHARED], "Re: Budget 2027", london(2026, 11, 17, 9, 30), reply_to=q, body="Any news?")
    f.mail.add(BOB, [SHARED], "Access to the portal", london(2026, 11, 16, 11, 0))
    f.mail.add("ian@initech.example", [SHARED], "Payroll run", london(2026, 11, 16, 12, 0))
    rep = f.check(at(2026, 11, 17, 12, 0))
    assert any(k.startswith("chased:") for k in rep.new) and any(k.startswith("unanswered:") for k in rep.new)
    mail = next(m for m in f.received() if m["To"] == OLIVIA)
    text = part(mail, "plain")
    # Three clients (Acme, Initech, and Hooli with no principal), not one per alert.
    assert text.startswith("3 clients need you")
    # The chased thread leads, once (not again as "waiting"), with how often the client asked.
    assert str(mail["Subject"]).startswith("Acme Ltd: client had to chase (+3 more)")
    assert text.count("Thread: \"Budget 2027\"") == 1 and "has followed up once" in text, text
    # Hygiene says what the recipient can do, not "edit the configuration".
    assert "ask Hooli who is accountable for the relationship on their side" in text
    assert "in the Carewatch configuration" not in text
    # "done 1" acts on the whole first item: the thread's chased and unanswered alerts both.
    _reply(f, OLIVIA, "done 1", mail, london(2026, 11, 17, 12, 20))
    rep = f.check(at(2026, 11, 17, 12, 30))
    assert any("closed 2" in c for c in rep.commands), rep.commands
    alice = [a for a in f.alerts().values() if a.contact_email == ALICE]
    assert len(alice) == 2 and all(a.state == "acknowledged" for a in alice)
    assert all(a.state != "acknowledged" for a in f.alerts().values() if a.contact_email != ALICE)


def test_a_reply_due_soon_is_warned_once_before_the_promise_breaks(tmp_path: Path, smtp: SmtpSink) -> None:
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))  # reply within 8 business hours
    assert f.check(at(2026, 11, 16, 15, 0)).new == []  # 5 h: nothing yet
    rep = f.check(at(2026, 11, 16, 16, 30))  # 6.5 h: past 75 % of the window
    assert [k.split(":")[0] for k in rep.new] == ["due_soon"]
    (mail,) = f.received()
    text = part(mail, "plain")
    assert str(mail["Subject"]).startswith("Acme Ltd: reply due soon")
    assert "1.5 h left" in text and "before Tue 17 Nov 2026 09:30" in text  # 17:30 close, 09:00 open
    assert f.check(at(2026, 11, 16, 17, 0)).new == []  # once per wait
    rep = f.check(at(2026, 11, 17, 9, 45))  # the promise broke: now the lapse itself
    assert [k.split(":")[0] for k in rep.new] == ["unanswered"]
    # The warning is never escalated: only the lapse is, eight business hours after its notice.
    rep = f.check(at(2026, 11, 18, 9, 50))
    assert [k.split(":")[0] for k in rep.escalated] == ["unanswered"]


def test_the_due_soon_warning_can_be_turned_off(tmp_path: Path, smtp: SmtpSink) -> None:
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}", extra="\n[policy]\nwarn_at = 0\n")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    assert f.check(at(2026, 11, 16, 16, 30)).new == [] and f.received() == []


def test_a_dry_run_at_night_shows_every_email_the_morning_will_send(firm: Firm) -> None:
    r = runner.invoke(
        app, ["--config", str(firm.path), "check", "--dry-run", "--scan", "--now", "2026-11-17T22:00:00Z"],
        env={"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"', "COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "quiet hours: 3 alert(s) held until 2026-11-18 09:00 UTC" in r.output
    assert r.output.count("Held for quiet hours: goes at 2026-11-18 09:00 UTC") == 2  # Olivia's and Oscar's
    assert "To: olivia@firm.example" in r.output and "Budget 2027" in r.output
    assert firm.smtp.messages == [] and firm.outbox() == [] and firm.alerts() == {}
    # The reference shown is the one the morning's real send uses.
    shown = set(re.findall(r"\[cw:([0-9a-f]+)\]", r.output))
    firm.check(at(2026, 11, 18, 9, 7))
    sent = {str(m["Subject"]).rsplit("[cw:", 1)[1].rstrip("]") for m in firm.received()}
    assert shown == sent and len(sent) == 2


def test_replies_that_cannot_be_trusted_are_refused(firm: Firm) -> None:
    """Through the mailbox: a From that fails DMARC, a reference copied into a new message (no
    In-Reply-To or References to the alert email), and an old email's reference once its alerts
    were told again; a reply that passes DKIM for the owner's domain, or that Exchange marks as
    sent inside the organisation, is applied."""
    firm.check(at(2026, 11, 17, 12, 0))
    mail = next(m for m in firm.received() if m["To"] == OLIVIA)
    subject = "Re: " + str(mail["Subject"])
    forged = {"Authentication-Results": "mx.firm.example; spf=fail smtp.mailfrom=evil.example; dkim=none; "
                                        "dmarc=fail (p=reject) header.from=firm.example"}
    firm.mail.add(OLIVIA, [SHARED], subject, london(2026, 11, 17, 12, 5), reply_to=str(mail["Message-ID"]),
                  body="done", extra_headers=forged)
    firm.mail.add(OLIVIA, [SHARED], subject, london(2026, 11, 17, 12, 6), refs=[], body="done")  # no quote
    rep = firm.check(at(2026, 11, 17, 12, 10))
    # (The forged one was refused as it was read; the unquoted one when applied.)
    assert rep.commands == [f"done from {OLIVIA}: refused: the reply does not answer the alert email (no "
                            "In-Reply-To or References to it)"]
    results = {c.message_id: c.result for c in _commands(firm)}
    assert any("is not authenticated" in (r or "") for r in results.values())
    assert any("does not answer the alert email" in (r or "") for r in results.values())
    assert all(a.state == "notified" for a in firm.alerts().values())
    # Signed by the owner's domain: applied.
    signed = {"Authentication-Results": "mx.firm.example; dkim=pass header.d=firm.example; dmarc=none"}
    firm.mail.add(OLIVIA, [SHARED], subject, london(2026, 11, 17, 12, 15), reply_to=str(mail["Message-ID"]),
                  body="snooze 4h", extra_headers=signed)
    rep = firm.check(at(2026, 11, 17, 12, 20))
    assert any("snoozed 2" in c for c in rep.commands), rep.commands


def test_an_old_alert_emails_reference_stops_working_once_its_alerts_were_told_again(firm: Firm) -> None:
    firm.check(at(2026, 11, 17, 12, 0))
    old = next(m for m in firm.received() if m["To"] == OLIVIA)
    firm.check(at(2026, 11, 18, 12, 5))  # eight business hours on: escalated, a new email
    internal = {"X-MS-Exchange-Organization-AuthAs": "Internal",
                "Authentication-Results": "dkim=none (message not signed) header.d=none;dmarc=none"}
    firm.mail.add(OLIVIA, [SHARED], "Re: " + str(old["Subject"]), london(2026, 11, 18, 12, 10),
                  reply_to=str(old["Message-ID"]), body="done", extra_headers=internal)
    rep = firm.check(at(2026, 11, 18, 12, 15))
    assert rep.commands and all("a newer alert email about these alerts replaces this one" in c
                                for c in rep.commands), rep.commands
    newest = [m for m in firm.received() if m["To"] == OLIVIA][-1]
    firm.mail.add(OLIVIA, [SHARED], "Re: " + str(newest["Subject"]), london(2026, 11, 18, 12, 20),
                  reply_to=str(newest["Message-ID"]), body="done", extra_headers=internal)
    rep = firm.check(at(2026, 11, 18, 12, 25))
    assert any("closed" in c for c in rep.commands), rep.commands


def _commands(firm: Firm) -> list[AlertCommand]:
    with firm.store.session() as db:
        return list(db.execute(select(AlertCommand)).scalars())


def test_a_check_names_the_next_moment_time_alone_changes_its_outcome(firm: Firm) -> None:
    """The worker evaluates after new mail and at the moment the last check named: that
    moment must be exactly when a wait, an escalation or a snooze falls due."""
    dry = {"dry_run": True}
    # Mon 10:30: the three questions are young. The next change is the first warning.
    rep = firm.check(at(2026, 11, 16, 10, 30), **dry)
    nxt = rep.next_check
    assert nxt is not None and rep.new == [] and not firm.check(nxt - timedelta(minutes=1), **dry).emails
    assert firm.check(nxt, **dry).emails or firm.check(nxt + timedelta(seconds=1), **dry).emails
    # After the alerts are told (Tue 12:00), the next change is the escalation (Wed 11:30, see
    # the escalation test) unless a wait is due sooner.
    told = firm.check(at(2026, 11, 17, 12, 0))
    assert told.new and told.next_check is not None and told.next_check <= at(2026, 11, 18, 11, 30)
    assert firm.check(told.next_check - timedelta(minutes=1)).emails == []
    later = firm.check(told.next_check + timedelta(seconds=1))
    assert later.escalated or later.new or later.emails
