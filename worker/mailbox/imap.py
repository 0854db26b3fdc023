"""IMAP through imapclient. Read-only by construction: folders are opened with EXAMINE
(readonly=True) and bodies are fetched with BODY.PEEK, so no \\Seen flag is ever set."""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import imapclient
import imapclient.imap_utf7
from imapclient.exceptions import IMAPClientError, LoginError, ProtocolError

from .. import defaults
from ..deadline import Watchdog
from ..errors import FolderMissingError, MailboxAuthError, MailboxError, tls_failed
from ..ingest.headers import FETCH_FIELDS
from .base import FolderInfo, FolderStatus, Item, MailboxSource, RawMessage, UidItems
from .imap_answers import (
    _IDATE_RE,
    HEADER,
    TEXT,
    Listed,
    folder_infos,
    list_lines,
    parse_internaldate,
)
from .imap_pipeline import Answered, InFlight, Pipeline, chunk_by_command_length
from .imap_wire import Wire, imaplib_of, wire_of

log = logging.getLogger(__name__)

HEADER_ITEM = ("BODY.PEEK[HEADER.FIELDS (" + " ".join(f.upper() for f in FETCH_FIELDS) + ")]").encode()
SNIPPET_ITEM = f"BODY.PEEK[TEXT]<0.{defaults.SNIPPET_BYTES}>".encode()
#: Both at once, for folders where most messages want their snippet (see ingest/prepare.py).
HEADER_AND_SNIPPET_ITEM = HEADER_ITEM + b" " + SNIPPET_ITEM


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs, or the given CA bundle."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _reason(exc: Exception) -> str:
    """What the server said, without imapclient's and Dovecot's dressing: "Mailbox doesn't
    exist: Gone", not "status failed: Mailbox doesn't exist: Gone (0.001 + 0.000 secs)."."""
    text = str(exc)
    m = re.search(r"(?:^|\[)b(['\"])(.*)\1\]?$", text, re.S)  # "... error: BAD [b'...']", "b'...'"
    text = m.group(2) if m else text
    text = re.sub(r"^[a-z]+ failed: ", "", text)
    return re.sub(r"\s*\(\d+\.\d+(?: \+ \d+\.\d+)* secs\)\.?$", "", text)


def _lookup(data: dict[bytes, Any], prefix: bytes) -> Any:
    """FETCH response keys drop .PEEK and some servers quote field names: match by prefix."""
    for k, v in data.items():
        if isinstance(k, bytes) and k.startswith(prefix):
            return v
    return None


