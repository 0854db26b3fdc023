"""Which folders a scan reads: patterns ("Clients/*") for mail filed by client, folders that
come and go on the server, and /healthz looking only at the folders the config asks for."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import maildir_config, set_folders, write_config
from servers import Dovecot
from sqlalchemy import select, update
from sqlmodel import col

from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.mailbox.base import FolderInfo, folder_selected, folders_to_scan
from worker.store.models import FolderState, Message
from worker.synth import build_message

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def mail(key: str, sender: str = "alice@acme.example", to: str = "shared@firm.example") -> bytes:
    return build_message(sender=sender, to=[to], subject=f"About {key}", date=T0,
                         message_id=f"<{key}@test>")


def stored(store) -> set[str]:  # type: ignore[no-untyped-def]
    with store.session() as db:
        return set(db.execute(select(col(Message.message_id))).scalars())


def states(store) -> set[str]:  # type: ignore[no-untyped-def]
    with store.session() as db:
        return set(db.execute(select(col(FolderState.folder))).scalars())


LISTED = [FolderInfo("INBOX"), FolderInfo("Clients/Acme"), FolderInfo("Clients/Globex"),
          FolderInfo("Clients/Globex/2025"), FolderInfo("Drafts", "\\Drafts"), FolderInfo("Junk", "\\Junk"),
          FolderInfo("Sent", "\\Sent"), FolderInfo("Trash", "\\Trash"), FolderInfo("[Gmail]/All Mail", "\\All")]


def test_star_matches_every_level_and_percent_one() -> None:
    assert folders_to_scan(["INBOX", "Clients/*"], LISTED) == \
        ["INBOX", "Clients/Acme", "Clients/Globex", "Clients/Globex/2025"]
    assert folders_to_scan(["Clients/%"], LISTED) == ["Clients/Acme", "Clients/Globex"]
    dotted = [FolderInfo("INBOX", None, "."), FolderInfo("Clients.Acme", None, "."),
              FolderInfo("Clients.Acme.Old", None, ".")]
    assert folders_to_scan(["Clients.%"], dotted) == ["Clients.Acme"]


def test_a_pattern_skips_drafts_junk_trash_and_copies_but_a_name_does_not() -> None:
    """A draft to a client was never sent: read as outbound mail it would pass for a reply."""
    assert folders_to_scan(["*"], LISTED) == ["INBOX", "Clients/Acme", "Clients/Globex", "Clients/Globex/2025",
                                              "Sent"]
    assert folders_to_scan(["Sent", "*", "Trash"], LISTED) == ["Sent", "INBOX", "Clients/Acme", "Clients/Globex",
                                                               "Clients/Globex/2025", "Trash"]
    assert folders_to_scan(["INBOX", "Missing"], LISTED) == ["INBOX", "Missing"]  # a name stays, to be reported


def test_folder_selected_by_name_or_pattern() -> None:
    assert folder_selected(["INBOX", "Clients/*"], "Clients/Acme")
    assert folder_selected(["INBOX", "Clients/*"], "INBOX")
    assert not folder_selected(["INBOX", "Clients/*"], "Sent")
    assert not folder_selected(["Clients/%"], "Clients/Acme/Old")


def test_patterns_read_client_folders_as_they_come_and_go(
        tmp_path: Path, dovecot: Dovecot, caplog: pytest.LogCaptureFixture) -> None:
    for folder in ("Clients/Acme", "Clients/Globex", "Drafts", "Junk"):
        dovecot.doveadm("mailbox", "create", "-u", dovecot.user, folder)
    dovecot.append([mail("in")])
    dovecot.append([mail("acme")], "Clients/Acme")
    dovecot.append([mail("globex", sender="gina@globex.example")], "Clients/Globex")
    dovecot.append([mail("draft", sender="olivia@firm.example", to="alice@acme.example")], "Drafts")
    dovecot.append([mail("junk", sender="win@prize.example")], "Junk")
    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot)
    set_folders(cfg_path, "INBOX", "Sent", "*")
    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)

    rep = run_scan(cfg, store, directory)
    assert rep.ok, rep.errors
    assert [f.folder for f in rep.folders] == ["INBOX", "Sent", "Clients/Acme", "Clients/Globex"]
    assert stored(store) == {"<in@test>", "<acme@test>", "<globex@test>"}  # no draft, no junk

    # A client's folder is added and another one deleted on the server.
    dovecot.doveadm("mailbox", "create", "-u", dovecot.user, "Clients/Initech")
    dovecot.append([mail("initech", sender="ian@initech.example")], "Clients/Initech")
    dovecot.doveadm("mailbox", "delete", "-u", dovecot.user, "-s", "Clients/Acme")
    with caplog.at_level(logging.INFO, logger="worker.ingest"):
        rep = run_scan(cfg, store, directory)
    assert rep.ok, rep.errors
    assert [(f.folder, f.stored) for f in rep.folders] == [("INBOX", 0), ("Sent", 0), ("Clients/Globex", 0),
                                                           ("Clients/Initech", 1)]
    assert "<acme@test>" in stored(store) and "<initech@test>" in stored(store)  # messages are kept
    assert "Clients/Acme" not in states(store)  # its state would be stale for ever
    assert "folder 'Clients/Acme' is no longer on the server" in caplog.text


@pytest.mark.private_dovecot
def test_a_mailbox_level_error_is_recorded_on_the_folders_a_pattern_found(
        tmp_path: Path, dovecot: Dovecot) -> None:
    dovecot.doveadm("mailbox", "create", "-u", dovecot.user, "Clients/Acme")
    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot)
    set_folders(cfg_path, "INBOX", "Clients/*")
    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).ok
    dovecot.stop()
    assert not run_scan(cfg, store, directory).ok
    with store.session() as db:
        rows = db.execute(select(col(FolderState.folder), col(FolderState.last_error))).all()
    errors: dict[str, str | None] = dict(rows)
    assert set(errors) == {"INBOX", "Clients/Acme"} and all("cannot connect" in (e or "") for e in errors.values())


def test_patterns_work_on_a_maildir_too(tmp_path: Path) -> None:
    cfg_path = maildir_config(tmp_path)
    acme = tmp_path / "md" / ".Clients.Acme"
    for sub in ("cur", "new", "tmp"):
        (acme / sub).mkdir(parents=True)
    (acme / "cur" / "1.host:2,S").write_bytes(mail("acme"))
    set_folders(cfg_path, "INBOX", "Clients/*")
    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    assert rep.ok and [f.folder for f in rep.folders] == ["INBOX", "Clients/Acme"]
    assert stored(store) == {"<acme@test>"}


def health_with(cfg_path: Path, *folders: str, scan: bool = False, sent_read: timedelta | None = None
                ) -> tuple[bool, dict]:
    """/healthz's answer for the config with these folders, after a scan and with Sent last
    read that long ago, if asked."""
    from worker.service.worker import Worker

    w = Worker(load_config(set_folders(cfg_path, *folders)), metrics_port=-1)
    try:
        if scan:
            assert run_scan(w.config, w.store, w.directory).ok
        if sent_read is not None:
            with w.store.session() as db:
                db.execute(update(FolderState).where(col(FolderState.folder) == "Sent")
                           .values(last_ok_at=datetime.now(UTC).replace(tzinfo=None) - sent_read))
                db.commit()
        ok, detail = w.health()
        return ok, detail["mailboxes"]["shared"]
    finally:
        w.store.dispose()


def test_health_looks_only_at_the_folders_the_config_asks_for(tmp_path: Path) -> None:
    """A folder taken out of the config keeps its state (to resume if it comes back); its old
    last_ok_at made /healthz say 503 for ever."""
    cfg_path = maildir_config(tmp_path, [mail("in")])
    assert health_with(cfg_path, "INBOX", "Sent", scan=True)[0]
    ok, shared = health_with(cfg_path, "INBOX", "Sent", sent_read=timedelta(days=2))
    assert not ok and shared["stale_folders"] == ["Sent"]
    ok, shared = health_with(cfg_path, "INBOX")
    assert ok and shared["ok"] and shared["stale_folders"] == [] and shared["last_ok"]
    # A folder the config names that has never been read is stale too (a new folder, or a typo).
    ok, shared = health_with(cfg_path, "INBOX", "Archive")
    assert not ok and shared["stale_folders"] == ["Archive"]


def test_validate_connect_expands_patterns(tmp_path: Path, dovecot: Dovecot) -> None:
    from typer.testing import CliRunner

    from worker.cli.main import app

    for name in ("Acme", "Globex"):
        dovecot.doveadm("mailbox", "create", "-u", dovecot.user, f"Clients/{name}")
        dovecot.append([mail(name)], f"Clients/{name}")
    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot)
    set_folders(cfg_path, "INBOX", "Sent", "Clients/*", "Archive/*")
    r = CliRunner().invoke(app, ["--config", str(cfg_path), "validate", "--connect"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, out
    # One line for what a pattern found, however many client folders it matched.
    assert "INBOX: 0 message(s) Sent: 0 message(s) Clients/*: 2 folder(s), 2 message(s)" in out
    assert "the server marks 'Sent' as its sent folder" not in out  # Sent is configured
    assert "note: 'Archive/*' matches no folder now (drafts, junk and trash are never matched); " \
           "its folders are 'INBOX', 'Clients/Acme', 'Clients/Globex', 'Sent' (\\Sent)" in out


def test_status_and_check_say_when_the_mail_they_count_is_not_read_or_out_of_date(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from worker.cli.main import app

    runner = CliRunner()
    cfg = maildir_config(tmp_path, [mail("in")])
    never = "note: mailbox 'shared' has not been read yet: run `carewatch scan` (or add --scan)"
    for cmd in (["status"], ["status", "--json"], ["check", "--dry-run"]):
        r = runner.invoke(app, ["--config", str(cfg), *cmd])
        assert r.exit_code == 0 and never in " ".join(r.output.split()), r.output
        if "--json" in cmd:
            assert json.loads(r.stdout)["messages_considered"] == 0  # the note is on stderr
    r = runner.invoke(app, ["--config", str(cfg), "status", "--scan"])
    assert r.exit_code == 0 and "note" not in r.output, r.output
    # Three days on, with no worker reading the mailbox.
    later = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = runner.invoke(app, ["--config", str(cfg), "status", "--now", later])
    assert "note: mailbox 'shared' was last read 3 days ago: newer mail is not counted" in " ".join(r.output.split())
    # A replay of a moment before the scan says nothing.
    r = runner.invoke(app, ["--config", str(cfg), "status", "--now", "2026-11-01T10:00:00Z"])
    assert r.exit_code == 0 and "note" not in r.output, r.output


def test_contacts_writing_and_the_firm_never_seen_replying_is_called_out(
        tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The commonest wrong set-up: the sent folder (or the owners' own mailboxes) not scanned.
    Every contact then looks unanswered, and the first check alerts every owner."""
    from typer.testing import CliRunner

    from worker.cli.main import app
    from worker.service.worker import Worker

    now = datetime.now(UTC).replace(microsecond=0)
    questions = [build_message(sender="alice@acme.example", to=["shared@firm.example"], subject=f"Question {k}",
                               date=now - timedelta(days=1, minutes=k), message_id=f"<q{k}@test>")
                 for k in range(20)]
    cfg = maildir_config(tmp_path, questions, db_url)
    sent = tmp_path / "md" / ".Sent" / "cur"
    w = Worker(load_config(cfg), metrics_port=-1)
    try:
        with caplog.at_level(logging.WARNING):
            w.scan_job("shared")
            (tmp_path / "md" / "cur" / "late.host:2,").write_bytes(
                build_message(sender="alice@acme.example", to=["shared@firm.example"], subject="One more",
                              date=now - timedelta(minutes=5), message_id="<late@test>"))
            w.scan_job("shared")  # stores mail and checks again, but logs once a day at most
        warned = [r.getMessage() for r in caplog.records if "none from the firm" in r.getMessage()]
        assert len(warned) == 1, warned
        assert warned[0].startswith("20 or more messages from contacts in the last 30 days"), warned
        ok, detail = w.health()
        assert ok and detail["warnings"] == warned  # worth knowing; the worker still does its job
        assert w.metrics.registry.get_sample_value("carewatch_replies_not_seen") == 1
        r = CliRunner().invoke(app, ["--config", str(cfg), "status"])
        assert "the firm's replies are not in the folders scanned" in " ".join(r.output.split())

        # The sent folder fills (say, Exchange's sent-as copy turned on): the next scan clears it.
        (sent / "r0.host:2,S").write_bytes(
            build_message(sender="olivia@firm.example", to=["alice@acme.example"], subject="Re: Question 0",
                          date=now - timedelta(hours=1), message_id="<r0@test>", in_reply_to="<q0@test>"))
        w.scan_job("shared")
        assert "warnings" not in w.health()[1]
        assert w.metrics.registry.get_sample_value("carewatch_replies_not_seen") == 0
    finally:
        w.store.dispose()
    r = CliRunner().invoke(app, ["--config", str(cfg), "status"])
    assert r.exit_code == 0 and "note" not in r.output, r.output


