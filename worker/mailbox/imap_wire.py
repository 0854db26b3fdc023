"""The one door to imaplib's and imapclient's internals.

The fast FETCH path pipelines commands and reads their answers straight off the socket file,
several times faster than imapclient's pure-Python lexer (benchmarks/ingest.py). For that it
needs what neither library makes public: imapclient's imaplib object, imaplib's tag counter,
its table of tagged commands, its socket file. Every such access is here and nowhere else,
and `wire_of` checks at connect time that the running Python and imapclient still have them.
Where they do not (imaplib changed its buffering in Python 3.14 and deprecates
`IMAP4.file`), the source uses imapclient's own `fetch`: slower, the same results (a test
scans one mailbox both ways and compares what is stored).
"""

from __future__ import annotations

import sys
from typing import Any

#: The Python versions whose imaplib the fast reader is written against (3.14 changed it).
TESTED_PYTHON = ((3, 11), (3, 13))


class Wire:
    """imaplib's connection, as the fast reader uses it."""

    def __init__(self, imap: Any) -> None:
        self._imap = imap

    def send_command(self, command: bytes) -> bytes:
        """Send a tagged command without waiting for its answer; its tag."""
        tag: bytes = self._imap._new_tag()
        self._imap.send(tag + b" " + command + b"\r\n")
        return tag

    def readline(self, limit: int) -> bytes:
        line: bytes = self._imap.file.readline(limit)
        return line

    def read(self, size: int) -> bytes:
        data: bytes = self._imap.file.read(size)
        return data

    def completed(self, tag: bytes) -> None:
        """A tagged answer read here, not by imaplib: it stops waiting for it."""
        self._imap.tagged_commands.pop(tag, None)


def imaplib_of(client: Any) -> Any:
    """The imaplib.IMAP4 object under an imapclient.IMAPClient (None if it has none), for
    imaplib's public commands (STATUS, LIST) where imapclient's parser refuses a folder name."""
    return getattr(client, "_imap", None)


def wire_of(client: Any) -> Wire | None:
    """The fast reader's door into `client`, or None where this Python's imaplib or this
    imapclient lacks what it relies on (the caller then uses imapclient's `fetch`)."""
    if not (TESTED_PYTHON[0] <= sys.version_info[:2] <= TESTED_PYTHON[1]):
        return None
    imap = imaplib_of(client)
    file = getattr(imap, "file", None)
    if (imap is None or not callable(getattr(imap, "_new_tag", None)) or not callable(getattr(imap, "send", None))
            or not isinstance(getattr(imap, "tagged_commands", None), dict)
            or not callable(getattr(file, "readline", None)) or not callable(getattr(file, "read", None))):
        return None
    return Wire(imap)
