"""Acknowledgements: a short closing note ("thanks!", "got it") that needs no reply.

Fail-safe by design. A message is an acknowledgement only when *all* the text its sender
typed (above, between and below quoted blocks; greeting, sign-off, signature and the
"On ... wrote:" line aside) is a short closing with no question, no request and no list of
points. When the body peek ends before the sender's text does, or the text cannot be read,
it is not one: when unsure, the client waits. A needless alert costs an owner a minute; a
missed question costs a client.

The body arrives as the first few KiB of the message body (BODY.PEEK[TEXT]<0.N>); `body_text`
(body.py) finds the first text part in it, decodes it and says whether the part ended within
the peek.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .body import BodyText

# --- what the sender typed -------------------------------------------------------------------

#: "On Mon, 3 Nov 2025, Olivia <o@firm.example> wrote:" and its translations (_is_attribution):
#: a word of writing every attribution has,
_ATTRIBUTION_WORDS = ("wrote", "schrieb", "crit", "escribi", "scritto", "schreef", "escreveu", "skrev", "napisa",
                      "kirjoitti")
#: after it the rest of the verb, then the end of the line, a colon, or a name and a colon,
_ATTR_TAIL_RE = re.compile(r"[\w()]*(?:\s*:?|\s[^:]{1,80}:)\s*", re.IGNORECASE)
#: and before it what an attribution names: an address, a time or a year; or a start like "On".
_ATTR_HEAD_RE = re.compile(r"<[^<>\s]+@[^<>\s]+>|\S@\S|\d{1,2}:\d{2}|\d{4}")
_ATTRIBUTION_START_RE = re.compile(r"^(?:on|am|le|el|il|op|em|den|dne|w dniu)\b", re.IGNORECASE)
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
    (inline answers). Text cut off by the peek is incomplete (the sender may have typed more
    below), unless the quoted original had begun: nothing typed follows that."""
    out: list[str] = []
    raw = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    in_signature = False
    k = 0
    while k < len(raw):
        s = raw[k]
        k += 1
        # The cheap tests first: most lines are quoted, empty, or plain text with none of the
        # words that the costlier patterns look for.
        if not s:
            continue
        if s[0] == ">":
            in_signature = False
            continue
        nxt = raw[k] if k < len(raw) else ""
        if (s[0] in "-_bB" and _ORIGINAL_RE.match(s)) or (
                ":" in s[:24] and _HEADER_BLOCK_RE.match(s) and _HEADER_NEXT_RE.match(nxt)):
            return Typed(out, True)  # the rest is the earlier message, quoted whole
        if _is_attribution(s, raw, k):
            continue
        if nxt and _ATTRIBUTION_START_RE.match(s) and _is_attribution(f"{s} {nxt}", raw, k + 1, loose=False):
            k += 1  # an attribution wrapped over two lines
            continue
        if _SIGNATURE_RE.match(s):
            in_signature = True
            continue
        if in_signature:
            continue
        out.append(s)
    # Cut off by the peek (in a quote or in typed text): the sender may have typed more below.
    return Typed(out, complete)


