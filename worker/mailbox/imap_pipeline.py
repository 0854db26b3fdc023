"""Pipelined FETCH (RFC 3501 5.5): commands sent without waiting, and their answers filed by
section and UID as they are read, so the server prepares the next batch while this one is
parsed. The source (imap.py) owns the connection and its deadline; this owns what is in
flight and what has been read for it."""

from __future__ import annotations

import contextlib
import imaplib
from collections import deque
from dataclasses import dataclass

from ..deadline import Watchdog
from ..errors import MailboxError
from .imap_answers import HEADER, TEXT, fetch_answers, read_until_tagged
from .imap_wire import Wire

#: uid -> (the answer's metadata, {section: bytes})
Answered = dict[int, tuple[bytes, dict[bytes, bytes]]]


def chunk_by_command_length(uids: list[int], max_count: int, max_bytes: int) -> list[list[int]]:
    """Split UIDs so that no FETCH command line exceeds max_bytes (Exchange fails far below
    Dovecot's 64 KiB) nor max_count UIDs."""
    out: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for u in uids:
        n = len(str(u)) + 1
        if cur and (len(cur) >= max_count or size + n > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(u)
        size += n
    if cur:
        out.append(cur)
    return out


@dataclass(eq=False)
class InFlight:
    """Pipelined FETCH commands (one item, some UIDs) whose answers may not be read yet.
    Two FETCHes in flight at once may share UIDs only if they ask for different sections."""

    item: bytes
    uids: list[int]
    tags: list[bytes]

    @property
    def sections(self) -> tuple[bytes, ...]:
        return tuple(s for s, name in ((HEADER, b"[HEADER."), (TEXT, b"[TEXT]")) if name in self.item)


class Pipeline:
    """The FETCHes in flight on one connection and the answers read for them."""

    def __init__(self) -> None:
        self.inflight: deque[InFlight] = deque()
        #: Answers read: (section, uid) -> (the answer's metadata, the section's bytes).
        self.answers: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}
        #: Further answers for a (section, uid) filed already: two FETCHes in flight asked
        #: for the same section of one message, and each gets one.
        self.more: dict[tuple[bytes, int], list[tuple[bytes, bytes]]] = {}
        #: Completion per tag: None for OK, else what the server said.
        self.completed: dict[bytes, str | None] = {}
        #: A response came in a shape the fast reader does not file (see take).
        self.odd_shape = False

    def clear(self) -> None:
        """Forget everything in flight: the connection went, or a new folder is selected
        (FETCHes abandoned by a scan that stopped early)."""
        self.inflight.clear()
        self.answers.clear()
        self.more.clear()
        self.completed.clear()
        self.odd_shape = False

    def send(self, wire: Wire, uids: list[int], item: bytes, max_count: int, max_bytes: int) -> InFlight:
        """Send the FETCH for `item` of `uids` without waiting for its answer."""
        f = InFlight(item, uids, [])
        for part in chunk_by_command_length(uids, max_count, max_bytes):
            f.tags.append(wire.send_command(b"UID FETCH " + ",".join(map(str, part)).encode()
                                            + b" (UID INTERNALDATE " + item + b")"))
        self.inflight.append(f)
        return f

    def unanswered(self, upto: InFlight | None = None) -> set[bytes]:
        """The tags not complete yet, of `upto` (every FETCH in flight if None)."""
        wanted = set(upto.tags) if upto is not None else {t for f in self.inflight for t in f.tags}
        return wanted - self.completed.keys()

    @property
    def messages(self) -> int:
        """How many messages the FETCHes in flight ask for (their answers' deadline)."""
        return sum(len(f.uids) for f in self.inflight)

    def read(self, wire: Wire, wanted: set[bytes], watchdog: Watchdog, where: str) -> None:
        """Read answers until every tag in `wanted` is complete. Untagged answers are filed by
        section and UID, not by position: commands running side by side may interleave them."""
        while wanted - self.completed.keys():
            try:
                answers, data, tag, status, text = read_until_tagged(wire)
            except (imaplib.IMAP4.abort, OSError, ValueError) as exc:  # the connection is gone, every answer with it
                self.inflight.clear()
                if watchdog.fired:
                    raise MailboxError(watchdog.reason, where=where) from None
                if isinstance(exc, imaplib.IMAP4.abort):
                    raise
                raise imaplib.IMAP4.abort(f"connection lost: {exc}") from exc
            self.completed[tag] = None if status == b"OK" else (
                f"FETCH {status.decode(errors='replace')}: {text.decode(errors='replace')}"[:500])
            others = fetch_answers(data) if data else []
            if others is None:  # every FETCH in flight goes the slow way (see take)
                self.odd_shape = True
                continue
            filed, more = self.answers, self.more
            for uid, meta, sections in answers + others if others else answers:
                for section, literal in sections.items():
                    if (section, uid) in filed:
                        more.setdefault((section, uid), []).append((meta, literal))
                    else:
                        filed[(section, uid)] = (meta, literal)

    def take(self, pending: InFlight, where: str) -> Answered | None:
        """The answers to `pending`, once read (see read): uid -> (metadata, {section: bytes})
        for the UIDs answered, or None when a response was not the expected shape (the caller
        then asks again through imapclient)."""
        with contextlib.suppress(ValueError):
            self.inflight.remove(pending)
        errors = [self.completed.pop(t) for t in pending.tags]
        failed = next((e for e in errors if e), None)
        out: Answered = {}
        answers, more = self.answers, self.more
        for uid in pending.uids:
            for section in pending.sections:
                got = answers.pop((section, uid), None)
                if got is not None:
                    if more and (another := more.get((section, uid))):  # for the other FETCH
                        answers[(section, uid)] = another.pop()
                        if not another:
                            del more[(section, uid)]
                    meta, parts = out.setdefault(uid, (got[0], {}))
                    parts[section] = got[1]
        if failed:
            raise MailboxError(failed, where=where)
        if self.odd_shape:
            # Some answer could not be filed, and it may have been anyone's: this FETCH and
            # every other one in flight are made again through imapclient.
            if not self.inflight:
                self.odd_shape = False
            return None
        return out
