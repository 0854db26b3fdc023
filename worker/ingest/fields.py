"""One header field's value as Carewatch keeps it: text cleaned and its RFC 2047 words
decoded, subjects without their reply prefixes, address lists, Message-IDs and dates (to naive
UTC). Each tolerates garbage: what cannot be read is left out, never raised. Part of the hot
path (headers.py), hence the fast forms before the stdlib's."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.errors import HeaderParseError
from email.header import decode_header
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

from .. import defaults

_MSGID_RE = re.compile(r"<([^<>\s]{1,900})>")
_WS_RE = re.compile(r"\s+")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_REPLY_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|ref|r|fw|fwd|wg|tr|rv|enc|odp|vb)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]"
    r"|\[(?:ext|external|extern|secure|encrypt)[^\]]*\]|\(ext\))\s*",
    re.IGNORECASE,
)
_FORWARD_RE = re.compile(r"^\s*(?:fw|fwd|wg|tr|rv|enc)\s*[:：]", re.IGNORECASE)


def clean(value: str, limit: int = defaults.MAX_HEADER_CHARS) -> str:
    """Collapse folding/whitespace, drop control characters and NULs, bound the length."""
    if len(value) <= limit and value.isprintable() and "  " not in value and value.strip() == value:
        return value  # the common case: nothing to clean (isprintable is False for controls)
    if len(value) > limit * 4:
        value = value[: limit * 4]
    value = _CTRL_RE.sub("", value)
    value = _WS_RE.sub(" ", value).strip()
    return value[:limit]


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; unknown charsets and broken words fall back gracefully."""
    if "=?" not in value:
        if value.isascii():
            return value
        # 8-bit header bytes arrive as surrogate escapes: try UTF-8, then Latin-1.
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            raw = value.encode("utf-8", "surrogateescape")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        return value
    try:
        parts = decode_header(value)
    except (ValueError, IndexError, AssertionError, HeaderParseError):
        return value
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        # The declared charset, then UTF-8, strictly; then the declared one with replacement
        # characters; Latin-1 (which reads any byte) when the declared one is unknown.
        for cs, errors in ((charset, "strict"), ("utf-8", "strict"), (charset, "replace")):
            if not cs:
                continue
            try:
                out.append(chunk.decode(cs, errors))
                break
            except (LookupError, UnicodeDecodeError):
                continue
        else:
            out.append(chunk.decode("latin-1"))
    return "".join(out)


def normalise_subject(subject: str) -> str:
    """Strip reply/forward prefixes and tags ("Re:", "RE[2]:", "AW:", "[EXT]") and case."""
    s = subject
    for _ in range(20):  # bounded: hostile subjects repeat prefixes thousands of times
        new = _REPLY_PREFIX_RE.sub("", s, count=1)
        if new == s:
            break
        s = new
    return _WS_RE.sub(" ", s).strip().lower()[:300]


def has_reply_prefix(subject: str) -> bool:
    return bool(_REPLY_PREFIX_RE.match(subject)) and not _FORWARD_RE.match(subject)


def is_subject_reply(in_reply_to: str | None, references: Sequence[str], subject: str) -> bool:
    """A reply known by its subject alone ("Re: ..." with neither In-Reply-To nor References):
    message.subject_reply, and the replies that threading joins by subject."""
    return not in_reply_to and not references and has_reply_prefix(subject)


# One address of an ordinary list: "Name" <a@b>, Name <a@b> or a bare a@b, then a comma.
_ADDR_FAST_RE = re.compile(
    r'\s*(?:(?:"([^"\\]*)"|([^,<>"()\\:;]*?))\s*<([^<>\s,"]*)>|([^,<>"\s()\\:;]+@[^,<>"\s()\\:;]+))\s*(?:,|$)'
)


def _addresses_fast(value: str) -> list[tuple[str, str]] | None:
    """Parse an ordinary address list with one regex; None when it is not ordinary (comments,
    groups, escapes...) so the caller falls back to the stdlib's full parser."""
    out = []
    pos = 0
    n = len(value)
    while pos < n:
        m = _ADDR_FAST_RE.match(value, pos)
        if not m or m.end() == pos:
            return None
        quoted, plain, angle, bare = m.groups()
        if angle is not None:
            out.append(((quoted if quoted is not None else plain or "").strip(), angle))
        else:
            out.append(("", bare))
        pos = m.end()
    return out


