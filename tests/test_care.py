"""Care metrics through the real path: mail in a Maildir (or Dovecot) -> scan -> status --json."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import set_folders, write_config
from servers import Dovecot
from typer.testing import CliRunner

from worker.cli.main import app
from worker.synth import build_message

LONDON = ZoneInfo("Europe/London")
runner = CliRunner()


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


class Mail:
    """Builds a small mailbox by hand: each message gets a unique Message-ID and file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def add(
        self,
        sender: str,
        to: list[str],
        subject: str,
        when: datetime,
        *,
        folder: str = "INBOX",
        reply_to: str | None = None,
        refs: list[str] | None = None,
        delivered: datetime | None = None,
        **kw: Any,
    ) -> str:
        self.n += 1
        mid = f"<m{self.n}@{sender.split('@')[1]}>"
        raw = build_message(
            sender=sender,
            to=to,
            subject=subject,
            date=when,
            message_id=mid,
            in_reply_to=reply_to,
            references=refs if refs is not None else ([reply_to] if reply_to else None),
            **kw,
        )
        d = self.root if folder == "INBOX" else self.root / f".{folder}"
        path = d / "cur" / f"{self.n:06d}.test:2,S"
        path.write_bytes(raw)
        # Delivered when it was sent (unless told): the file time is the Maildir's INTERNALDATE.
        at = (delivered or when).timestamp()
        os.utime(path, (at, at))
        return mid


@pytest.fixture
def mail(tmp_path: Path) -> Mail:
    return Mail(tmp_path / "Maildir")


