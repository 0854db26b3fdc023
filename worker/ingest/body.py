"""The body peek: the first few KiB of a message body (BODY.PEEK[TEXT]<0.N>), read for the
text its sender typed. `body_text` finds the first text part (MIME boundaries, base64,
quoted-printable, charsets, HTML), decodes it, and says whether the part ended within the
peek, so that a cut-off text is never taken for all there is."""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass(frozen=True, slots=True)
class BodyText:
    """The readable text of a body's first text part, and whether all of it was seen."""

    text: str
    complete: bool


_BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";\s]+)"?', re.IGNORECASE)
_PART_CTYPE_RE = re.compile(r"content-type:\s*([^\r\n]+(?:\r?\n[ \t][^\r\n]+)*)", re.IGNORECASE)
_PART_CTE_RE = re.compile(r"content-transfer-encoding:\s*(\S+)", re.IGNORECASE)
_CHARSET_RE = re.compile(r'charset\s*=\s*"?([\w.:-]+)', re.IGNORECASE)


def body_text(body: bytes, content_type: str, transfer_encoding: str = "", peek: int | None = None) -> BodyText:
    """The first text part of `body` (the first `peek` bytes of a message body, or all of it
    when `peek` is None), decoded: multipart (nested), quoted-printable, base64, a charset,
    HTML. `complete` is False when the part may go on past what was fetched. Never raises."""
    try:
        return _body_text(body, content_type, transfer_encoding, peek)
    except (binascii.Error, ValueError, TypeError, LookupError):
        return BodyText("", False)


def _body_text(body: bytes, content_type: str, transfer_encoding: str, peek: int | None) -> BodyText:
    truncated = peek is not None and len(body) >= peek
    ctype, enc = content_type.lower(), transfer_encoding.lower()
    part_closed = not truncated
    for _ in range(4):  # nested multiparts: mixed > alternative > text
        m = _BOUNDARY_RE.search(content_type)
        if not ctype.startswith("multipart/") or not m:
            break
        marker = b"--" + m.group(1).encode("latin-1", "replace")
        start = body.find(marker)
        if start < 0:
            return BodyText("", False)
        part = body[start + len(marker):].lstrip(b"\r\n")
        head, sep, rest = part.partition(b"\r\n\r\n")
        if not sep:
            head, sep, rest = part.partition(b"\n\n")
        if not sep:
            return BodyText("", False)  # the part's headers run past the peek
        headers = head.decode("latin-1", "replace")
        cm, em = _PART_CTYPE_RE.search(headers), _PART_CTE_RE.search(headers)
        content_type = cm.group(1) if cm else "text/plain"
        ctype = content_type.lower()
        enc = em.group(1).lower() if em else ""
        body, found, _ = rest.partition(marker)
        part_closed = bool(found)
    if not (ctype.startswith("text/") or ctype == "" or ctype.startswith("multipart/")):
        return BodyText("", False)  # an attachment first: nothing a person typed to read
    complete = part_closed or not truncated
    if enc == "base64":
        compact = re.sub(rb"[^A-Za-z0-9+/=]", b"", body)
        whole = len(compact) // 4 * 4
        complete = complete and whole == len(compact)
        body = base64.b64decode(compact[:whole], validate=False)
    elif enc == "quoted-printable":
        body = quopri.decodestring(body)
    cs = _CHARSET_RE.search(content_type)
    charset = cs.group(1) if cs else "utf-8"
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    if "html" in ctype:
        text, html_complete = _html_to_text(text)
        complete = complete and html_complete
    return BodyText(text, complete)


def snippet_text(body: bytes, content_type: str, transfer_encoding: str = "") -> str:
    """The readable text of the first text part of a body (or of its first bytes)."""
    return body_text(body, content_type, transfer_encoding).text


class _HtmlText(HTMLParser):
    """Visible text of an HTML body, a line per block; text inside <blockquote> comes out as
    "> " lines and <hr> as a divider, so the plain-text rules below see where quotes are."""

    _HIDDEN = frozenset({"head", "style", "script", "title"})
    _BLOCKS = frozenset({"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.quote_depth = self.hidden = 0
        self.line_quoted = False

    def _flush(self) -> None:
        text = "".join(self.line).replace("\xa0", " ").strip()
        if text:
            self.lines.append(("> " if self.line_quoted else "") + text)
        self.line, self.line_quoted = [], False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag == "blockquote":
            self._flush()
            self.quote_depth += 1
        elif tag == "hr":
            self._flush()
            self.lines.append("_" * 12)
        elif tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "blockquote":
            self._flush()
            self.quote_depth = max(0, self.quote_depth - 1)
        elif tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.hidden or not data.strip():
            if data and not self.hidden:
                self.line.append(" ")
            return
        self.line.append(data)
        self.line_quoted = self.line_quoted or self.quote_depth > 0


def _html_to_text(text: str) -> tuple[str, bool]:
    """Visible text of an HTML body, and False when the peek ended inside the head, a style
    block, a tag or a quote (what follows is unknown)."""
    parser = _HtmlText()
    parser.feed(text)
    cut_in_tag = text.rfind("<") > text.rfind(">")
    hidden, quoted = parser.hidden, parser.quote_depth
    parser._flush()
    complete = not (hidden or cut_in_tag)
    lines = parser.lines + (["> [the quote goes on]"] if quoted else [])
    return "\n".join(lines), complete