def addresses(values: list[str], limit: int = defaults.MAX_RECIPIENTS) -> list[tuple[str, str]]:
    """(display name, lower-cased address) pairs from the values of one header field."""
    if len(values) == 1:  # nearly always: one From, one To, one Cc line
        return list(_address_list(values[0], limit))
    return _parse_addresses(values, limit)


@lru_cache(maxsize=defaults.HEADER_CACHE_ENTRIES)
def _address_list(value: str, limit: int) -> tuple[tuple[str, str], ...]:
    """One header value's addresses, cached: a mailbox sees the same From, To and Cc lines
    again and again (the same people write to the same people)."""
    return tuple(_parse_addresses([value], limit))


def _parse_addresses(values: list[str], limit: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for v in values:
        v = v[: limit * 320]  # bound work on 100k-character recipient lists
        v = v.replace("\r\n", " ").replace("\n", " ")
        pairs = _addresses_fast(v.strip())
        if pairs is None:
            try:
                pairs = getaddresses([v])
            except (ValueError, IndexError, TypeError):
                continue
        for name, addr in pairs:
            addr = clean(addr, 320).lower().strip("<>'\" ")
            if "@" not in addr or addr in seen:
                continue
            seen.add(addr)
            out.append((clean(decode_words(name), 200) if name else "", addr))
            if len(out) >= limit:
                return out
    return out


def message_ids(value: str | None, limit: int = 200) -> list[str]:
    if not value:
        return []
    ids = _MSGID_RE.findall(value[:100_000])
    return [f"<{i}>" for i in ids[-limit:]]


def to_utc_naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


#: Month abbreviations (lower case) -> number, for Date headers and IMAP INTERNALDATE.
MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"), 1)}
# The RFC 5322 form nearly every mailer writes: "Mon, 2 Nov 2026 09:00:00 +0100 (CET)".
_DATE_RE = re.compile(r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
                      r"\s+([+-])(\d{2})(\d{2})(?:\s*\([^()]*\))?\s*$")


@lru_cache(maxsize=256)
def zone_offset(sign: str, hours: str, minutes: str) -> timedelta:
    """A "+hhmm"/"-hhmm" zone as a signed timedelta; a mailbox holds a few dozen zones, and
    building a timedelta costs more than the rest of a date's arithmetic."""
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    return -offset if sign == "-" else offset


def parse_date(value: str | None) -> datetime | None:
    """Parse a Date header to naive UTC; None for garbage or a date without a known zone."""
    if not value:
        return None
    m = _DATE_RE.match(value)
    month = MONTHS.get(m.group(2).lower()) if m else None
    # "-0000" means "zone unknown" (RFC 5322): the stdlib's answer (no zone) is the rule.
    if m and month and not (m.group(7) == "-" and m.group(8) == m.group(9) == "00"):
        day, _, year, hh, mm, ss, sign, oh, om = m.groups()
        try:
            dt = datetime(int(year), month, int(day), int(hh), int(mm), int(ss or 0))
        except ValueError:
            return None
        offset = zone_offset(sign, oh, om)
        try:
            return dt - offset
        except OverflowError:
            return None
    try:
        dt = parsedate_to_datetime(value.strip()[:200])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None or dt.tzinfo is None:
        return None  # no or unknown zone ("CEST"): INTERNALDATE is more trustworthy
    try:
        return to_utc_naive(dt)
    except (OverflowError, ValueError):
        return None


def synthetic_message_id(from_addr: str, date_raw: str, subject: str, to: list[str]) -> str:
    """A stable id for mail without a Message-ID: the same message in INBOX and Sent gets the
    same one, so it is still stored once."""
    h = hashlib.sha256("\x00".join([from_addr, date_raw.strip(), subject, ",".join(sorted(to))])
                       .encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"<{h}@synthetic.carewatch>"