class ImapSource(MailboxSource):
    def __init__(self, name: str, host: str, port: int, tls: str, username: str,
                 password: Callable[[], str] | None = None,
                 oauth_token: Callable[[], str] | None = None, ca_file: Path | None = None,
                 timeout: float = defaults.IMAP_TIMEOUT_SECONDS,
                 max_command_bytes: int = defaults.FETCH_MAX_COMMAND_BYTES,
                 configured: Sequence[str] = ()) -> None:
        self.name = name
        self.configured = configured
        self.host = host
        self.tls = tls
        self.port = port
        self.username = username
        self._password = password
        self._oauth_token = oauth_token
        self.ca_file = ca_file
        self.timeout = timeout
        self.max_command_bytes = max_command_bytes
        self.client: imapclient.IMAPClient | None = None
        self._wire_of: Any = None  # the client self._wire was made for
        self._wire: Wire | None = None
        self._selected: str | None = None
        self.pipeline = Pipeline()
        self.capabilities: tuple[bytes, ...] = ()

    def _where(self) -> str:
        return f"mailbox {self.name!r} ({self.host}:{self.port})"

    @contextlib.contextmanager
    def _answered_in_time(self, what: str | None, client: imapclient.IMAPClient | None = None,
                          seconds: float | None = None) -> Iterator[None]:
        """A command answered within `seconds` (by default IMAP_COMMAND_TIMEOUTS x
        timeout_seconds) and ended by a stop request. The socket's timeout catches a server
        that goes silent; one that trickles its answer to LOGIN, LIST, EXAMINE, STATUS, SEARCH
        or FETCH would hold the scan, and a stop, for ever. (Pipelined FETCHes have theirs in
        _settle.) `what` names the command in the message ("its answer to LIST")."""
        c = client or self.client
        if seconds is None:
            seconds = self.timeout * defaults.IMAP_COMMAND_TIMEOUTS
        with Watchdog(lambda: self._socket(c), seconds, self.stop,
                      what="its answer" if what is None else f"its answer to {what}") as watchdog:
            try:
                yield
            except (imaplib.IMAP4.error, OSError, EOFError):
                if watchdog.fired:
                    self.gave_up = watchdog.reason
                    raise MailboxError(watchdog.reason, where=self._where()) from None
                raise

    def open(self) -> None:
        try:
            ctx = tls_context(self.ca_file) if self.tls != "none" else None
            c = imapclient.IMAPClient(self.host, port=self.port, ssl=self.tls == "implicit",
                                      ssl_context=ctx, timeout=self.timeout)
            c.normalise_times = False  # keep INTERNALDATE's zone
            with self._answered_in_time("the login", c):
                if self.tls == "starttls":
                    c.starttls(ctx)
                if self._oauth_token is not None:
                    c.oauth2_login(self.username, self._oauth_token())
                else:
                    assert self._password is not None
                    c.login(self.username, self._password())
                self.capabilities = tuple(c.capabilities())
        except LoginError as exc:
            raise MailboxAuthError(f"login refused for {self.username!r}: "
                                   f"{_reason(exc)}", where=self._where()) from None
        except ssl.SSLCertVerificationError as exc:
            raise MailboxError(f"TLS certificate not trusted ({exc.verify_message}); set ca_file to your CA "
                               "bundle if the server uses a private CA", where=self._where()) from None
        except ssl.SSLError as exc:
            raise MailboxError(tls_failed(exc, self.tls == "implicit", "tls", "143", 993), where=self._where()) \
                from None
        except (OSError, IMAPClientError, imapclient.imaplib.IMAP4.error) as exc:
            raise MailboxError(f"cannot connect: {exc}", where=self._where()) from None
        self.client = c
        self._selected = None

    def close(self) -> None:
        self.pipeline.clear()  # unread responses go with the connection
        c, self.client = self.client, None
        if c is None:
            return
        try:
            with self._answered_in_time("LOGOUT", c):
                c.logout()
        except Exception:  # the connection may already be gone; closing must never raise
            with contextlib.suppress(Exception):
                c.shutdown()

    @property
    def c(self) -> imapclient.IMAPClient:
        if self.client is None:
            raise MailboxError("not connected", where=self._where())
        return self.client

    @property
    def wire(self) -> Wire | None:
        """The fast FETCH path's door into the connection; None: imapclient's fetch is used."""
        if self._wire_of is not self.client:
            self._wire_of, self._wire = self.client, wire_of(self.client) if self.client is not None else None
            if self.client is not None and self._wire is None:
                log.info("%s: this Python's imaplib or this imapclient is not the one the fast reader knows; "
                         "using imapclient's fetch (slower, the same results)", self._where())
        return self._wire

    def _socket(self, client: imapclient.IMAPClient | None = None) -> Any:
        """The socket of `client` (this source's connection by default), for a watchdog to
        shut; None if there is none."""
        return getattr(imaplib_of(client or self.client), "sock", None)

    def _select(self, folder: str) -> dict[bytes, Any]:
        self._settle()
        # FETCHes still in flight were abandoned (a scan stopped early): forget their answers.
        self.pipeline.clear()
        try:
            with self._answered_in_time("EXAMINE"):
                info = self.c.select_folder(folder, readonly=True)
        except imaplib.IMAP4.abort:
            raise  # the connection is gone (imapclient's errors include it): not a missing folder
        except IMAPClientError as exc:
            raise FolderMissingError(f"cannot open folder {folder!r} (the server says: {_reason(exc)})"
                                     f"{self.not_found_hint(folder)}", where=self._where()) from None
        self._selected = folder
        return info

    def folder_status(self, folder: str) -> FolderStatus:
        self._settle()
        try:
            with self._answered_in_time("STATUS"):
                st = self.c.folder_status(folder, [b"UIDNEXT", b"UIDVALIDITY", b"MESSAGES"])
        except imaplib.IMAP4.abort:
            raise  # the connection is gone: not a missing folder
        except ProtocolError:
            # The answer echoes the name, and imapclient's parser refuses some names
            # ("Clients/a[b"): read the three numbers ourselves.
            return self._status_raw(folder)
        except IMAPClientError as exc:
            raise FolderMissingError(f"folder {folder!r} not found (the server says: {_reason(exc)})"
                                     f"{self.not_found_hint(folder)}", where=self._where()) from None
        return FolderStatus(uidvalidity=int(st[b"UIDVALIDITY"]), uidnext=int(st[b"UIDNEXT"]),
                            messages=int(st[b"MESSAGES"]))

    def _status_raw(self, folder: str) -> FolderStatus:
        quoted = b'"' + imapclient.imap_utf7.encode(folder).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        try:
            with self._answered_in_time("STATUS"):
                typ, data = imaplib_of(self.c).status(quoted.decode("ascii"), "(UIDNEXT UIDVALIDITY MESSAGES)")
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise FolderMissingError(f"folder {folder!r} not found (the server says: {_reason(exc)})",
                                     where=self._where()) from None
        text = b" ".join(d for d in data if isinstance(d, bytes)) if typ == "OK" else b""
        found = {k.upper(): int(v) for k, v in re.findall(rb"(UIDNEXT|UIDVALIDITY|MESSAGES) (\d+)", text, re.I)}
        if len(found) < 3:
            raise FolderMissingError(f"folder {folder!r}: the server's STATUS answer cannot be read: {data!r}",
                                     where=self._where())
        return FolderStatus(uidvalidity=found[b"UIDVALIDITY"], uidnext=found[b"UIDNEXT"], messages=found[b"MESSAGES"])

    def list_folders(self) -> list[FolderInfo]:
        self._settle()
        try:
            with self._answered_in_time("LIST"):
                listed = self.c.list_folders()
        except imaplib.IMAP4.abort:
            raise
        except IMAPClientError as exc:
            # imapclient's parser refuses some names anyone can give a folder ("Clients/a[b":
            # "No closing ']'"): read the LIST lines ourselves, and leave out only what we
            # cannot read, so one odd folder never stops the mailbox.
            log.warning("%s: imapclient could not read the folder list (%s); reading it line by line",
                        self._where(), _reason(exc))
            listed = self._list_lines()
        return folder_infos(listed)

    def _list_lines(self) -> list[Listed]:
        """LIST "" "*" read one line at a time: (flags, delimiter, name) for each line that reads."""
        try:
            with self._answered_in_time("LIST"):
                typ, lines = imaplib_of(self.c).list('""', "*")
        except imaplib.IMAP4.error as exc:
            raise MailboxError(f"cannot list folders: {_reason(exc)}", where=self._where()) from None
        if typ != "OK":
            raise MailboxError(f"cannot list folders: {lines!r}", where=self._where())
        listed, unreadable = list_lines(lines)
        for line in unreadable:
            log.warning("%s: a folder list line that cannot be read is left out: %r", self._where(), line[:200])
        return listed

    def new_items(self, folder: str, after_cursor: int) -> UidItems:
        info = self._select(folder)
        # One SEARCH answer is one line, and imaplib refuses lines over 1 MB: about 140,000
        # UIDs ("SEARCH => got more than 1000000 bytes" for a big first scan). Up to UIDNEXT
        # the UIDs are asked for a span at a time, then "N:*" catches anything newer. Spans
        # are disjoint and ascending, so the answers are appended in order, without a set.
        def listed(low: int, high: int | None) -> list[int]:
            """The UIDs in low..high (None: "*"), ascending. "UID N:*" always matches the
            highest UID even when N is above it (PITFALLS), hence the bounds check."""
            with self._answered_in_time("SEARCH"):
                got = map(int, self.c.search(["UID", f"{low}:{'*' if high is None else high}"]))
            return sorted(u for u in got if low <= u and (high is None or u <= high))

        uids = UidItems()
        low = after_cursor + 1
        uidnext = int(info.get(b"UIDNEXT") or 0)
        span = defaults.SEARCH_UID_SPAN
        while low + span <= uidnext:
            uids.uids.extend(listed(low, low + span - 1))
            low += span
        uids.uids.extend(listed(low, None))
        return uids

    def _fetch(self, folder: str, uids: list[int], what: list[bytes]) -> dict[int, dict[bytes, Any]]:
        self._settle()
        if self._selected != folder:
            self._select(folder)
        out: dict[int, dict[bytes, Any]] = {}
        for part in chunk_by_command_length(uids, defaults.FETCH_UIDS_PER_COMMAND, self.max_command_bytes):
            # The same deadline as the fast path's: a trickling server fails either way.
            budget = self.timeout + len(part) * defaults.IMAP_SECONDS_PER_MESSAGE
            with self._answered_in_time(None, seconds=budget):
                out.update(self.c.fetch(part, what))
        return out

    def _send_fetch(self, folder: str, uids: list[int], item: bytes) -> InFlight:
        """Send the hot FETCH without waiting for its answer: the server prepares the next
        batch while this one is parsed."""
        if self._selected != folder:
            self._select(folder)
        wire = self.wire
        assert wire is not None, "the fast path only where wire_of found what it needs"
        return self.pipeline.send(wire, uids, item, defaults.FETCH_UIDS_PER_COMMAND, self.max_command_bytes)

    def _settle(self, upto: InFlight | None = None) -> None:
        """Read answers to pipelined FETCHes until `upto` (every one if None) is complete."""
        wanted = self.pipeline.unanswered(upto)
        if not wanted:
            return
        wire = self.wire
        assert wire is not None
        # A server that trickles (a few bytes every few seconds, never silent for the socket's
        # timeout) would hold the scan for ever: the answers have a deadline, in proportion to
        # what was asked, and the watchdog ends the connection when it passes, or when the scan
        # is told to stop (Ctrl-C, SIGTERM), whatever the server does.
        budget = self.timeout + self.pipeline.messages * defaults.IMAP_SECONDS_PER_MESSAGE
        with Watchdog(self._socket, budget, self.stop) as watchdog:
            try:
                self.pipeline.read(wire, wanted, watchdog, self._where())
            finally:
                if watchdog.fired:
                    self.gave_up = watchdog.reason

    def _fetch_fast(self, pending: InFlight) -> Answered | None:
        """The answer to a pipelined FETCH, read without imapclient's pure-Python lexer.

        imapclient tokenises every response byte in Python, mostly the long
        `BODY[HEADER.FIELDS (...)]` echo, which caps a header fetch at a few thousand
        messages/s. read_until_tagged() splits literals out as bytes, so for this one response
        shape we read UID and INTERNALDATE with a regex. None when a response was not the
        expected shape (the caller then uses imapclient)."""
        self._settle(pending)
        return self.pipeline.take(pending, self._where())

    def start_fetch(self, folder: str, items: Sequence[Item], snippets: bool = False) -> Callable[[], list[RawMessage]]:
        by_uid = {int(i.key): i for i in items}  # type: ignore[call-overload]
        # With snippets, one FETCH asks for both: the server reads each message once, not
        # twice (defaults.SNIPPETS_WITH_HEADERS_SHARE).
        pending = (self._send_fetch(folder, list(by_uid), HEADER_AND_SNIPPET_ITEM if snippets else HEADER_ITEM)
                   if self.wire is not None else None)

        def complete() -> list[RawMessage]:
            out = []
            fast = self._fetch_fast(pending) if pending is not None else None
            if fast is not None:
                for uid, (meta, parts) in fast.items():
                    item = by_uid.get(uid)
                    header = parts.get(HEADER)
                    if item is None or header is None:
                        continue
                    m = _IDATE_RE.search(meta)
                    idate = parse_internaldate(m.group(1)) if m else None
                    out.append(RawMessage(item, header, idate, parts.get(TEXT)))
            else:
                if pending is not None:
                    log.debug("%s: unexpected FETCH response shape; using imapclient's parser", self._where())
                what = [HEADER_ITEM, SNIPPET_ITEM, b"INTERNALDATE"] if snippets else [HEADER_ITEM, b"INTERNALDATE"]
                data = self._fetch(folder, list(by_uid), what)
                for uid, d in data.items():
                    item = by_uid.get(uid)
                    if item is None:
                        continue
                    header = _lookup(d, b"BODY[HEADER") or b""
                    text = _lookup(d, b"BODY[TEXT]") if snippets else None
                    out.append(RawMessage(item, bytes(header), d.get(b"INTERNALDATE"),
                                          None if text is None else bytes(text)))
            out.sort(key=lambda r: r.item.cursor)
            return out

        return complete

    def fetch(self, folder: str, items: Sequence[Item], snippets: bool = False) -> list[RawMessage]:
        return self.start_fetch(folder, items, snippets)()

    def start_fetch_snippets(self, folder: str, items: Sequence[Item]) -> Callable[[], dict[Hashable, bytes]]:
        if not items:
            return dict
        uids = [int(i.key) for i in items]  # type: ignore[call-overload]
        pending = self._send_fetch(folder, uids, SNIPPET_ITEM) if self.wire is not None else None

        def complete() -> dict[Hashable, bytes]:
            fast = self._fetch_fast(pending) if pending is not None else None
            if fast is not None:
                return {uid: parts[TEXT] for uid, (_, parts) in fast.items()}
            data = self._fetch(folder, uids, [SNIPPET_ITEM])
            return {uid: bytes(_lookup(d, b"BODY[TEXT]") or b"") for uid, d in data.items()}

        return complete

    def fetch_snippets(self, folder: str, items: Sequence[Item]) -> dict[Hashable, bytes]:
        return self.start_fetch_snippets(folder, items)()

    # --- IDLE (push) -------------------------------------------------------------------------
    def supports_idle(self) -> bool:
        return b"IDLE" in self.capabilities
