"""Realistic synthetic mail: one source for the demo, the tests and the benchmarks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime
from typing import Literal


def _addr(a: str | tuple[str, str]) -> str:
    if isinstance(a, tuple):
        name, email = a
        try:
            name.encode("ascii")
            return f'"{name}" <{email}>'
        except UnicodeEncodeError:
            return f"{Header(name, 'utf-8').encode()} <{email}>"
    return a


def message_id_for(*parts: object, domain: str = "mail.example") -> str:
    return "<" + hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:24] + f"@{domain}>"


def build_message(
    *, sender: str | tuple[str, str], to: Sequence[str | tuple[str, str]], subject: str, date: datetime,
    body: str = "Hello,\n\nPlease see the attached.\n\nBest,\nA.", cc: Sequence[str | tuple[str, str]] | None = None,
    message_id: str | Literal[False] | None = None, in_reply_to: str | None = None, references: list[str] | None = None,
    extra_headers: dict[str, str] | None = None, html: bool = False,
) -> bytes:
    """An RFC 5322 message as a mail client would send it (CRLF, encoded words where needed).
    `message_id` None makes a stable one up; False leaves the header out."""
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    try:
        subject.encode("ascii")
        subj = subject
    except UnicodeEncodeError:
        subj = Header(subject, "utf-8").encode()
    lines = [
        f"From: {_addr(sender)}",
        f"To: {', '.join(_addr(a) for a in to)}",
    ]
    if cc:
        lines.append(f"Cc: {', '.join(_addr(a) for a in cc)}")
    lines += [f"Subject: {subj}", f"Date: {format_datetime(date)}"]
    if message_id is not False:
        lines.append(f"Message-ID: {message_id or message_id_for(sender, subject, date)}")
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if references:
        lines.append(f"References: {' '.join(references)}")
    for k, v in (extra_headers or {}).items():
        lines.append(f"{k}: {v}")
    lines.append("MIME-Version: 1.0")
    if html:
        boundary = "=_b" + hashlib.sha1(body.encode()).hexdigest()[:12]
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        payload = (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
                   f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>{body}</p>\r\n"
                   f"--{boundary}--\r\n")
    else:
        lines.append("Content-Type: text/plain; charset=utf-8")
        lines.append("Content-Transfer-Encoding: 8bit")
        payload = body.replace("\n", "\r\n") + "\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + payload.encode("utf-8")
