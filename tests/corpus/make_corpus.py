"""Writes the hostile-mail corpus: real-world oddities, one .eml each. Run it to regenerate."""

from pathlib import Path

HERE = Path(__file__).parent
D = "Date: Mon, 16 Nov 2026 10:00:00 +0000\r\n"
F = "From: Alice <alice@acme.example>\r\nTo: shared@firm.example\r\n"


def w(name: str, raw: bytes) -> None:
    (HERE / f"{name}.eml").write_bytes(raw)


w("missing-message-id", (F + D + "Subject: no id\r\n\r\nbody\r\n").encode())
w("duplicate-message-id-a", (F + D + "Subject: first\r\nMessage-ID: <dup@acme.example>\r\n\r\nA\r\n").encode())
w(
    "duplicate-message-id-b",
    (
        F + "Date: Mon, 16 Nov 2026 11:00:00 +0000\r\nSubject: second\r\nMessage-ID: <dup@acme.example>\r\n\r\nB\r\n"
    ).encode(),
)
w(
    "two-message-id-headers",
    (F + D + "Subject: two ids\r\nMessage-ID: <one@acme>\r\nMessage-ID: <two@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "unparseable-date",
    (F + "Date: the day after tomorrow\r\nSubject: bad date\r\nMessage-ID: <bd@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "feb-31",
    (F + "Date: Tue, 31 Feb 2026 10:00:00 +0000\r\nSubject: feb 31\r\nMessage-ID: <f31@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "far-future-date",
    (F + "Date: Fri, 01 Jan 2100 00:00:00 +0000\r\nSubject: future\r\nMessage-ID: <fut@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "year-zero",
    (F + "Date: Mon, 01 Jan 0001 00:00:00 +0000\r\nSubject: y0\r\nMessage-ID: <y0@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "rfc2047-everywhere",
    (
        "From: =?utf-8?B?w4lsb8Ovc2UgQ2hhcnBlbnRpZXI=?= <eloise@acme.example>\r\n"
        "To: =?iso-8859-1?Q?Fran=E7ois?= <shared@firm.example>, =?utf-8?q?=F0=9F=98=80?= <x@firm.example>\r\n"
        "Cc: =?koi8-r?B?8NLJ18XU?= <cc@firm.example>\r\n"
        "Subject: =?utf-8?Q?R=C3=A9union_?= =?utf-8?B?8J+Ygw==?= =?gb2312?B?1tDOxA==?=\r\n"
        + D
        + "Message-ID: <enc@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "unknown-charset",
    (
        "From: =?x-klingon?Q?Worf?= <worf@acme.example>\r\nTo: shared@firm.example\r\n"
        "Subject: =?x-klingon?B?AAEC?= and =?utf-8?Q?broken=ZZ?=\r\n" + D + "Message-ID: <kl@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "8bit-unknown-charset",
    b"From: J\xf6rg \xc4 <joerg@acme.example>\r\nTo: shared@firm.example\r\n"
    b"Subject: \xff\xfe\xfd garbage \x81\x82\r\n" + D.encode() + b"Message-ID: <8b@acme>\r\n\r\nx\r\n",
)
w("huge-subject", (F + D + "Subject: " + "A" * 100_000 + "\r\nMessage-ID: <huge@acme>\r\n\r\nx\r\n").encode())
w(
    "huge-references",
    (
        F
        + D
        + "Subject: refs\r\nMessage-ID: <hr@acme>\r\nReferences: "
        + " ".join(f"<r{k}@acme>" for k in range(8000))
        + "\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "thousands-of-recipients",
    (
        "From: news@acme.example\r\nTo: "
        + ", ".join(f"u{k}@big.example" for k in range(5000))
        + "\r\nCc: "
        + ", ".join(f"c{k}@big.example" for k in range(3000))
        + "\r\n"
        + D
        + "Subject: everyone\r\nMessage-ID: <many@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w("nul-bytes", (F + D).encode() + b"Subject: nul\x00inside\x00\r\nMessage-ID: <nul@acme>\r\n\r\nbo\x00dy\r\n")
w(
    "folding-abuse",
    (
        F
        + D
        + "Subject:"
        + "\r\n " * 2000
        + "folded"
        + "\r\n\t x" * 2000
        + "\r\nMessage-ID:\r\n \r\n <fold@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "header-without-colon",
    (F + D + "This line is not a header\r\nSubject: after junk\r\nMessage-ID: <nc@acme>\r\n\r\nx\r\n").encode(),
)
w(
    "references-self-loop",
    (
        F + D + "Subject: Re: loop\r\nMessage-ID: <self@acme>\r\nIn-Reply-To: <self@acme>\r\n"
        "References: <self@acme> <self@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "references-cycle-a",
    (
        F + D + "Subject: Re: cycle\r\nMessage-ID: <cyc-a@acme>\r\nIn-Reply-To: <cyc-b@acme>\r\n"
        "References: <cyc-b@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "references-cycle-b",
    (
        F + "Date: Mon, 16 Nov 2026 10:05:00 +0000\r\nSubject: Re: cycle\r\nMessage-ID: <cyc-b@acme>\r\n"
        "In-Reply-To: <cyc-a@acme>\r\nReferences: <cyc-a@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w(
    "garbage-addresses",
    (
        'From: <<<>>>@@@,,,\r\nTo: "unterminated <shared@firm.example\r\nCc: (comment only)\r\n'
        + D
        + "Subject: addr\r\nMessage-ID: <ga@acme>\r\n\r\nx\r\n"
    ).encode(),
)
w("no-from", ("To: shared@firm.example\r\n" + D + "Subject: who\r\nMessage-ID: <nf@acme>\r\n\r\nx\r\n").encode())
w("only-body", b"\r\n\r\njust a body, no headers\r\n")
w("empty", b"")
w("binary-junk", bytes(range(256)) * 40)
w(
    "mime-bomb-snippet",
    (
        F + D + "Subject: Re: thanks\r\nMessage-ID: <mb@acme>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="a"\r\n\r\n' + "--a\r\nContent-Type: multipart/mixed;"
        ' boundary="a"\r\n\r\n' * 200 + "Thanks!\r\n"
    ).encode(),
)
w(
    "base64-garbage-body",
    (
        F + D + "Subject: Re: x\r\nMessage-ID: <b64@acme>\r\nContent-Type: text/plain\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n!!!!####$$$$\r\n"
    ).encode(),
)
