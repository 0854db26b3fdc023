"""One exception hierarchy for Carewatch, with named exit codes for the CLI."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only named in an annotation: no ssl import for every command's start
    import ssl


class ExitCode(IntEnum):
    OK = 0
    #: Unexpected failure: a bug; the traceback is logged.
    INTERNAL = 1
    #: The command line itself was wrong (click uses 2 as well).
    USAGE = 2
    #: The configuration file or a referenced file is invalid.
    CONFIG = 3
    #: A mailbox could not be read (connection, login, TLS).
    MAILBOX = 4
    #: The store (database) could not be opened or written.
    STORE = 5
    #: Email delivery failed.
    DELIVERY = 6
    #: Findings were reported (validate --strict).
    FINDINGS = 7


class CarewatchError(Exception):
    """Base class of every error Carewatch raises on purpose."""

    exit_code = ExitCode.INTERNAL


class UsageError(CarewatchError):
    """The command line asked for something that cannot be: a value in the wrong form, a
    mailbox, client or alert that does not exist. Exit 2, as for a wrong option."""

    exit_code = ExitCode.USAGE


class ConfigError(CarewatchError):
    """Raised when the configuration is invalid; carries every problem found, not just the first."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str], source: str = "", note: str = "") -> None:
        self.problems = problems
        self.source = source
        self.note = note
        head = f"{source}: " if source else ""
        super().__init__(
            f"{head}{len(problems)} problem(s) in the configuration:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + (f"\n{note}" if note else "")
        )


class MailboxError(CarewatchError):
    """Raised when a mailbox cannot be reached, logged into or read.

    `where` names the mailbox ("mailbox 'shared' (imap.example.com:993)") and `detail` says
    what went wrong; str() joins them. `validate --connect` prints the detail under a heading
    that already names the mailbox."""

    exit_code = ExitCode.MAILBOX

    def __init__(self, detail: str, where: str = "") -> None:
        super().__init__(detail, where)  # both in args: the fetch helper pickles these
        self.detail = detail
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}" if self.where else self.detail


class MailboxAuthError(MailboxError):
    """Raised when the mailbox server rejects the credentials (retrying will not help)."""


class FolderMissingError(MailboxError):
    """Raised when a configured folder does not exist on the server."""


class TemplateError(ConfigError):
    """Raised when an email template (usually a copy of one's own in templates_dir) cannot be
    rendered: a variable it names does not exist, or it does not parse."""


class StoreError(CarewatchError):
    """Raised when the database cannot be opened, migrated or written (locked, disk full)."""

    exit_code = ExitCode.STORE


class DeliveryError(CarewatchError):
    """Raised when an email cannot be handed to the SMTP server or written to the outbox folder."""

    exit_code = ExitCode.DELIVERY

    def __init__(self, message: str, permanent: bool = False, alarm: bool = False) -> None:
        super().__init__(message)
        #: The server refused this email for good (its recipients or its content).
        self.permanent = permanent
        #: A failure that waiting will not fix (login, TLS, the sender refused): say so loudly.
        self.alarm = alarm


def tls_failed(exc: ssl.SSLError, implicit: bool, setting: str, plain_ports: str, tls_port: int) -> str:
    """'TLS failed: <reason>', and for the commonest set-up slip (implicit TLS pointed at a
    port that speaks plain text first: OpenSSL's WRONG_VERSION_NUMBER) what to change."""
    hint = ""
    if exc.reason == "WRONG_VERSION_NUMBER" and implicit:
        hint = (f"; the server answered without TLS: is this a STARTTLS port ({plain_ports})? Then set "
                f"{setting} = \"starttls\", or use the implicit TLS port ({tls_port})")
    return f"TLS failed: {exc.reason or exc}{hint}"


class ReadInterrupted(MailboxError):
    """The connection was lost while a folder's messages were being read: the server went
    away, or one message makes it drop the connection (the scan then looks for that one)."""

    def __init__(self, detail: str, where: str = "", folder: str = "") -> None:
        super().__init__(detail, where)
        self.args = (detail, where, folder)  # pickled across the fetch helper like the others
        self.folder = folder
