"""`carewatch validate --connect`: try, before the first start, what the worker will do.

A config can be valid and still not work: a password that the server refuses, "Sent Items"
on a server whose sent folder is "Sent", a relay that refuses the owners' addresses, a
database that is not reachable. Each of those otherwise shows up later, one at a time, in
the worker's log. Here every mailbox logs in and opens its folders, the store is opened,
and the SMTP server is asked whether it takes mail from the sender to each recipient; then
everything is let go. Nothing is read, written, migrated or sent.
"""

from __future__ import annotations

import imaplib
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import CarewatchError, ConfigError, ExitCode, FolderMissingError, MailboxError, StoreError
from ..mailbox.base import first_entry, folder_hint, folders_to_scan, is_pattern
from .schema import Config, MailboxConfig
from .values import not_usable


@dataclass
class Check:
    """One thing tried: what, whether it worked, and what was seen ("INBOX: 1,234 messages")."""

    subject: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    #: Not failures, but worth knowing before the first start (no IDLE, no sent folder).
    notes: list[str] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.OK

    def fail(self, line: str, code: ExitCode) -> None:
        self.lines.append(line)
        if self.ok:
            self.ok, self.exit_code = False, code


def _detail(exc: CarewatchError) -> str:
    """What went wrong, without the "mailbox 'name' (host:port)" that the check's heading says."""
    return exc.detail if isinstance(exc, MailboxError) else str(exc)


def check_mailbox(mb: MailboxConfig) -> Check:
    """Log in, then open each configured folder read-only (STATUS: the number of messages)."""
    from ..mailbox import open_source

    check = Check(f"mailbox {mb.name!r} ({mb.kind}, {mb.where})")
    try:
        source = open_source(mb)
        source.open()
    except CarewatchError as exc:
        check.fail(_detail(exc), exc.exit_code)
        return check
    try:
        if mb.kind == "imap":
            check.lines.append(f"logged in as {mb.username!r}"
                               + (" with XOAUTH2" if mb.auth == "xoauth2" else ""))
        patterns = [f for f in mb.folders if is_pattern(f)]
        try:
            listed = source.list_folders()
        except CarewatchError:
            if patterns:
                raise  # the scan could not expand them either
            listed = []  # only for the notes below
        folders = folders_to_scan(mb.folders, listed)
        counts: dict[str, int] = {}
        missing: dict[str, FolderMissingError] = {}
        for folder in folders:
            try:
                counts[folder] = source.folder_status(folder).messages
            except FolderMissingError as exc:
                missing[folder] = exc
        # A pattern may match hundreds of client folders: one line for what each one found.
        delimiter = {f.name: f.delimiter for f in listed}
        brought_by = {f: first_entry(mb.folders, f, delimiter.get(f, "/")) for f in folders if f not in mb.folders}
        for entry in mb.folders:
            found = [entry] if not is_pattern(entry) else [f for f, e in brought_by.items() if e == entry]
            for f in found:
                if f in missing:
                    check.fail(missing[f].detail, missing[f].exit_code)
            if not is_pattern(entry):
                if entry in counts:
                    check.lines.append(f"{entry}: {counts[entry]:,} message(s)")
            elif found:
                check.lines.append(f"{entry}: {len(found)} folder(s), "
                                   f"{sum(counts.get(f, 0) for f in found):,} message(s)")
            else:  # e.g. "Clients/*" on a server whose delimiter is "." ("INBOX.Clients.Acme")
                check.notes.append(f"{entry!r} matches no folder now (drafts, junk and trash are never "
                                   f"matched); {folder_hint(entry, listed, folders)}")
        sent = [f.name for f in listed if f.special_use == "\\Sent"]
        if check.ok and sent and not set(sent) & set(folders):  # (a missing folder's hint names it)
            check.notes.append(f"the server's sent folder {sent[0]!r} is not in folders: the firm's replies "
                               "are only seen in the folders scanned")
        if mb.kind == "imap" and mb.idle and not getattr(source, "supports_idle", lambda: False)():
            check.notes.append(f"the server does not offer IDLE: new mail is seen every "
                               f"{mb.scan_interval_minutes:g} minute(s) (scan_interval_minutes)")
    except CarewatchError as exc:
        check.fail(_detail(exc), exc.exit_code)
    except (OSError, EOFError, imaplib.IMAP4.error) as exc:  # the server went away mid-check
        check.fail(f"connection lost: {exc or type(exc).__name__}", ExitCode.MAILBOX)
    finally:
        source.close()
    return check


