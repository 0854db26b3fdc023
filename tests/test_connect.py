"""`carewatch validate --connect` against the suite's own Dovecot, aiosmtpd and databases: what
a first start would meet, said before it, and nothing read, changed or sent."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import PG_URL, maildir_config, set_folders, write_config
from servers import Dovecot, SmtpSink, free_port
from test_failures import mails
from typer.testing import CliRunner

from worker.cli.main import app
from worker.mailbox.base import FolderInfo, FolderStatus, folder_hint
from worker.mailbox.imap import ImapSource

runner = CliRunner()


def smtp_config(tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch,
                folders: tuple[str, ...] = ("INBOX", "Sent"), db: str | None = None) -> Path:
    section = f'\n[notify.smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "none"\nallow_plaintext = true\n'
    p = write_config(tmp_path, db or f"sqlite:///{tmp_path / 'data' / 'cw.db'}", dovecot, extra=section)
    set_folders(p, *folders)
    monkeypatch.setenv("CAREWATCH__NOTIFY__TRANSPORT", '"smtp"')
    return p


def mail_files(d: Dovecot) -> list[str]:
    """The message files' names: Dovecot renames a file when its flags change (\\Seen)."""
    return sorted(p.name for sub in ("cur", "new") for p in (d.folder_path("INBOX") / sub).iterdir())


def connect(cfg: Path) -> tuple[int, str]:
    """The exit code and the output as one line (the test terminal wraps at 80 columns)."""
    r = runner.invoke(app, ["--config", str(cfg), "validate", "--connect"])
    return r.exit_code, " ".join(r.output.split())


