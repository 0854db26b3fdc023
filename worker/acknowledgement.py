"""Acknowledgements: a short closing note ("thanks!", "got it") that needs no reply.

Fail-safe by design. A message is an acknowledgement only when *all* the text its sender
typed (above, between and below quoted blocks; greeting, sign-off, signature and the
"On ... wrote:" line aside) is a short closing with no question, no request and no list of
points. When the body peek ends before the sender's text does, or the text cannot be read,
it is not one: when unsure, the client waits. A needless alert costs an owner a minute; a
missed question costs a client.

The body arrives as the first few KiB of the message body (BODY.PEEK[TEXT]<0.N>); `body_text`
finds the first text part in it, decodes it and says whether the part ended within the peek.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass
from html.parser import HTMLParser

# --- the body peek ----------------------------------------------------------------------------


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


# --- what the sender typed -------------------------------------------------------------------

#: "On Mon, 3 Nov 2025, Olivia <o@firm.example> wrote:" and its translations.
_ATTR_END = (r"(?:wrote|schrieb|a [ée]crit|escribi[óo]|ha scritto|schreef|escreveu|skrev|napisa[łl](?:\(a\))?"
             r"|kirjoitti)(?:\s*:?|\s[^:]{1,80}:)\s*$")  # "Am ... schrieb Olivia Owner:" names them after
_ATTRIBUTION_RE = re.compile(
    rf"^(?:(?:on|am|le|el|il|op|em|den|dne|w dniu)\b.{{0,250}}|.{{0,200}}(?:<[^<>\s]+@[^<>\s]+>|\d{{1,2}}:\d{{2}}"
    rf"|\d{{4}}).{{0,100}}){_ATTR_END}", re.IGNORECASE)
_ATTRIBUTION_START_RE = re.compile(r"^(?:on|am|le|el|il|op|em|den|dne|w dniu)\b", re.IGNORECASE)
_LOOSE_ATTRIBUTION_RE = re.compile(rf"^.{{0,120}}{_ATTR_END}", re.IGNORECASE)
#: Where a top-posted reply's quoted original begins (Outlook, Thunderbird, Apple Mail, mobile
#: clients): everything after it is the earlier message, not typed now.
_ORIGINAL_RE = re.compile(
    r"^(?:-{2,}\s*(?:original message|forwarded message|ursprüngliche nachricht|message d'origine"
    r"|mensaje original|messaggio originale|oorspronkelijk bericht|originalmeddelande|mensagem original"
    r"|wiadomość oryginalna|oprindelig meddelelse|opprinnelig melding|alkuperäinen viesti)\s*-{2,}"
    r"|_{10,}\s*$|begin forwarded message:)",
    re.IGNORECASE,
)
#: The "From: ... / Sent: ..." block Outlook puts above the quoted original.
_HEADER_BLOCK_RE = re.compile(r"^\*?(?:from|von|de|da|van|från|fra|od|lähettäjä)\s*:\*?\s", re.IGNORECASE)
_HEADER_NEXT_RE = re.compile(
    r"^\*?(?:sent|date|gesendet|datum|envoy[ée]|enviado|inviato|verzonden|skickat|sendt|wysłano|lähetetty"
    r"|to|an|à|para|a|aan|till|til|do|cc|subject|betreff|objet|asunto|oggetto|onderwerp|ämne|emne"
    r"|temat|aihe)\s*:", re.IGNORECASE)
_SIGNATURE_RE = re.compile(
    r"^(?:--\s*|sent from my\b.*|sent from (?:outlook|mail|yahoo|samsung|gmail)\b.*|get outlook for\b.*"
    r"|von meinem \w+ gesendet.*|envoy[ée] de mon\b.*|enviado desde mi\b.*|inviato da\b.*|verzonden vanaf\b.*"
    r"|skickat från\b.*|sendt fra\b.*)$",
    re.IGNORECASE,
)
_GREETING_RE = re.compile(
    r"^(?:hi|hello|hey|dear|morning|good (?:morning|afternoon|evening)|hallo|guten (?:morgen|tag)|liebe[r]?"
    r"|sehr geehrte[r]?|bonjour|salut|cher|chère|hola|estimad[oa]|buongiorno|ciao|gentile|beste|hoi|hej"
    r"|olá|bom dia|witam|dzień dobry|moi|hei)\b[^.!?]{0,40}[,!.:]?$",
    re.IGNORECASE,
)
_SIGNOFF_RE = re.compile(
    r"^(?:best|best regards|best wishes|kind regards|regards|warm regards|many thanks|thanks|thank you"
    r"|cheers|br|kr|rgds|all the best|sincerely|yours(?: sincerely| truly)?|mit freundlichen grüßen|mfg"
    r"|viele grüße|beste grüße|lg|gruß|cordialement|bien à vous|amitiés|saludos|un saludo|atentamente"
    r"|cordiali saluti|saluti|un saluto|met vriendelijke groet(?:en)?|groeten|mvg|med vänliga hälsningar"
    r"|vänliga hälsningar|hälsningar|mvh|med venlig hilsen|hilsen|atenciosamente|abraços|pozdrawiam"
    r"|z poważaniem|ystävällisin terveisin|terveisin)[,!.]?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Typed:
    """The lines the sender typed now, and whether the whole of their text was seen."""

    lines: list[str]
    complete: bool


def typed_text(text: str, complete: bool = True) -> Typed:
    """The sender's own lines: quoted lines ('>'), attributions, the quoted original of a
    top-posted reply and the signature are left out; text between quoted blocks is kept
    (inline answers). When the text was cut off inside a quoted block, what follows it is
    unknown, so the result is incomplete."""
    out: list[str] = []
    raw = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    in_signature = False
    k = 0
    while k < len(raw):
        s = raw[k]
        nxt = raw[k + 1] if k + 1 < len(raw) else ""
        k += 1
        if _ORIGINAL_RE.match(s) or (_HEADER_BLOCK_RE.match(s) and _HEADER_NEXT_RE.match(nxt)):
            return Typed(out, True)  # the rest is the earlier message, quoted whole
        if s.startswith(">"):
            in_signature = False
            continue
        if _ATTRIBUTION_RE.match(s) or (_LOOSE_ATTRIBUTION_RE.match(s) and _next_quoted(raw, k)):
            continue
        if nxt and _ATTRIBUTION_START_RE.match(s) and _ATTRIBUTION_RE.match(f"{s} {nxt}"):
            k += 1  # an attribution wrapped over two lines
            continue
        if not s:
            continue
        if _SIGNATURE_RE.match(s):
            in_signature = True
            continue
        if in_signature:
            continue
        out.append(s)
    # Cut off by the peek (in a quote or in typed text): the sender may have typed more below.
    return Typed(out, complete)


def _next_quoted(raw: list[str], k: int) -> bool:
    """Whether the next non-empty line from index k on is quoted."""
    return next((s.startswith(">") for s in raw[k:] if s), False)


# --- the rule ------------------------------------------------------------------------------------

_ACK_RE = re.compile(
    r"\b(?:thanks?|thank(?:s| you| u)|thx|ty|tks|cheers|much appreciated|appreciated|got it|received|noted"
    r"|perfect|great|brilliant|lovely|excellent|wonderful|fantastic|awesome|super|ok(?:ay)?|will do"
    r"|sounds good|all good|understood|confirmed|acknowledged|fine|done|danke|vielen dank|erhalten"
    r"|merci|reçu|bien reçu|parfait|gracias|recibido|perfecto|grazie|ricevuto|perfetto|bedankt|dank je"
    r"|dank u|ontvangen|prima|tack|mottaget|obrigad[oa]|recebido|dziękuję|dzięki|kiitos|tak)\b",
    re.IGNORECASE,
)
#: Words that ask for something, put a condition, raise a problem or point at more text: any of
#: them means the message may need a reply. Per language; when unsure, a word is listed.
_ASKS_RE = re.compile(
    r"\b(?:please|pls|plz|kindly|can|could|would|will you|shall|should|must|need|needs|needed|require[sd]?"
    r"|want|wish|send|resend|call|ring|phone|meet|schedule|reschedule|move|change|update|advise"
    r"|let me know|lmk|get back|come back to|follow up|when|where|what|why|how|which|who|whom|whether|if"
    r"|but|however|though|although|except|unless|still|yet|also|another|further|additional|more"
    r"|question|questions|query|issue|issues|problem|problems|concern|concerns|urgent|asap|deadline|by"
    r"|before|eod|cob|revert"
    r"|below|inline|attached|attachment|comments?|nits?|notes?|points?|remarks?|feedback"
    r"|missing|wrong|error|errors|incorrect|mistake|not|no|never|don'?t|doesn'?t|didn'?t|isn'?t|aren'?t"
    r"|wasn'?t|won'?t|can'?t|cannot|haven'?t|hasn'?t|unable|instead|rather"
    r"|bitte|können|könnten|kannst|würden|brauche[n]?|benötige[n]?|wann|warum|aber|jedoch|noch"
    r"|senden|schicken|anrufen|rückruf|frage|fragen|problem|nicht|kein[e]?"
    r"|pouvez|pourriez|pourrais|peux|veuillez|merci de|svp|s'il vous pla[iî]t|besoin|quand|pourquoi|comment"
    r"|quoi|où|mais|cependant|encore|envoyer|appeler|question|pas|ne"
    r"|por favor|puede|podría|podrías|necesito|necesitamos|cuándo|cuando|por qué|cómo|dónde|pero|sin embargo"
    r"|todavía|enviar|llamar|pregunta|no"
    r"|per favore|potete|potrebbe|potresti|bisogno|quando|perché|dove|ma|però|ancora|inviare|chiamare"
    r"|domanda|non"
    r"|alstublieft|alsjeblieft|graag|kunt u|kun je|kunnen|nodig|wanneer|waarom|hoe|waar|maar|nog|sturen"
    r"|bellen|vraag|niet|geen"
    r"|pode|poderia|preciso|precisamos|quando|porque|onde|mas|ainda|enviar|ligar|pergunta|não"
    r"|snälla|kan du|kan ni|behöver|när|varför|hur|men|fortfarande|skicka|ringa|fråga|inte"
    r"|venligst|kan du|har brug for|hvornår|hvorfor|hvordan|endnu|sende|ringe|spørgsmål|ikke"
    r"|proszę|prosze|czy|możesz|mogą|potrzebuję|kiedy|dlaczego|jak|ale|jeszcze|wysłać|zadzwonić|pytanie|nie"
    r"|voisitko|voitteko|tarvitsen|milloin|miksi|miten|mutta|vielä|lähettää|soittaa|kysymys|ei)\b",
    re.IGNORECASE,
)
_QUESTION_RE = re.compile(r"[?？¿؟]")
_LIST_ITEM_RE = re.compile(r"^(?:[-*•·–]\s+|\(?\d{1,2}[.)]\s+|\(?[a-h][.)]\s+)")
_WORD_RE = re.compile(r"[\w'’]+")
#: The closing note must be this short (in words) to count as an acknowledgement.
ACK_MAX_WORDS = 12
_SUBJECT_PREFIX_RE = re.compile(r"^\s*(?:(?:re|aw|sv|vs|antw|odp|r|ref|wg|fw|fwd|tr)\s*[:：]\s*)+", re.IGNORECASE)


def acknowledgement(subject: str, body: BodyText | None) -> tuple[bool, str]:
    """(is it an acknowledgement, why): the reason names the rule that decided, for
    `carewatch explain` and the logs."""
    if body is None:
        return False, "no body was read: the client waits"
    typed = typed_text(body.text, body.complete)
    if not typed.complete:
        return False, "the sender's text runs past what was read: the client waits"
    lines = _without_greeting_and_signoff(typed.lines)
    if not lines:
        # Nothing typed but a greeting or a sign-off ("Many thanks!\nEmma" was all): judge
        # what there was, and with no text at all, the subject ("Thanks!").
        lines = [s for s in typed.lines if len(_WORD_RE.findall(s)) > 1 or _ACK_RE.search(s)] or typed.lines
        if not lines:
            subj = _SUBJECT_PREFIX_RE.sub("", subject)
            return _verdict([subj], "subject", max_words=4)
    return _verdict(lines, "text", ACK_MAX_WORDS)


def _verdict(lines: list[str], where: str, max_words: int) -> tuple[bool, str]:
    text = " ".join(lines)
    if _QUESTION_RE.search(text):
        return False, f"the {where} asks a question"
    if len(lines) > 1 and sum(1 for s in lines if _LIST_ITEM_RE.match(s)) >= 1:
        return False, f"the {where} lists points"
    asks = _ASKS_RE.search(text)
    if asks:
        return False, f"the {where} has {asks.group(0).lower()!r}: it may ask for something"
    words = _WORD_RE.findall(text)
    if not words:
        return False, f"the {where} is empty"
    if len(words) > max_words:
        return False, f"the {where} is {len(words)} words: longer than a closing note"
    ack = _ACK_RE.search(text)
    if not ack:
        return False, f"the {where} has no word of thanks or receipt"
    return True, f"a short closing ({ack.group(0).lower()!r}) that asks nothing"


def _without_greeting_and_signoff(lines: list[str]) -> list[str]:
    if lines and _GREETING_RE.match(lines[0]) and not _ACK_RE.search(lines[0]):
        lines = lines[1:]
    # A sign-off and the name under it ("Best,\nAlice"), or a name alone on the last line.
    for k in range(len(lines) - 1, max(len(lines) - 4, -1), -1):
        if _SIGNOFF_RE.match(lines[k]) and all(_looks_like_a_name(s) for s in lines[k + 1:]):
            return lines[:k]
    if len(lines) >= 2 and len(_WORD_RE.findall(lines[-1])) <= 2 and not _ACK_RE.search(lines[-1]) \
            and _looks_like_a_name(lines[-1]):
        return lines[:-1]  # just a name
    return lines


def _looks_like_a_name(line: str) -> bool:
    """A line under a sign-off that can be left out: a name, a title, a company; never a line
    that asks anything."""
    return len(_WORD_RE.findall(line)) <= 4 and not _QUESTION_RE.search(line) and not _ASKS_RE.search(line)


def is_acknowledgement(subject: str, text: str | None, complete: bool = True) -> bool:
    """Whether text typed by a client (already decoded) is a closing note needing no reply."""
    return acknowledgement(subject, None if text is None else BodyText(text, complete))[0]
