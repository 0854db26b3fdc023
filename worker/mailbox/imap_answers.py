"""Reading IMAP answers: FETCH's, by the fast reader's one pass over the socket file
(read_until_tagged) or imaplib-shaped (fetch_answers), INTERNALDATE, and LIST's folders."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import imapclient.imap_utf7
from imapclient.datetime_util import parse_to_datetime

from ..ingest.fields import MONTHS, zone_offset
from .base import FolderInfo
from .imap_wire import Wire

_UID_RE = re.compile(rb"[( ]UID (\d+)")
_IDATE_RE = re.compile(rb'INTERNALDATE "([^"]+)"')
_FETCH_START_RE = re.compile(rb"^\d+ \(")


#: The sections a scan fetches, as FETCH answers name them: the header fields and the start
#: of the body text. Answers are filed by section, so one FETCH may ask for both.
HEADER, TEXT = b"BODY[HEADER", b"BODY[TEXT]"


def _section(name: bytes) -> bytes:
    """HEADER or TEXT, for an answer's item name ("BODY[HEADER.FIELDS (...)] {301}",
    " BODY[TEXT]<0> {25}") or the prefix that holds it."""
    return TEXT if TEXT in name else HEADER


def fetch_answers(data: list[Any]) -> list[tuple[int, bytes, dict[bytes, bytes]]] | None:
    """imaplib-shaped FETCH data as (uid, metadata bytes, {section: bytes}) per message answer.

    imaplib returns a (prefix, literal) tuple per literal and the rest of the response as
    plain bytes (b")" or b" INTERNALDATE ... UID 5)"). An answer may hold several literals
    (the header fields and the body text, asked for together): a tuple whose prefix does not
    start a FETCH answer ("7 (") continues the one before. A section sent as a quoted
    string instead of a literal ("" for an empty body) is empty. A UID may come twice (two
    pipelined FETCHes of one message). An answer with neither a UID nor a section is the
    server telling of flags another client changed (Dovecot sends them without a UID), and
    is left out. None if an answer with a section lacks a UID."""
    messages: list[tuple[list[bytes], list[tuple[bytes, bytes]]]] = []
    for el in data:
        if isinstance(el, tuple):
            if _FETCH_START_RE.match(el[0]) or not messages:
                messages.append(([el[0]], [(el[0], el[1])]))
            else:
                messages[-1][0].append(el[0])
                messages[-1][1].append((el[0], el[1]))
        elif isinstance(el, bytes):
            if _FETCH_START_RE.match(el):  # a message whose item came without a literal
                messages.append(([el], []))
            elif messages:
                messages[-1][0].append(el)
    out: list[tuple[int, bytes, dict[bytes, bytes]]] = []
    for meta_parts, literals in messages:
        meta = b"".join(meta_parts)
        m = _UID_RE.search(meta)
        if not m:
            if not literals and HEADER not in meta and TEXT not in meta:
                continue  # an unsolicited flag update ("3 (FLAGS (\\Seen))": a colleague read it)
            return None
        sections = {_section(prefix): literal for prefix, literal in literals}
        for section in (HEADER, TEXT):
            if section not in sections and section in meta:
                sections[section] = b""
        out.append((int(m.group(1)), meta, sections))
    return out


_FETCH_LINE_RE = re.compile(rb"\* (\d+) FETCH (.*)", re.S)
_LITERAL_END_RE = re.compile(rb"\{(\d+)\}$")
_MAXLINE = 1_000_000  # imaplib's own limit
#: The answer a scan's FETCH gets from Dovecot and most servers, the items in the order asked:
#: "* 7 FETCH (UID 12 INTERNALDATE "..." BODY[HEADER.FIELDS (...)] {301}", then the literal,
#: then ")" or the next section (" BODY[TEXT]<0> {25}") and its literal. Read in one pass.
_FAST_ANSWER_RE = re.compile(rb'\* \d+ FETCH \(UID (\d+) (INTERNALDATE "[^"]*") (BODY\[[^\]]*\](?:<0>)?) \{(\d+)\}\r\n')
_NEXT_SECTION_RE = re.compile(rb" (BODY\[[^\]]*\](?:<0>)?) \{(\d+)\}\r\n")

#: One answer read in one pass: (uid, its INTERNALDATE item, {section: bytes}).
Answer = tuple[int, bytes, dict[bytes, bytes]]


def _imaplib_prefix(line: bytes) -> bytes | None:
    """A FETCH answer's first line as imaplib shapes it ("* 7 FETCH (UID 12 ..." becomes
    "7 (UID 12 ..."), or None for another untagged response."""
    m = _FETCH_LINE_RE.match(line)
    return m.group(1) + b" " + m.group(2) if m else None


def _checked(line: bytes) -> bytes:
    """A line read off the socket, whole (imaplib's limits)."""
    if not line:
        raise imaplib.IMAP4.abort("socket error: EOF")
    if len(line) > _MAXLINE or not line.endswith(b"\r\n"):
        raise imaplib.IMAP4.abort(f"socket error: unterminated or overlong line: {line[:80]!r}")
    return line


def _literal(read: Callable[[int], bytes], size: int) -> bytes:
    literal = read(size)
    if len(literal) < size:
        raise imaplib.IMAP4.abort("socket error: EOF in a literal")
    return literal


def read_until_tagged(wire: Wire) -> tuple[list[Answer], list[Any], bytes, bytes, bytes]:
    """Read untagged FETCH responses straight off imaplib's socket file up to the next tagged
    completion line, whichever command it completes (pipelined commands may run side by side
    and finish in any order: Dovecot does).

    Returns the answers of the usual shape (_FAST_ANSWER_RE), read in one pass; the other
    FETCH data in imaplib's own shape (a (prefix, literal) tuple per literal, the rest as
    bytes, "* " and "FETCH" stripped, so fetch_answers parses it); and the completion's tag,
    status and text. imaplib handles every line in Python with several regexes and debug
    calls; a header FETCH is three lines and one literal per message, so reading them here
    with readline/read (C) is several times faster. Other untagged responses (EXISTS,
    EXPUNGE...) are skipped. An answer that starts in the usual shape and then turns out
    otherwise (a FLAGS item, an empty body sent as "") goes to the other data, whole."""
    readline, read = wire.readline, wire.read
    fast_answer, next_section = _FAST_ANSWER_RE.match, _NEXT_SECTION_RE.match
    answers: list[Answer] = []
    data: list[Any] = []
    after_literal = keep = False
    pending: bytes | None = None  # a line read ahead, for the generic reading below
    while True:
        if pending is not None:
            line, pending = pending, None
        else:
            line = readline(_MAXLINE + 1)
        if not after_literal and (fm := fast_answer(line)):
            literal = _literal(read, int(fm.group(4)))
            sections = {_section(fm.group(3)): literal}
            more: list[tuple[bytes, bytes]] = []
            nxt = readline(_MAXLINE + 1)
            while nxt != b")\r\n" and (sm := next_section(nxt)) is not None:
                more.append((nxt[:-2], _literal(read, int(sm.group(2)))))
                sections[_section(sm.group(1))] = more[-1][1]
                nxt = _checked(readline(_MAXLINE + 1))
            if nxt == b")\r\n":
                answers.append((int(fm.group(1)), fm.group(2), sections))
                continue
            # Not the usual shape after all: the answer goes the generic way, whole.
            data.append((_imaplib_prefix(line[:-2]), literal))
            data += more
            after_literal = keep = True
            pending = nxt
            continue
        line = _checked(line)[:-2]
        if not after_literal:
            if not line.startswith((b"* ", b"+")):
                tag, _, rest = line.partition(b" ")
                status, _, text = rest.partition(b" ")
                wire.completed(tag)
                return answers, data, tag, status, text
            prefix = _imaplib_prefix(line)
            keep = prefix is not None
            if prefix is not None:
                line = prefix
        lm = _LITERAL_END_RE.search(line)
        if lm:
            literal = _literal(read, int(lm.group(1)))
            if keep:
                data.append((line, literal))
            after_literal = True
        else:
            if keep:
                data.append(line)
            after_literal = False


_IDATE_PARTS_RE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")


@lru_cache(maxsize=256)
def _zone(sign: bytes, hours: bytes, minutes: bytes) -> timezone:
    """An INTERNALDATE zone ("+0100"); one object per zone, not per message."""
    return timezone(zone_offset(sign.decode(), hours.decode(), minutes.decode()))


def parse_internaldate(value: bytes) -> datetime | None:
    """INTERNALDATE ("02-Nov-2026 09:00:00 +0100") to an aware datetime: the fixed RFC 3501
    form by regex, anything else by imapclient's parser; None if neither can read it."""
    m = _IDATE_PARTS_RE.match(value)
    if m:
        day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
        month = MONTHS.get(mon.decode("ascii").lower())
        if month:
            try:
                return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=_zone(sign, oh, om))
            except ValueError:
                pass
    try:
        return parse_to_datetime(value, normalise=False)
    except (ValueError, TypeError, OverflowError):
        return None