def _is_attribution(s: str, raw: list[str], k: int, loose: bool = True) -> bool:
    """"On Mon, 3 Nov 2025, Olivia <o@firm.example> wrote:", "Am ... schrieb Olivia Owner:":
    a verb of writing that ends the line (a name and a colon may follow it), after a line start
    that names a day, an address, a time or a year; or, loosely, any short line ending so when
    quoted lines follow it."""
    low = s.lower()
    for word in _ATTRIBUTION_WORDS:  # str.find, not a regex: most lines have none of them
        start = low.find(word)
        if start >= 0:
            break
    else:
        return False
    if not _ATTR_TAIL_RE.fullmatch(s, start + len(word)):
        return False
    head = s[:start]
    if len(head) > 300:
        return False
    if _ATTRIBUTION_START_RE.match(head) or _ATTR_HEAD_RE.search(head):
        return True
    return loose and len(head) <= 120 and _next_quoted(raw, k)


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
#: Words (and phrases) that ask for something, put a condition, raise a problem or point at
#: more text: any of them means the message may need a reply. Per language; when unsure, a word
#: is listed. Written as alternatives ("comments?", "don'?t"), looked up as a set of words.
_ASKS = (
    "please|pls|plz|kindly|can|could|would|will you|shall|should|must|need|needs|needed|require[sd]?|"
    "want|wish|send|resend|call|ring|phone|meet|schedule|reschedule|move|change|update|advise|"
    "let me know|lmk|get back|come back to|follow up|when|where|what|why|how|which|who|whom|whether|if|"
    "but|however|though|although|except|unless|still|yet|also|another|further|additional|more|question|"
    "questions|query|issue|issues|problem|problems|concern|concerns|urgent|asap|deadline|by|before|eod|"
    "cob|revert|below|inline|attached|attachment|comments?|nits?|notes?|points?|remarks?|feedback|"
    "missing|wrong|error|errors|incorrect|mistake|not|no|never|don'?t|doesn'?t|didn'?t|isn'?t|aren'?t|"
    "wasn'?t|won'?t|can'?t|cannot|haven'?t|hasn'?t|unable|instead|rather|bitte|können|könnten|kannst|"
    "würden|brauche[n]?|benötige[n]?|wann|warum|aber|jedoch|noch|senden|schicken|anrufen|rückruf|frage|"
    "fragen|problem|nicht|kein[e]?|pouvez|pourriez|pourrais|peux|veuillez|merci de|svp|"
    "s'il vous pla[iî]t|besoin|quand|pourquoi|comment|quoi|où|mais|cependant|encore|envoyer|appeler|"
    "question|pas|ne|por favor|puede|podría|podrías|necesito|necesitamos|cuándo|cuando|por qué|cómo|"
    "dónde|pero|sin embargo|todavía|enviar|llamar|pregunta|no|per favore|potete|potrebbe|potresti|"
    "bisogno|quando|perché|dove|ma|però|ancora|inviare|chiamare|domanda|non|alstublieft|alsjeblieft|"
    "graag|kunt u|kun je|kunnen|nodig|wanneer|waarom|hoe|waar|maar|nog|sturen|bellen|vraag|niet|geen|"
    "pode|poderia|preciso|precisamos|quando|porque|onde|mas|ainda|enviar|ligar|pergunta|não|snälla|"
    "kan du|kan ni|behöver|när|varför|hur|men|fortfarande|skicka|ringa|fråga|inte|venligst|kan du|"
    "har brug for|hvornår|hvorfor|hvordan|endnu|sende|ringe|spørgsmål|ikke|proszę|prosze|czy|możesz|mogą|"
    "potrzebuję|kiedy|dlaczego|jak|ale|jeszcze|wysłać|zadzwonić|pytanie|nie|voisitko|voitteko|tarvitsen|"
    "milloin|miksi|miten|mutta|vielä|lähettää|soittaa|kysymys|ei"
)


def _expand(pattern: str) -> list[str]:
    """The strings an alternative of _ASKS stands for: "x?" and "[ab]" (optionally "?")."""
    out = [""]
    k = 0
    while k < len(pattern):
        if pattern[k] == "[":
            end = pattern.index("]", k)
            choices, k = list(pattern[k + 1:end]), end + 1
        else:
            choices, k = [pattern[k]], k + 1
        if k < len(pattern) and pattern[k] == "?":
            choices, k = [*choices, ""], k + 1
        out = [o + c for o in out for c in choices]
    return out


_ASK_TERMS = {t for alt in _ASKS.split("|") for t in _expand(alt)}
_ASK_WORDS = frozenset(t for t in _ASK_TERMS if " " not in t)
_ASK_PHRASES = tuple(sorted(t for t in _ASK_TERMS if " " in t))


def _asks(text: str) -> str | None:
    """The first word or phrase in `text` that may ask for something, or None. A set lookup per
    word: the same rule as one big case-insensitive regex, a tenth of the time."""
    words = _WORD_RE.findall(text.lower().replace("’", "'"))
    for w in words:
        if w in _ASK_WORDS:
            return w
    joined = f" {' '.join(words)} "
    return next((p for p in _ASK_PHRASES if f" {p} " in joined), None)
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
    asks = _asks(text)
    if asks:
        return False, f"the {where} has {asks!r}: it may ask for something"
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
    return len(_WORD_RE.findall(line)) <= 4 and not _QUESTION_RE.search(line) and not _asks(line)


def is_acknowledgement(subject: str, text: str | None, complete: bool = True) -> bool:
    """Whether text typed by a client (already decoded) is a closing note needing no reply."""
    return acknowledgement(subject, None if text is None else BodyText(text, complete))[0]