def test_every_part_that_works_says_what_it_saw_and_nothing_is_changed(
        tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot.append(mails(3))
    before = mail_files(dovecot)
    cfg = smtp_config(tmp_path, dovecot, smtp, monkeypatch)
    code, out = connect(cfg)
    assert code == 0, out
    assert f"logged in as '{dovecot.user}'" in out
    assert "INBOX: 3 message(s)" in out and "Sent: 0 message(s)" in out
    assert "does not exist yet: it is created on the first start" in out
    assert "sender 'carewatch@firm.example' accepted; 3 of 3 recipient(s) accepted; nothing was sent" in out
    assert "failed" not in out and "note" not in out
    # Nothing sent, no store created, the mailbox untouched (Dovecot renames a file when a flag changes).
    assert smtp.messages == []
    assert not (tmp_path / "data").exists()
    assert mail_files(dovecot) == before


def test_a_folder_the_server_names_otherwise_gets_the_servers_names(
        tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exchange says "Sent Items", Dovecot "Sent", Gmail "[Gmail]/Sent Mail": the config
    written for one server names a folder another does not have."""
    dovecot.doveadm("mailbox", "create", "-u", dovecot.user, "Archive/2024")
    cfg = smtp_config(tmp_path, dovecot, smtp, monkeypatch, folders=("INBOX", "Sent Items", "archive/2024"))
    code, out = connect(cfg)
    assert code == 4, out
    assert "folder 'Sent Items' not found (the server says: Mailbox doesn't exist: Sent Items)" in out
    assert "the server marks 'Sent' as its sent folder" in out
    assert "its folders are 'INBOX', 'Archive/2024', 'Sent' (\\Sent)" in out
    assert "folder 'archive/2024' not found" in out and "did you mean 'Archive/2024'?" in out
    assert "INBOX: 0 message(s)" in out
    # The store and delivery were still tried, and said so.
    assert "3 of 3 recipient(s) accepted" in out
    # A scan meets the same folder with the same hint.
    r = runner.invoke(app, ["--config", str(cfg), "scan"])
    assert r.exit_code == 4 and "the server marks 'Sent' as its sent folder" in " ".join(r.output.split())


def test_a_maildir_folder_gets_the_same_hint(tmp_path: Path) -> None:
    cfg = maildir_config(tmp_path)
    set_folders(cfg, "INBOX", "sent")
    code, out = connect(cfg)
    assert code == 4 and "folder 'sent' not found" in out and "did you mean 'Sent'?" in out, out
    assert "its folders are 'INBOX', 'Sent'" in out


def test_no_sent_folder_scanned_is_a_note_not_a_failure(
        tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = smtp_config(tmp_path, dovecot, smtp, monkeypatch, folders=("INBOX",))
    code, out = connect(cfg)
    assert code == 0, out
    assert "note: the server's sent folder 'Sent' is not in folders" in " ".join(out.split())


def test_a_relay_that_refuses_an_owner_says_which_and_sends_nothing(
        tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    smtp.refuse_rcpt["paul@firm.example"] = "550 5.7.1 relaying denied"
    code, out = connect(smtp_config(tmp_path, dovecot, smtp, monkeypatch))
    assert code == 6, out
    assert "2 of 3 recipient(s) accepted" in out
    assert "refuses recipient 'paul@firm.example': 550 5.7.1 relaying denied" in out
    assert smtp.messages == []


def test_a_refused_login_and_an_unreachable_store_are_all_reported_in_one_run(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part is tried even when an earlier one fails; the exit code is the first failure's."""
    closed = free_port()
    cfg = write_config(tmp_path, f"postgresql://postgres@127.0.0.1:{closed}/test", dovecot)
    monkeypatch.setenv("CW_TEST_IMAP_PASSWORD", "Wr0ng-Secret-123")
    monkeypatch.setenv("CAREWATCH__NOTIFY__TRANSPORT", '"smtp"')
    cfg.write_text(cfg.read_text() + f'\n[notify.smtp]\nhost = "127.0.0.1"\nport = {closed}\n'
                                     'tls = "none"\nallow_plaintext = true\n')
    code, out = connect(cfg)
    assert code == 4, out
    assert "login refused" in out and "Wr0ng-Secret-123" not in out
    assert f"store postgresql://postgres@127.0.0.1:{closed}/test" in out and "cannot reach the database server" in out
    assert f"login refused for '{dovecot.user}': [AUTHENTICATIONFAILED] Authentication failed." in out
    assert f"SMTP 127.0.0.1:{closed}: cannot connect" in out
    assert out.count("failed mailbox 'shared'") == out.count("failed store") == out.count("failed delivery") == 1
    # The heading names the mailbox; its line says only what went wrong.
    assert out.count("mailbox 'shared'") == 1, out


@pytest.mark.private_dovecot
def test_a_server_that_dies_mid_check_is_a_failed_check_not_a_traceback(
        tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = smtp_config(tmp_path, dovecot, smtp, monkeypatch)
    status = ImapSource.folder_status

    def dying(self: ImapSource, folder: str) -> FolderStatus:
        dovecot.stop(kill=True)  # after the login, before the first folder
        return status(self, folder)

    monkeypatch.setattr(ImapSource, "folder_status", dying)
    code, out = connect(cfg)
    assert code == 4 and "failed mailbox 'shared'" in out and "connection lost" in out, out
    assert "3 of 3 recipient(s) accepted" in out  # the other checks still ran


@pytest.mark.skipif(PG_URL is None, reason="CAREWATCH_TEST_POSTGRES_URL not set")
def test_a_reachable_postgres_store_is_reported_with_its_schema(tmp_path: Path) -> None:
    cfg = maildir_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(f"sqlite:///{tmp_path / 'cw.db'}", str(PG_URL)))
    code, out = connect(cfg)
    assert code == 0 and "store postgresql://postgres@127.0.0.1" in out and "connected; " in out, out


def test_an_existing_sqlite_store_reports_its_schema_and_a_read_only_one_fails(tmp_path: Path) -> None:
    cfg = maildir_config(tmp_path)
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    code, out = connect(cfg)
    assert code == 0 and "connected; schema 0008, the current one" in out, out
    # An older store is reported as one the first start migrates.
    with sqlite3.connect(tmp_path / "cw.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0005'")
    code, out = connect(cfg)
    assert code == 0 and "schema 0005: the first start migrates it to 0008" in out, out
    if os.getuid() == 0:
        return  # root writes anyway
    (tmp_path / "cw.db").chmod(0o400)
    code, out = connect(cfg)
    assert code == 5 and "not writable by this user" in out, out


def test_folder_hint_lists_at_most_twenty_names() -> None:
    folders = [FolderInfo("INBOX")] + [FolderInfo(f"Project {k:02}") for k in range(30)] + \
        [FolderInfo("Sent Items", "\\Sent")]
    hint = folder_hint("Sent", folders, configured=["INBOX", "Sent"])
    assert hint.startswith("the server marks 'Sent Items' as its sent folder; its folders are 'INBOX', ")
    assert hint.endswith("'Project 18' and 12 more")
    assert folder_hint("Sent", [], ["Sent"]) == ""


def test_a_mailbox_error_keeps_where_and_what_apart_through_the_fetch_helper_pickle() -> None:
    """The fetch helper sends its failures to the scan pickled; the mailbox and the detail
    must both arrive, for the scan's log line and for `--connect`'s."""
    import pickle

    from worker.errors import FolderMissingError, MailboxError

    sent = FolderMissingError("folder 'Sent Items' not found", where="mailbox 'shared' (imap.example:993)")
    got = pickle.loads(pickle.dumps(sent))
    assert type(got) is FolderMissingError
    assert (got.where, got.detail) == ("mailbox 'shared' (imap.example:993)", "folder 'Sent Items' not found")
    assert str(got) == "mailbox 'shared' (imap.example:993): folder 'Sent Items' not found"
    nowhere = MailboxError("Google Workspace XOAUTH2 needs google-auth")
    assert str(nowhere) == "Google Workspace XOAUTH2 needs google-auth" and nowhere.where == ""