# --- LIST --------------------------------------------------------------------------------------
#: One line of a LIST answer, past "* LIST ": (flags) "delimiter" name.
_LIST_LINE_RE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+?)\s*(?:\{\d+\})?$',
                           re.IGNORECASE)
#: RFC 6154 attributes: which folder holds sent mail, drafts...
SPECIAL_USE = {m.lower().encode(): m for m in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk",
                                               "\\Sent", "\\Trash")}
#: A folder as LIST gives it: (flags, delimiter, name).
Listed = tuple[list[bytes], bytes | str | None, str | bytes]


def list_lines(lines: list[Any]) -> tuple[list[Listed], list[bytes]]:
    """The folders in imaplib's LIST answer, read one line at a time, for names imapclient's
    parser refuses ("Clients/a[b"); and the lines that cannot be read at all, left out."""
    out: list[Listed] = []
    unreadable: list[bytes] = []
    for line in lines:
        literal = None
        if isinstance(line, tuple):  # the name came as a literal: (b'(...) "/" {12}', b'name')
            line, literal = line
        m = _LIST_LINE_RE.match(line or b"")
        if m is None:
            unreadable.append(line or b"")
            continue
        name_raw = literal if literal is not None else m.group("name")
        if name_raw.startswith(b'"') and name_raw.endswith(b'"') and len(name_raw) >= 2:
            name_raw = re.sub(rb'\\(.)', rb"\1", name_raw[1:-1])
        delim = m.group("delim")
        delimiter = b"" if delim.upper() == b"NIL" else re.sub(rb'\\(.)', rb"\1", delim.strip(b'"'))
        try:
            name = imapclient.imap_utf7.decode(name_raw)
        except (ValueError, UnicodeError):
            name = name_raw.decode("utf-8", "replace")
        out.append((m.group("flags").split(), delimiter, name))
    return out, unreadable


def folder_infos(listed: Iterable[Listed]) -> list[FolderInfo]:
    """The folders that can be opened, INBOX first, then by name; each with its RFC 6154
    special use and its hierarchy delimiter."""
    out = []
    for flags, delimiter, name in listed:
        marks = {f.lower() for f in flags}  # attributes are case-insensitive (RFC 3501)
        if b"\\noselect" in marks or b"\\nonexistent" in marks:  # a level of the hierarchy, not a folder
            continue
        special = next((SPECIAL_USE[m] for m in marks if m in SPECIAL_USE), None)
        out.append(FolderInfo(name if isinstance(name, str) else name.decode(errors="replace"), special,
                              delimiter.decode() if isinstance(delimiter, bytes) else delimiter or "/"))
    return sorted(out, key=lambda f: (f.name.upper() != "INBOX", f.name.casefold()))
