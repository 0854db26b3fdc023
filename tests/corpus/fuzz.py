"""A generator of hostile mail: real shapes (the corpus files beside this one) mutated the
ways broken and malicious mail is broken. Deterministic for a seed.

Mutations: raw 8-bit bytes in any header field, broken and unknown-charset encoded words,
NULs and control bytes, 100 kB header lines, thousands of recipients, nested and truncated
MIME, dates out of range or garbage, Message-IDs with path characters, duplicated, deleted
and truncated header fields, flipped bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).parent
FIELDS = (b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b"References",
          b"Content-Type", b"Return-Path", b"Sender", b"List-Id", b"Auto-Submitted")


def seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(HERE.glob("*.eml")) + sorted((HERE / "labelled").glob("*.eml"))]


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head.split(b"\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")


def _set(lines: list[bytes], name: bytes, value: bytes) -> list[bytes]:
    out = [ln for ln in lines if not ln.lower().startswith(name.lower() + b":")]
    return [*out, name + b": " + value]


def eight_bit(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    name = r.choice(FIELDS)
    junk = bytes(r.randrange(0x80, 0x100) for _ in range(r.randrange(1, 12)))
    value = r.choice([b"<fz" + junk + b"@acme.example>", b"J" + junk + b"r\xf4me <j@acme.example>",
                      b"R\xe9sum\xe9 " + junk, junk + b"@" + junk])
    return _set(lines, name, value), body


def encoded_words(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    value = r.choice([b"=?utf-8?q?caf=C3?=", b"=?x-unknown?B?SGVsbG8=?=", b"=?utf-8?B?####?=", b"=?utf-8?q?",
                      b"=?iso-8859-1?q?=E9t=E9?= \xe9t\xe9", b"=?gb2312?B?suLK1A==?=" * 50, b"=??="])
    return _set(lines, r.choice([b"Subject", b"From", b"To"]), value), body


def nul_and_control(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    k = r.randrange(len(lines)) if lines else 0
    if lines:
        lines = [*lines[:k], lines[k] + b"\x00\x01\x1b[31m\x7f", *lines[k + 1:]]
    return lines, body


def huge_line(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    return _set(lines, r.choice([b"Subject", b"References", b"X-Junk"]), b"A" * 100_000), body


def many_recipients(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    people = b", ".join(b"p%d@acme.example" % k for k in range(r.choice([500, 3000])))
    return _set(lines, r.choice([b"To", b"Cc"]), people), body


def mime(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    depth = r.randrange(1, 40)
    nested = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=\"b%d\"\n\n" % (k, k + 1)
                      for k in range(depth))
    text = nested + (b"--b%d\nContent-Type: text/plain; charset=x-nope\nContent-Transfer-Encoding: base64\n\n"
                     b"VGhh" % depth)
    if r.random() < 0.5:
        text = text[: r.randrange(1, len(text))]  # truncated anywhere
    return _set(lines, b"Content-Type", b'multipart/mixed; boundary="b0"'), text


def dates(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    value = r.choice([b"Tue, 31 Feb 2026 10:00:00 +0000", b"Mon, 01 Jan 0001 00:00:00 +0000", b"",
                      b"Fri, 01 Jan 9999 00:00:00 +9999", b"yesterday", b"1700000000",
                      b"Mon, 16 Nov 2026 25:61:61 CEST"])
    return _set(lines, b"Date", value), body


def path_ids(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    value = r.choice([b"<../../etc/passwd@acme>", b"<a/b\\c:d*e?f@acme>", b"<>", b"<" + b"x" * 2000 + b"@acme>",
                      b"no-brackets@acme", b"<a@b> <c@d> <e@f>"])
    return _set(lines, r.choice([b"Message-ID", b"In-Reply-To", b"References"]), value), body


def shuffle_fields(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    lines = list(lines)
    for _ in range(r.randrange(1, 4)):
        if not lines:
            break
        k = r.randrange(len(lines))
        op = r.randrange(3)
        if op == 0:
            del lines[k]
        elif op == 1:
            lines.insert(k, lines[k])
        else:
            lines[k] = lines[k][: r.randrange(0, len(lines[k]) + 1)]
    return lines, body


def flip_bytes(r: random.Random, lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    raw = bytearray(b"\n".join(lines))
    for _ in range(r.randrange(1, 6)):
        if raw:
            raw[r.randrange(len(raw))] = r.randrange(256)
    return bytes(raw).split(b"\n"), body


MUTATIONS: list[Callable[[random.Random, list[bytes], bytes], tuple[list[bytes], bytes]]] = [
    eight_bit, encoded_words, nul_and_control, huge_line, many_recipients, mime, dates, path_ids,
    shuffle_fields, flip_bytes]


def hostile(n: int, seed: int = 1) -> Iterator[bytes]:
    """n messages, each a real shape with one to three mutations."""
    r = random.Random(seed)
    base = seeds()
    for _ in range(n):
        lines, body = _split(r.choice(base))
        for m in r.sample(MUTATIONS, r.randrange(1, 4)):
            if m in (huge_line, many_recipients) and r.random() > 0.02:
                m = eight_bit  # a few of those are enough: they make a corpus of hundreds of MB
            lines, body = m(r, lines, body)
        yield _join(lines, body)