def status(tmp_path: Path, mail: Mail, now: datetime, extra: str = "", db_url: str | None = None) -> dict:
    cfg = write_config(tmp_path, db_url or f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root, extra=extra)
    r = runner.invoke(app, ["--config", str(cfg), "scan"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json", "--now", now.astimezone(UTC).isoformat()])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def contact(doc: dict, email: str) -> dict:
    return next(ct for c in doc["clients"] for ct in c["contacts"] if ct["email"] == email)


def client(doc: dict, name: str) -> dict:
    return next(c for c in doc["clients"] if c["name"] == name)


def kinds(ct: dict) -> set[str]:
    return {lp["kind"] for lp in ct["lapses"]}


ALICE, BOB, GINA, IVAN = "alice@acme.example", "bob@acme.example", "gina@globex.example", "ivan@firm.example"
SHARED, OLIVIA, OSCAR = "shared@firm.example", "olivia@firm.example", "oscar@firm.example"


def test_a_reply_within_hours_is_measured_in_business_minutes(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    mail.add(OLIVIA, [ALICE], "Re: Budget 2027", london(2026, 11, 16, 13, 15), reply_to=q, folder="Sent")
    doc = status(tmp_path, mail, london(2026, 11, 16, 17, 0))
    a = contact(doc, ALICE)
    assert a["waiting"] == []
    assert a["response_time"]["count"] == 1
    assert a["response_time"]["median_business_minutes"] == 195.0
    assert a["response_time"]["median_wall_minutes"] == 195.0
    assert a["last_inbound_at"] == "2026-11-16T10:00:00Z" and a["last_outbound_at"] == "2026-11-16T13:15:00Z"
    assert "unanswered" not in kinds(a)


def test_a_reply_across_a_weekend_and_holidays_counts_only_open_hours(tmp_path: Path, mail: Mail) -> None:
    # Wed 24 Dec 2025 16:00; Thu 25 and Fri 26 are holidays in the config, then a weekend;
    # the reply comes on Mon 29 at 10:00.
    q = mail.add(BOB, [SHARED], "Year-end", london(2025, 12, 24, 16, 0))
    mail.add(OLIVIA, [BOB], "RE: Year-end", london(2025, 12, 29, 10, 0), reply_to=q)
    a = contact(status(tmp_path, mail, london(2025, 12, 30, 9, 0)), BOB)
    assert a["response_time"]["median_business_minutes"] == 90 + 60
    assert a["response_time"]["median_wall_minutes"] == (4 * 24 + 18) * 60


def test_a_reply_across_the_dst_change_is_dst_correct(tmp_path: Path, mail: Mail) -> None:
    # Clocks go back on Sun 25 Oct 2026: Fri 17:00 BST (16:00Z) -> Mon 10:00 GMT (10:00Z).
    q = mail.add(BOB, [SHARED], "Forms", london(2026, 10, 23, 17, 0))
    mail.add(OLIVIA, [BOB], "Re: Forms", london(2026, 10, 26, 10, 0), reply_to=q)
    a = contact(status(tmp_path, mail, london(2026, 10, 27, 9, 0)), BOB)
    assert a["response_time"]["median_business_minutes"] == 30 + 60
    assert a["response_time"]["median_wall_minutes"] == (2 * 24 + 18) * 60


def test_a_thanks_only_message_does_not_wait(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    r = mail.add(OLIVIA, [ALICE], "Re: Budget", london(2026, 11, 16, 11, 0), reply_to=q)
    mail.add(ALICE, [SHARED], "Re: Budget", london(2026, 11, 16, 11, 30), reply_to=r, body="Thanks, got it!\n\nAlice")
    a = contact(status(tmp_path, mail, london(2026, 11, 20, 17, 0)), ALICE)
    assert a["waiting"] == [] and "unanswered" not in kinds(a)
    assert a["last_inbound_at"] == "2026-11-16T11:30:00Z"


def test_an_out_of_office_is_not_a_reply(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(ALICE, [OLIVIA, SHARED], "Urgent: contract", london(2026, 11, 16, 10, 0))
    mail.add(
        OLIVIA,
        [ALICE],
        "Automatic reply: Urgent: contract",
        london(2026, 11, 16, 10, 1),
        reply_to=q,
        extra_headers={"Auto-Submitted": "auto-replied"},
    )
    # ...and the client's own out-of-office is not a message that waits.
    mail.add(
        BOB,
        [SHARED],
        "Out of Office: Urgent: contract",
        london(2026, 11, 16, 10, 2),
        reply_to=q,
        extra_headers={"X-Autoreply": "yes"},
    )
    doc = status(tmp_path, mail, london(2026, 11, 17, 12, 0))
    a = contact(doc, ALICE)
    assert len(a["waiting"]) == 1 and a["waiting"][0]["message_id"] == q
    assert a["waiting"][0]["business_minutes"] == 450 + 180
    assert a["last_outbound_at"] is None
    assert "unanswered" in kinds(a)  # 10.5 business hours > principal default of 8h
    assert contact(doc, BOB)["waiting"] == []


def test_a_reply_from_the_sent_folder_resolves_the_wait(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(GINA, [SHARED], "Board pack", london(2026, 11, 16, 9, 30))
    mail.add(OSCAR, [GINA], "Re: Board pack", london(2026, 11, 16, 12, 0), reply_to=q, folder="Sent")
    g = contact(status(tmp_path, mail, london(2026, 11, 18, 9, 0)), GINA)
    assert g["waiting"] == [] and g["response_time"]["median_business_minutes"] == 150


def test_a_reply_that_breaks_the_references_chain_joins_by_subject(tmp_path: Path, mail: Mail) -> None:
    mail.add(ALICE, [SHARED], "Invoice 4411 query", london(2026, 11, 16, 9, 0))
    mail.add(OLIVIA, [ALICE], "RE: [EXT] invoice 4411 query", london(2026, 11, 16, 9, 45), refs=[])
    a = contact(status(tmp_path, mail, london(2026, 11, 17, 9, 0)), ALICE)
    assert a["waiting"] == [] and a["response_time"]["median_business_minutes"] == 45
    # A different subject does not join: a fresh question is still a wait.
    mail.add(ALICE, [SHARED], "New topic", london(2026, 11, 17, 9, 0))
    mail.add(OLIVIA, [BOB], "Re: Something else", london(2026, 11, 17, 9, 30), refs=[])
    a = contact(status(tmp_path, mail, london(2026, 11, 17, 10, 0)), ALICE)
    assert [w["subject"] for w in a["waiting"]] == ["New topic"]


def test_a_chaser_marks_the_thread_chased(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(ALICE, [SHARED], "Tax return", london(2026, 11, 16, 9, 0))
    mail.add(ALICE, [SHARED], "Re: Tax return", london(2026, 11, 17, 9, 0), reply_to=q, body="Any news on this?")
    a = contact(status(tmp_path, mail, london(2026, 11, 17, 12, 0)), ALICE)
    assert [w["chased"] for w in a["waiting"]] == [True, False]
    assert {"unanswered", "chased"} <= kinds(a)
    chased = next(lp for lp in a["lapses"] if lp["kind"] == "chased")
    assert chased["facts"]["chasers"] == 1 and chased["key"].endswith(q)


def test_a_thread_unanswered_for_longer_than_the_expiry_waits_no_more(tmp_path: Path, mail: Mail) -> None:
    """A first start on years of mail found every question never answered by email (a phone
    call, a reply from a mailbox not scanned) waiting, and the first check alerted every owner
    about each. A thread stops waiting 30 days after the client's last word on it; a chaser
    within that keeps the whole thread waiting, from its first message. A message after the
    thread stopped waiting is a new question, measured from itself: it revives nothing."""
    mail.add(ALICE, [SHARED], "Question from 2023", london(2023, 3, 2, 10, 0))
    mail.add(ALICE, [SHARED], "Question of October", london(2026, 10, 12, 10, 0))  # 37 days before
    old = mail.add(BOB, [SHARED], "Engagement terms", london(2026, 9, 1, 10, 0))
    late = mail.add(BOB, [SHARED], "Re: Engagement terms", london(2026, 11, 10, 10, 0), reply_to=old,
                    body="Any news?")  # 70 days on: the first question had stopped waiting
    q = mail.add(GINA, [SHARED], "Board pack", london(2026, 10, 26, 10, 0))
    mail.add(GINA, [SHARED], "Re: Board pack", london(2026, 11, 10, 10, 0), reply_to=q, body="Any news?")
    recent = mail.add(ALICE, [SHARED], "Question of November", london(2026, 11, 2, 10, 0))  # 16 days before
    now = london(2026, 11, 18, 12, 0)

    doc = status(tmp_path, mail, now)
    assert [w["message_id"] for w in contact(doc, ALICE)["waiting"]] == [recent]
    bob = contact(doc, BOB)
    assert [(w["message_id"], w["chased"]) for w in bob["waiting"]] == [(late, False)]
    assert "chased" not in kinds(bob) and "unanswered" in kinds(bob)
    unanswered = next(lp for lp in bob["lapses"] if lp["kind"] == "unanswered")
    assert unanswered["since"] == "2026-11-10T10:00:00Z" and unanswered["facts"]["chasers"] == 0
    gina = contact(doc, GINA)
    assert [(w["message_id"], w["chased"]) for w in gina["waiting"]][0] == (q, True)
    assert "chased" in kinds(gina)

    # 0 keeps every unanswered thread waiting, as before.
    (tmp_path / "never").mkdir()
    doc = status(tmp_path / "never", mail, now, extra="\n[policy]\nwaits_expire_after = 0\n")
    assert len(contact(doc, ALICE)["waiting"]) == 3


def test_a_principal_nobody_wrote_to_for_40_days_is_silent(tmp_path: Path, mail: Mail) -> None:
    mail.add(OLIVIA, [ALICE], "Catch-up", london(2026, 10, 1, 10, 0))
    mail.add(OLIVIA, [BOB], "Report", london(2026, 11, 9, 10, 0))
    doc = status(tmp_path, mail, london(2026, 11, 10, 10, 0))
    a = contact(doc, ALICE)
    silent = next(lp for lp in a["lapses"] if lp["kind"] == "silent")
    assert silent["facts"]["days"] == 40.0 and silent["since"] == "2026-10-01T09:00:00Z"
    assert a["days_since_outbound"] == 40.0
    assert "silent" not in kinds(contact(doc, BOB))  # users have no silence threshold by default
    assert client(doc, "Acme Ltd")["days_since_outbound_to_principal"] == 40.0


def test_an_internal_client_is_measured_like_any_other(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(IVAN, [SHARED], "Need the Q3 figures", london(2026, 11, 16, 9, 0))
    mail.add(OSCAR, [IVAN], "Re: Need the Q3 figures", london(2026, 11, 16, 9, 20), reply_to=q)
    doc = status(tmp_path, mail, london(2026, 11, 16, 12, 0))
    tax = client(doc, "Tax Division")
    assert tax["internal"] is True and tax["owner"] == OSCAR
    assert contact(doc, IVAN)["response_time"]["median_business_minutes"] == 20


def test_going_quiet_and_slowing(tmp_path: Path, mail: Mail) -> None:
    # Gina wrote every few days for two months, then stopped; Globex replies slowed this week.
    t = london(2026, 9, 1, 10, 0)
    for k in range(20):
        q = mail.add(GINA, [SHARED], f"Item {k}", t + timedelta(days=3 * k))
        mail.add(OSCAR, [GINA], f"Re: Item {k}", t + timedelta(days=3 * k, minutes=30), reply_to=q)
    now = london(2026, 11, 20, 16, 0)
    for k in range(4):  # this week: replies take 5 business hours
        q = mail.add(BOB, [SHARED], f"Week item {k}", london(2026, 11, 16 + k, 9, 0))
        mail.add(OLIVIA, [BOB], f"Re: Week item {k}", london(2026, 11, 16 + k, 14, 0), reply_to=q)
    for k in range(6):  # before: 30 minutes
        q = mail.add(BOB, [SHARED], f"Old item {k}", london(2026, 10, 5 + k, 9, 0))
        mail.add(OLIVIA, [BOB], f"Re: Old item {k}", london(2026, 10, 5 + k, 9, 30), reply_to=q)
    doc = status(tmp_path, mail, now)
    g = contact(doc, GINA)
    quiet = next(lp for lp in g["lapses"] if lp["kind"] == "going_quiet")
    assert quiet["facts"]["usual_gap_days"] == 3
    slowing = next(lp for lp in client(doc, "Acme Ltd")["lapses"] if lp["kind"] == "slowing")
    assert slowing["facts"]["recent_median_minutes"] == 300 and slowing["facts"]["baseline_median_minutes"] == 30
    assert not [lp for lp in client(doc, "Globex")["lapses"] if lp["kind"] == "slowing"]


def test_unowned_clients_are_lapses(tmp_path: Path, mail: Mail) -> None:
    extra = '\n[[clients]]\nname = "Orphan Co"\ndomains = ["orphan.example"]\n'
    doc = status(tmp_path, mail, london(2026, 11, 20, 12, 0), extra=extra)
    orphan = client(doc, "Orphan Co")
    assert {lp["facts"]["missing"] for lp in orphan["lapses"] if lp["kind"] == "unowned"} == {"owner", "principal"}


def test_now_replay_gives_identical_output_and_ignores_later_mail(tmp_path: Path, mail: Mail) -> None:
    q = mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    mail.add(ALICE, [SHARED], "Re: Budget", london(2026, 11, 17, 10, 0), reply_to=q)
    mail.add(OLIVIA, [ALICE], "Re: Budget", london(2026, 11, 18, 10, 0), reply_to=q)
    then = london(2026, 11, 17, 15, 0)
    first = status(tmp_path, mail, then)
    second = status(tmp_path, mail, then)
    assert first == second
    assert len(contact(first, ALICE)["waiting"]) == 2  # the reply of the 18th is in the future
    later = status(tmp_path, mail, london(2026, 11, 19, 10, 0))
    assert contact(later, ALICE)["waiting"] == []


def test_status_through_dovecot_and_postgres(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    q = "<dq1@acme.example>"
    dovecot.append(
        [build_message(sender=ALICE, to=[SHARED], subject="Via IMAP", date=london(2026, 11, 16, 10, 0), message_id=q)]
    )
    dovecot.append(
        [
            build_message(
                sender=OLIVIA,
                to=[ALICE],
                subject="Re: Via IMAP",
                date=london(2026, 11, 16, 11, 0),
                in_reply_to=q,
                references=[q],
            )
        ],
        folder="Sent",
    )
    cfg = write_config(tmp_path, db_url, dovecot)
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json", "--now", "2026-11-16T15:00:00Z"])
    assert r.exit_code == 0, r.output
    a = contact(json.loads(r.stdout), ALICE)
    assert a["response_time"]["median_business_minutes"] == 60 and a["waiting"] == []


def test_status_table_and_client_filter(tmp_path: Path, mail: Mail) -> None:
    mail.add(ALICE, [SHARED], "Budget", london(2026, 11, 16, 10, 0))
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root)
    runner.invoke(app, ["--config", str(cfg), "scan"])
    r = runner.invoke(
        app,
        ["--config", str(cfg), "status", "--now", "2026-11-18T10:00:00Z", "--client", "Acme Ltd"],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0 and "Alice Principal" in r.output and "Globex" not in r.output
    assert "unanswered" in r.output and "1 client(s)" in r.output
    r = runner.invoke(app, ["--config", str(cfg), "status", "--client", "Nope"])
    assert r.exit_code == 2 and "no such client" in r.output


def test_a_client_calendar_and_ics_holidays_change_business_time(tmp_path: Path, mail: Mail) -> None:
    from worker.care.evaluate import evaluate
    from worker.config import load_config
    from worker.ingest.run import prepare_store, run_scan

    ics = tmp_path / "holidays.ics"
    ics.write_text("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261116\r\nDTEND;VALUE=DATE:20261117\r\n"
                   "SUMMARY:Firm away day\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    extra = ('\n[[clients]]\nname = "Yankee Corp"\ndomains = ["yankee.example"]\nowner = "olivia@firm.example"\n'
             'contacts = [{ name = "Yara", email = "yara@yankee.example", role = "principal" }]\n'
             'calendar = { timezone = "America/New_York", hours = { mon = "09:00-17:00", tue = "09:00-17:00" } }\n')
    q1 = mail.add(ALICE, [SHARED], "London question", london(2026, 11, 17, 9, 0))
    mail.add(OLIVIA, [ALICE], "Re: London question", london(2026, 11, 17, 15, 0), reply_to=q1)
    # 14:00 London = 09:00 New York; the reply at 16:00 London is 2 New York business hours later.
    q2 = mail.add("yara@yankee.example", [SHARED], "NY question", london(2026, 11, 17, 14, 0))
    mail.add(OLIVIA, ["yara@yankee.example"], "Re: NY question", london(2026, 11, 17, 16, 0), reply_to=q2)
    q3 = mail.add(ALICE, [SHARED], "Away day", london(2026, 11, 16, 10, 0))
    mail.add(OLIVIA, [ALICE], "Re: Away day", london(2026, 11, 17, 10, 0), reply_to=q3)
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root, extra=extra)
    cfg = load_config(path, environ={"CAREWATCH__CALENDAR__HOLIDAYS_ICS": f'"{ics}"'})
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    picture = evaluate(store, cfg, london(2026, 11, 18, 9, 0).astimezone(UTC).replace(tzinfo=None))
    by_subject = {}
    for c in picture.clients:
        for r in c.responses:
            by_subject[(c.name, round(r.business_minutes))] = r
    assert ("Yankee Corp", 120) in by_subject  # the client's own time zone and hours
    # Mon 16 Nov is a holiday from the .ics: 10:00 Monday -> 10:00 Tuesday is one business hour.
    assert ("Acme Ltd", 60) in by_subject and ("Acme Ltd", 360) in by_subject


def test_status_json_is_streamed_byte_for_byte_as_one_document(tmp_path: Path, mail: Mail) -> None:
    """write_json (one client at a time) must give exactly the document to_json describes."""
    import io

    import orjson

    from worker.care.evaluate import evaluate
    from worker.config import load_config
    from worker.ingest.run import prepare_store

    q = mail.add(ALICE, [SHARED], "Budget \u201cQ4\u201d \\ \"draft\"\nline", london(2026, 11, 16, 10, 0))
    mail.add(ALICE, [SHARED], "Re: Budget", london(2026, 11, 17, 10, 0), reply_to=q)
    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root)
    assert runner.invoke(app, ["--config", str(cfg_path), "scan"]).exit_code == 0
    cfg = load_config(cfg_path)
    store, _ = prepare_store(cfg)
    for client_filter in (None, "Acme Ltd"):
        picture = evaluate(store, cfg, datetime(2026, 11, 18, 12, 0), client_filter=client_filter)
        buf = io.BytesIO()
        picture.write_json(buf)
        assert buf.getvalue() == orjson.dumps(picture.to_json(), option=orjson.OPT_INDENT_2)
        assert json.loads(buf.getvalue()) == picture.to_json()
    picture.clients = []
    buf = io.BytesIO()
    picture.write_json(buf)
    assert buf.getvalue() == orjson.dumps(picture.to_json(), option=orjson.OPT_INDENT_2)


@pytest.mark.parametrize("order", [["Sent", "INBOX"], ["INBOX", "Sent"]])
def test_a_reply_stored_before_the_message_it_answers_still_joins_by_subject(
        tmp_path: Path, mail: Mail, order: list[str], db_url: str) -> None:
    """A reply without references can be stored before its parent: a config that lists Sent
    first, a second mailbox scanned earlier, or a first scan whose INBOX failed while Sent was
    read. The reply still answers the wait, as it does when the parent came first: the latest
    question before it, not an older one with the same subject."""
    older = mail.add(ALICE, [SHARED], "Invoice 4411 query", london(2026, 11, 9, 9, 0))
    mail.add(ALICE, [SHARED], "Invoice 4411 query", london(2026, 11, 16, 9, 0))
    mail.add(OLIVIA, [ALICE], "RE: [EXT] invoice 4411 query", london(2026, 11, 16, 9, 45), refs=[], folder="Sent")
    cfg = set_folders(write_config(tmp_path, db_url, maildir=mail.root), *order)
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json", "--now", "2026-11-17T09:00:00Z"])
    a = contact(json.loads(r.stdout), ALICE)
    assert [w["message_id"] for w in a["waiting"]] == [older]
    assert a["response_time"]["count"] == 1 and a["response_time"]["median_business_minutes"] == 45


def test_upgrading_joins_a_subject_reply_that_an_older_version_left_alone(tmp_path: Path, mail: Mail) -> None:
    """Stores from before schema 0006 may hold such a reply on a thread of its own: the
    upgrade flags it and joins it to the question it answers, and the wait is answered."""
    import sqlite3

    q = mail.add(ALICE, [SHARED], "Invoice 4411 query", london(2026, 11, 16, 9, 0))
    mail.add(OLIVIA, [ALICE], "RE: invoice 4411 query", london(2026, 11, 16, 9, 45), refs=[], folder="Sent")
    mail.add(BOB, [SHARED], "Re: invoice 4411 query", london(2026, 11, 16, 10, 0), refs=[])  # Bob's own thread
    cfg = set_folders(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=mail.root), "Sent", "INBOX")
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    # The store as version 0005 left it: the reply on a thread of its own, the question waiting.
    with sqlite3.connect(tmp_path / "cw.db") as db:
        db.execute("DROP INDEX ix_message_subject_reply")
        db.execute("ALTER TABLE message DROP COLUMN subject_reply")
        db.execute("ALTER TABLE message DROP COLUMN ack_reason")  # schema 0007
        db.execute("ALTER TABLE message ADD COLUMN thread_key VARCHAR(1000) NOT NULL DEFAULT ''")  # until 0008
        db.execute("UPDATE message SET thread_id = 1 WHERE from_addr = ?", (OLIVIA,))
        db.execute("UPDATE message SET reply_at = NULL")
        db.execute("DELETE FROM episode")
        db.execute("UPDATE alembic_version SET version_num = '0005'")
        assert db.execute("SELECT count(DISTINCT thread_id) FROM message").fetchone() == (3,)

    # The next start (any command) migrates.
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json", "--now", "2026-11-17T09:00:00Z"])
    doc = json.loads(r.stdout)
    a = contact(doc, ALICE)
    assert a["waiting"] == [] and a["response_time"]["median_business_minutes"] == 45
    assert len(contact(doc, BOB)["waiting"]) == 1  # other people: not joined
    with sqlite3.connect(tmp_path / "cw.db") as db:
        assert db.execute("SELECT from_addr FROM message WHERE subject_reply ORDER BY 1").fetchall() == [
            (BOB,), (OLIVIA,)]
        threads = dict(db.execute("SELECT message_id, thread_id FROM message").fetchall())
    assert len(set(threads.values())) == 2 and threads[q] == threads["<m2@firm.example>"]


@pytest.mark.parametrize("chunk", [5000, 1], ids=["one chunk", "a message a chunk"])
@pytest.mark.parametrize("order", [["INBOX", "Sent"], ["Sent", "INBOX"]], ids=["question first", "reply first"])
def test_a_client_added_to_the_config_gets_its_subject_replies_joined(
        tmp_path: Path, mail: Mail, db_url: str, chunk: int, order: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mail with Initech was read before the firm listed Initech as a client. Threading by
    subject needs a client, so Olivia's reply without references was not joined to Hana's
    question then. Once Initech is in the config, the next start classifies the stored mail
    again and joins it as ingest would have: the question is answered, not waiting."""
    from worker.ingest import reclassify as reclassifying
    from worker.ingest import run as application

    hana = "hana@initech.example"
    q = mail.add(hana, [SHARED], "Audit dates", london(2026, 11, 16, 9, 0))
    mail.add(OLIVIA, [hana], "RE: Audit dates", london(2026, 11, 16, 10, 0), refs=[], folder="Sent")
    mail.add(hana, [SHARED], "Payroll", london(2026, 11, 16, 11, 0))  # not answered at all
    cfg = set_folders(write_config(tmp_path, db_url, maildir=mail.root), *order)
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    cfg.write_text(cfg.read_text() + f"""
[[clients]]
name = "Initech"
domains = ["initech.example"]
owner = "olivia@firm.example"
contacts = [{{ name = "Hana Principal", email = "{hana}", role = "principal" }}]
""")
    real = reclassifying.reclassify
    monkeypatch.setattr(application, "reclassify", lambda store, directory: real(store, directory, chunk))
    r = runner.invoke(app, ["--config", str(cfg), "status", "--json", "--now", "2026-11-17T09:00:00Z"])
    h = contact(json.loads(r.stdout), hana)
    assert [w["subject"] for w in h["waiting"]] == ["Payroll"]
    assert h["response_time"]["count"] == 1 and h["response_time"]["median_business_minutes"] == 60
    assert q not in [w["message_id"] for w in h["waiting"]]


def test_a_question_dated_after_its_delivery_is_answered_by_a_reply_sent_in_between(
        tmp_path: Path, mail: Mail) -> None:
    """Alice writes from Paris on a computer that stamps its local time as UTC (+0000), so in
    summer her mail is dated two hours late: her question says 11:00Z, it was delivered at
    09:00Z, and Olivia answered at 09:30Z. The reply counts, 30 minutes after delivery."""
    q = mail.add(ALICE, [SHARED], "Payroll", london(2026, 6, 15, 12, 0), delivered=london(2026, 6, 15, 10, 0))
    mail.add(OLIVIA, [ALICE], "Re: Payroll", london(2026, 6, 15, 10, 30), reply_to=q, folder="Sent")
    a = contact(status(tmp_path, mail, london(2026, 6, 16, 9, 0)), ALICE)
    assert a["waiting"] == [] and a["response_time"]["median_business_minutes"] == 30
    assert a["last_inbound_at"] == "2026-06-15T09:00:00Z"


def test_a_silence_never_broken_keeps_its_key_when_older_mail_is_stored(tmp_path: Path, mail: Mail) -> None:
    """A principal nobody at the firm ever wrote to is silent since their own first message;
    storing older mail later (a new folder, an import) moves neither that nor the alert's key,
    so the alert is not resolved and raised again."""
    mail.add(ALICE, [SHARED], "Hello", london(2026, 9, 1, 10, 0))
    mail.add(BOB, [SHARED], "Portal", london(2026, 10, 20, 10, 0))
    now = london(2026, 11, 16, 12, 0)
    doc = status(tmp_path, mail, now)
    before = next(lp for lp in contact(doc, ALICE)["lapses"] if lp["kind"] == "silent")
    assert before["since"] == "2026-09-01T09:00:00Z" and before["facts"]["never"]
    mail.add(BOB, [SHARED], "An old message, imported", london(2025, 3, 3, 10, 0))  # older than anything
    doc = status(tmp_path, mail, now)
    after = next(lp for lp in contact(doc, ALICE)["lapses"] if lp["kind"] == "silent")
    assert after["key"] == before["key"] and after["since"] == before["since"]


def test_going_quiet_counts_from_the_last_message_itself(tmp_path: Path, mail: Mail) -> None:
    """'Since Tue 20 Oct 01:00' for someone who last wrote at 10:00 came from UTC day numbers."""
    for day in range(1, 41, 4):  # every four days through September and into October
        mail.add(GINA, [SHARED], f"Note {day}", london(2026, 9, 1, 10, 0) + timedelta(days=day))
    last = london(2026, 9, 1, 10, 0) + timedelta(days=37)
    doc = status(tmp_path, mail, london(2026, 11, 20, 10, 0))
    quiet = next(lp for lp in contact(doc, GINA)["lapses"] if lp["kind"] == "going_quiet")
    assert quiet["since"] == last.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    days = (london(2026, 11, 20, 10, 0) - last).total_seconds() / 86400
    assert quiet["facts"]["current_gap_days"] == round(days, 1)


def test_a_principal_listed_today_is_not_silent_since_records_began(tmp_path: Path, mail: Mail) -> None:
    """Silence toward a contact nobody wrote to counts from the later of their first message and
    the day Carewatch first listed them: a client added to the config today is not 'silent
    for 70 days' today."""
    import sqlite3

    mail.add(ALICE, [SHARED], "Hello", london(2026, 9, 1, 10, 0))
    doc = status(tmp_path, mail, london(2026, 11, 16, 12, 0))
    assert "silent" in kinds(contact(doc, ALICE))  # listed before (unknown to this store): as before
    with sqlite3.connect(tmp_path / "cw.db") as db:  # as if the client had been listed on 10 November
        db.execute("UPDATE contact SET first_seen_at = '2026-11-10 09:00:00.000000' WHERE email = ?", (ALICE,))
    doc = status(tmp_path, mail, london(2026, 11, 16, 12, 0))
    assert "silent" not in kinds(contact(doc, ALICE))
    doc = status(tmp_path, mail, london(2026, 12, 14, 12, 0))  # 34 days after the listing
    silent = next(lp for lp in contact(doc, ALICE)["lapses"] if lp["kind"] == "silent")
    assert silent["since"] == "2026-11-10T09:00:00Z" and silent["key"].endswith(":never")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_subject_replies_read_together_thread_as_when_each_looks_back_alone(
        tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of new mail's subject replies (no references) look back through one query; the
    threads must be exactly those of one query each, whatever the order and the mix."""
    import random

    from sqlalchemy import create_engine, text

    from worker.store import threads

    rng = random.Random(seed)
    people = [ALICE, BOB, GINA]
    subjects = ["Budget 2027", "Invoice 4411", "Board pack", "Access"]
    mail = Mail(tmp_path / "Maildir")
    for _ in range(60):
        who, subject = rng.choice(people), rng.choice(subjects)
        when = london(2026, 11, 2) + timedelta(hours=rng.randrange(0, 20 * 24))
        if rng.random() < 0.5:
            mail.add(who, [SHARED], subject if rng.random() < 0.5 else f"Re: {subject}", when)
        else:
            mail.add(rng.choice([OLIVIA, OSCAR]), [who], f"RE: {subject}", when, folder="Sent", refs=[])

    def partition(db: Path, batched: bool) -> set[frozenset[str]]:
        with monkeypatch.context() as m:
            if not batched:
                m.setattr(threads.EarlierBySubject, "usable", staticmethod(lambda replies, window: False))
            cfg = write_config(tmp_path, f"sqlite:///{db}", maildir=mail.root)
            assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
        with create_engine(f"sqlite:///{db}").connect() as c:
            groups: dict[int, set[str]] = {}
            for mid, thread in c.execute(text("SELECT message_id, thread_id FROM message")):
                groups.setdefault(thread, set()).add(mid)
        return {frozenset(g) for g in groups.values()}

    together = partition(tmp_path / "together.db", batched=True)
    alone = partition(tmp_path / "alone.db", batched=False)
    assert together == alone
    assert any(len(g) > 2 for g in together)  # subject replies did join threads