def maildir_folder(cfg_path: Path, name: str, *raws: bytes) -> None:
    """Make folder `name` ("Clients/Acme") in the config's Maildir, holding `raws`."""
    folder = cfg_path.parent / "md" / ("." + name.replace("/", "."))
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k, raw in enumerate(raws):
        (folder / "cur" / f"{k}.host:2,").write_bytes(raw)


def test_a_pattern_that_matches_no_folder_is_named_by_scan_status_and_healthz(tmp_path: Path) -> None:
    """"Clients/*" on a server whose client folders are named otherwise reads nothing, and
    the scan used to say all was well. Now each place that reports on reading says so, and
    says nothing before anything was listed (nobody knows yet)."""
    from typer.testing import CliRunner

    from worker.cli.main import app

    runner = CliRunner()
    cfg = set_folders(maildir_config(tmp_path, [mail("in")]), "Clients/*")
    said = "mailbox 'shared': 'Clients/*' matches no folder on the server, so nothing is read through it"
    never = "mailbox 'shared' has not been read yet"

    ok, shared = health_with(cfg, "Clients/*")
    assert not ok and shared["unmatched_patterns"] == []  # never listed: not known yet
    r = runner.invoke(app, ["--config", str(cfg), "status"])
    assert never in " ".join(r.output.split()) and "matches no folder" not in r.output, r.output

    r = runner.invoke(app, ["--config", str(cfg), "scan"])
    assert r.exit_code == 0 and f"note: {said}" in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["--config", str(cfg), "scan", "--json"])
    assert json.loads(r.stdout)["unmatched_patterns"] == {"shared": ["Clients/*"]}
    r = runner.invoke(app, ["--config", str(cfg), "status"])
    out = " ".join(r.output.split())
    assert said in out and never not in out, r.output  # a scan has run: "run scan" would mislead
    ok, shared = health_with(cfg, "Clients/*")
    assert not ok and shared["unmatched_patterns"] == ["Clients/*"] and shared["stale_folders"] == []

    # Beside a folder that is read, the mailbox is healthy and the pattern is still named.
    ok, shared = health_with(cfg, "INBOX", "Clients/*", scan=True)
    assert ok and shared["unmatched_patterns"] == ["Clients/*"]

    # The client folders appear: the next scan reads them and the notes go.
    maildir_folder(cfg, "Clients/Acme", mail("acme"))
    set_folders(cfg, "Clients/*")
    r = runner.invoke(app, ["--config", str(cfg), "scan", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unmatched_patterns"] == {}, r.output
    r = runner.invoke(app, ["--config", str(cfg), "status"])
    assert "note" not in r.output, r.output
    ok, shared = health_with(cfg, "Clients/*")
    assert ok and shared["unmatched_patterns"] == []


def test_a_scan_stopped_before_a_matched_folder_does_not_call_its_pattern_unmatched(tmp_path: Path) -> None:
    """Every folder a pattern matches gets its scan state when the folders are listed, before
    it is read: a scan stopped early leaves it unread (stale), not unknown."""
    import threading

    from worker.ingest.scan import Ingestor

    cfg_path = set_folders(maildir_config(tmp_path, [mail("in")]), "INBOX", "Clients/*")
    maildir_folder(cfg_path, "Clients/Acme", mail("acme"))
    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)
    stop = threading.Event()
    rep = Ingestor(store, cfg, directory, stop=stop, on_batch=lambda _: stop.set()).scan()
    assert [f.folder for f in rep.folders] == ["INBOX"]  # stopped after INBOX's one batch
    assert states(store) == {"INBOX", "Clients/Acme"}
    ok, shared = health_with(cfg_path, "INBOX", "Clients/*")
    assert not ok and shared["unmatched_patterns"] == [] and shared["stale_folders"] == ["Clients/Acme"]


def test_the_worker_warns_once_when_a_pattern_stops_matching_and_says_when_it_matches_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from worker.service.worker import Worker

    cfg_path = set_folders(maildir_config(tmp_path, [mail("in")]), "INBOX", "Clients/*")
    w = Worker(load_config(cfg_path), metrics_port=-1)
    try:
        with caplog.at_level(logging.INFO, logger="worker.service"):
            w.scan_job("shared")
            w.scan_job("shared")  # every few minutes: one warning, not one a scan
            warned = [r for r in caplog.records if "matches no folder" in r.getMessage()]
            assert [r.levelno for r in warned] == [logging.WARNING]
            assert "mailbox shared: 'Clients/*' matches no folder on the server" in warned[0].getMessage()
            maildir_folder(cfg_path, "Clients/Acme", mail("acme"))
            w.scan_job("shared")
        assert "every folder pattern matches a folder on the server again" in caplog.text
    finally:
        w.store.dispose()


def test_a_folder_name_imapclient_cannot_parse_is_read_and_never_stops_the_others(
        tmp_path: Path, dovecot: Dovecot) -> None:
    """Anyone who can make a folder in the shared mailbox can name it "Clients/a[b"; imapclient's
    LIST parser refuses that name ("No closing ']'"). The folder list is then read line by line,
    and every other folder is read as before."""
    for folder in ("Clients/Acme", "Clients/a[b", "Clients/Jürgen & Söhne"):
        dovecot.doveadm("mailbox", "create", "-u", dovecot.user, folder)
    dovecot.append([mail("in")])
    dovecot.append([mail("acme")], "Clients/Acme")
    dovecot.append([mail("odd")], "Clients/a[b")
    dovecot.append([mail("umlaut")], "Clients/Jürgen & Söhne")
    cfg_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot)
    set_folders(cfg_path, "INBOX", "Clients/*")
    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    got = {f.folder for f in rep.folders}
    assert {"INBOX", "Clients/Acme", "Clients/a[b", "Clients/Jürgen & Söhne"} <= got and rep.ok, rep.errors
    assert {"<in@test>", "<acme@test>", "<umlaut@test>", "<odd@test>"} <= stored(store)
    assert all("No closing" not in e for e in rep.errors), rep.errors