def _writable_dir(path: Path) -> str | None:
    """None if files can be made in `path` (or in the folder that would be made for it),
    else why not."""
    probe = path
    try:
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
    except OSError as exc:  # a name too long, a folder that may not be looked into
        return f"cannot look at {probe}: {exc.strerror or exc}"
    why = not_usable(probe, "folder")
    if why:
        return why
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user (uid {os.getuid()})"
    return None


def check_store(config: Config) -> Check:
    """Connect to the database and read its schema revision. A SQLite file that does not exist
    yet is not created: its folder must be writable."""
    from ..store.db import SCHEMA_HEAD, describe_db_error, make_engine, schema_revision

    try:
        url = config.settings.store.connect_url()
    except ConfigError as exc:
        check = Check("store")
        check.fail("; ".join(exc.problems), ExitCode.CONFIG)
        return check
    try:
        u = make_url(url)
    except ArgumentError:  # make_engine says what is wrong with it, below
        u = None
    check = Check(f"store {u.render_as_string(hide_password=True) if u is not None else url}")
    if u is not None and u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        path = Path(u.database)
        try:
            exists = path.exists()
        except OSError as exc:
            check.fail(f"cannot look at {path}: {exc.strerror or exc}", ExitCode.STORE)
            return check
        if not exists:
            why = _writable_dir(path.parent)
            if why:
                check.fail(f"cannot create {path}: {why}", ExitCode.STORE)
            else:
                check.lines.append(f"{path} does not exist yet: it is created on the first start")
            return check
        if not os.access(path, os.R_OK | os.W_OK) or _writable_dir(path.parent):
            check.fail(f"{path} (or its folder, for the journal) is not writable by this user (uid {os.getuid()})",
                       ExitCode.STORE)
            return check
    try:
        engine = make_engine(url, config.settings.store.sqlite_cache_mib)
        try:
            revision = schema_revision(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        check.fail(str(exc), exc.exit_code)
        return check
    except Exception as exc:  # the driver's own error: unreachable, refused, unknown database
        check.fail(describe_db_error(exc), ExitCode.STORE)
        return check
    if revision == SCHEMA_HEAD:
        check.lines.append(f"connected; schema {revision}, the current one")
    elif revision is None:
        check.lines.append("connected; an empty database: the first start creates the tables")
    else:
        check.lines.append(f"connected; schema {revision}: the first start migrates it to {SCHEMA_HEAD}")
    return check


def recipients(config: Config) -> list[str]:
    """Everyone Carewatch may email: owners (and their backups, who are owners or partners)
    and partners, each once."""
    s = config.settings
    return list(dict.fromkeys([o.email.lower() for o in s.owners] + [p.email.lower() for p in s.partners]))


def check_delivery(config: Config) -> Check:
    """SMTP: connect, TLS, log in, MAIL FROM and a RCPT TO per recipient, then reset. File
    transport: the outbox folder can be written."""
    from ..notify.transport import SmtpTransport

    n = config.settings.notify
    if n.transport == "file" or n.smtp is None:
        check = Check(f"delivery to files in {n.dir}")
        why = _writable_dir(n.dir)
        if why:
            check.fail(f"cannot write {n.dir}: {why}", ExitCode.DELIVERY)
        else:
            check.lines.append("the folder can be written; nothing is emailed (notify.transport = \"file\")")
        return check
    smtp = SmtpTransport(n.smtp)
    check = Check(f"delivery by SMTP ({n.smtp.host}:{n.smtp.server_port}, {n.smtp.tls})")
    rcpts = recipients(config)
    try:
        refused = smtp.probe(n.from_address, rcpts)
    except CarewatchError as exc:
        check.fail(str(exc), exc.exit_code)
        return check
    check.lines.append(("logged in as " + repr(n.smtp.username)) if n.smtp.username else "connected (no login)")
    taken = len(rcpts) - len(refused)
    check.lines.append(f"sender {n.from_address!r} accepted; {taken} of {len(rcpts)} recipient(s) accepted; "
                       "nothing was sent")
    for rcpt, said in refused.items():
        check.fail(f"refuses recipient {rcpt!r}: {said}", ExitCode.DELIVERY)
    return check
