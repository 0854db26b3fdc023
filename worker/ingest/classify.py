"""Classify each message: direction, client and contacts, automated mail, acknowledgements.

The automated-mail rules combine what Zammad, osTicket and FreeScout check (RFC 3834 plus
vendor headers), with List-Id added, and `Auto-Submitted: no` treated as human.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .headers import ParsedMessage

# --- automated mail -------------------------------------------------------------------------
#: Sender local parts (and one domain form) that only machines use. Not info@, support@ or
#: office@: people write from those. "noreply" may stand anywhere in the local part
#: (gmail-noreply@, info-noreply@).
_AUTO_SENDER_RE = re.compile(
    r"^(?:mailer-daemon|postmaster|daemon|(?:[\w.+-]*[-_.+])?no-?reply(?:[-_.+][^@]*)?|(?:[\w.+-]*[-_.])?do-?not-?reply"
    r"(?:[-_.+][^@]*)?|donotreply|bounces?|[\w.-]+-bounces?|notifications?|notify|auto-?reply|autoresponder"
    r"|auto-?confirm|newsletters?|e?news|announcements?|announce|mailer|marketing|digest)(?:[+-][^@]*)?@"
    r"|@(?:[\w-]+\.)*bounces?\.",
    re.IGNORECASE,
)
#: A Return-Path or Sender that says "bounces come here": list servers and bulk senders.
_BOUNCE_ADDRESS_RE = re.compile(
    r"(?:^|[<\s])(?:[^@<>\s]*[-_.+=])?bounces?(?:[-_.+=][^@<>\s]*)?@|@(?:[\w-]+\.)*bounces?\."
    r"|\+bnc[^@<>\s]*@|(?:^|[<\s])owner-[^@<>\s]+@|-(?:owner|request)@",
    re.IGNORECASE,
)
#: Automatic replies, in English and every EU language, Japanese and Chinese. A phrase counts at
#: the start of the subject (after tags like "[EXT]"), or anywhere when a colon follows it or
#: brackets hold it ("Invoice (Automatic Response)"), never after a reply prefix: "RE:
#: Automatic reply: ..." is a person answering an auto-reply.
#: The words only a machine writes ("Automatic reply", "Réponse automatique")...
_OOO_MACHINE = (
    r"automatic reply|auto[- ]?reply|autoreply|auto[- ]?respon[cs]e|automatic respon[cs]e|autorespons\w*"
    r"|vacation reply|abwesenheitsnotiz|automatische antwort|autom\. antwort|r[ée]ponse automatique"
    r"|message d'absence|respuesta autom[áa]tica|risposta automatica|automatisch antwoord|afwezigheidsbericht"
    r"|resposta autom[áa]tica|automatiskt svar|automatisk svar|automatisk besked|automaattinen vastaus"
    r"|automatyczna odpowied[źz]|odpowied[źz] automatyczna|automatick[áa] odpov[ěe][dď]|automatick[áa] odpove[ďd]"
    r"|automatikus v[áa]lasz|r[ăa]spuns automat|автоматичен отговор|automatski odgovor|samodejni odgovor"
    r"|automaatne vastus|autom[āa]tisk[āa] atbilde|automatinis atsakymas|αυτόματη απάντηση"
    r"|freagra uathoibr[íi]och|twe[ġg]iba awtomatika|自動応答|自動返信|自动回复|自動回覆|自動回復"
)
#: ...and the words a person writes too ("Absence: who covers for Jane?", "On leave from
#: Monday"): a subject with these that asks a question is a person's (see _ooo_subject).
_OOO_HUMAN = (
    r"out of (?:the )?office|ooo|away from (?:the )?office|on vacation|on leave|holiday notice"
    r"|abwesenheit|abwesend|absence du bureau|absent du bureau|absence"
    r"|fuera de (?:la )?oficina|ausencia|fuori ufficio|fuori sede|assenza|afwezig|niet aanwezig"
    r"|fora do escrit[óo]rio|aus[êe]ncia|fr[åa]nvarande|fr[åa]nvaro|frav[æa]rende|frav[æa]r|ikke på kontoret"
    r"|poissa toimistolta|poissaolo|poza biurem|nieobecno[śs][ćc]|mimo kancel[áa][řr]|mimo kancel[áa]rie"
    r"|h[áa]zon k[íi]v[üu]l|irod[áa]n k[íi]v[üu]l|[îi]n afara biroului|извън офиса|izvan ureda|odsoten"
    r"|kontorist eemal|[āa]rpus biroja|ne biure|εκτός γραφείου|不在通知|外出通知|休假通知"
)
_OOO_PHRASES = f"{_OOO_MACHINE}|{_OOO_HUMAN}"
_BOUNCE_PHRASES = (
    r"undeliverable|undelivered mail|delivery status notification|mail delivery (?:failed|failure|subsystem)"
    r"|returned mail|non[- ]?delivery|delivery failure|delivery has failed|failure notice|message not delivered"
    r"|delayed mail|delivery delayed|warning: could not send message|unzustellbar|nicht zustellbar|non remis"
    r"|onbestelbaar|no se puede entregar|non recapitabile|olevererbart|niedostarczalne|nedoru[čc]iteln[ée]"
    r"|k[ée]zbes[íi]thetetlen"
)
_TAGS = r"(?:\s*(?:\[[^\]]{0,30}\]|\(ext\))\s*)*"
#: What may follow an out-of-office phrase at the start of a subject: the end, punctuation, or
#: a word of an auto-reply ("Out of Office AutoReply", "OOO until 3 Dec"). Anything else reads
#: as a person's subject ("Out of office cover over Christmas").
_OOO_FOLLOW = (r"(?:\s*(?:$|[:：\-–—(\[【,.!])|\s+(?:from|re|autoreply|auto-reply|until|till|through|back|on"
               r"|bis|jusqu|hasta|fino|tot|do|od|i am|je suis|ich bin)\b)")
# Three patterns, each tried only where it can match: one long alternation tried at every
# position of every subject cost more than the rest of classification together.


def _ooo_patterns(phrases: str, human: bool) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """The three places an auto-reply phrase counts: at the start, before a colon, in brackets."""
    sentences = r"|auto:|i am (?:currently )?out of|i will be out of" if human else r"|auto:"
    return (re.compile(rf"{_TAGS}(?:(?:{phrases}){_OOO_FOLLOW}|{_BOUNCE_PHRASES}{sentences})", re.IGNORECASE),
            re.compile(rf"(?<!\w)(?:{phrases})\s*[:：]", re.IGNORECASE),
            re.compile(rf"[\(\[【]\s*(?:{phrases})\s*[\)\]】]", re.IGNORECASE))


_OOO_ANY = _ooo_patterns(_OOO_PHRASES, human=True)
_OOO_MACHINE_ONLY = _ooo_patterns(_OOO_MACHINE, human=False)
#: A subject that asks: "?" in Latin, full-width and Arabic script, and Spanish's opening "¿".
_ASKS_RE = re.compile(r"[?？¿؟]")


def _matches(subject: str, patterns: tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]) -> bool:
    start, colon, bracket = patterns
    return bool(start.match(subject)
                or (("：" in subject or ":" in subject) and colon.search(subject))
                or (("(" in subject or "[" in subject or "【" in subject) and bracket.search(subject)))


def _ooo_subject(subject: str) -> bool:
    """Whether the subject says it is an automatic reply or a bounce. Where it asks a question,
    only the words a machine writes count: "Absence: who covers my account?" is a client
    waiting for an answer, "Automatic reply: Can you send the figures?" is not."""
    if not _matches(subject, _OOO_ANY):
        return False
    return not _ASKS_RE.search(subject) or _matches(subject, _OOO_MACHINE_ONLY)
_REPLY_FIRST_RE = re.compile(rf"^{_TAGS}(?:re|aw|sv|vs|antw|odp|ref|r|wg|fw|fwd|tr|rv|enc)\s*[:：]", re.IGNORECASE)
_PRECEDENCE_AUTO = {"bulk", "junk", "list", "auto_reply", "auto-reply"}
#: The rules decided by what is stored (sender and subject): mail stored under older versions
#: of them is judged again at start-up when AUTOMATION_RULES_VERSION changes.
SENDER_SUBJECT_RULES = frozenset({"automated sender", "out-of-office subject"})
AUTOMATION_RULES_VERSION = "3"


def automated_reason(pm: ParsedMessage) -> str | None:
    """Why this message is automated (a rule name), or None if a person wrote it."""
    h = pm.auto_headers
    auto_submitted = h.get("auto-submitted", "").strip().lower()
    if auto_submitted and auto_submitted.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto_submitted[:40]}"
    for name in ("x-autoreply", "x-autorespond", "x-auto-reply", "x-autogenerated",
                 "x-auto-response"):
        if name in h and h[name].strip().lower() not in ("no", "false", "0"):
            return name
    for name in ("precedence", "x-precedence"):
        if h.get(name, "").strip().lower() in _PRECEDENCE_AUTO:
            return f"{name}: {h[name].strip().lower()}"
    for name in ("list-id", "list-unsubscribe", "list-post", "mailing-list", "feedback-id"):
        if name in h:
            return name
    return_path = h.get("return-path", "x").strip()
    if return_path in ("<>", ""):
        return "null return-path"
    ctype = h.get("content-type", "").lower()
    if ctype.startswith("multipart/report") or "delivery-status" in ctype:
        return "delivery report"
    if "x-ms-exchange-inbox-rules-loop" in h or "x-ms-exchange-generated-message-source" in h:
        return "exchange rule"
    if "x-failed-recipients" in h:
        return "bounce"
    if "x-carewatch-kind" in h:
        return "carewatch"
    if pm.from_addr and _AUTO_SENDER_RE.search(pm.from_addr):
        return "automated sender"
    if _BOUNCE_ADDRESS_RE.search(return_path):
        return "bulk return-path"
    sender = h.get("sender", "")
    if sender and _BOUNCE_ADDRESS_RE.search(sender):
        return "list sender"
    if not _REPLY_FIRST_RE.match(pm.subject) and _ooo_subject(pm.subject):
        return "out-of-office subject"
    # Note: X-Auto-Response-Suppress is a request by the sender, not proof of automation
    # (Outlook sets it on ordinary mail to groups), so it is deliberately not a rule.
    return None


# --- direction and contacts -----------------------------------------------------------------
@dataclass(slots=True)
class ContactRef:
    id: int
    client_id: int
    role: str


@dataclass
class Directory:
    """Who is who: built from the store after the config has been synced into it."""

    firm_domains: frozenset[str]
    firm_addresses: frozenset[str] = frozenset()
    contacts: dict[str, ContactRef] = field(default_factory=dict)
    #: Domains of external clients -> client id (internal clients match by contact email only).
    domain_clients: dict[str, int] = field(default_factory=dict)

    def is_firm(self, addr: str) -> bool:
        return addr in self.firm_addresses or addr.rpartition("@")[2] in self.firm_domains

    def client_of(self, addr: str) -> tuple[int | None, int | None]:
        """(client id, contact id) of an address: a listed contact first, then a client domain."""
        ref = self.contacts.get(addr)
        if ref:
            return ref.client_id, ref.id
        return self.domain_clients.get(addr.rpartition("@")[2]), None


@dataclass(slots=True)
class Classification:
    direction: str
    client_id: int | None
    #: Inbound: the sender; outbound: every recipient who is a contact.
    contact_ids: list[int]
    #: Addresses at a client domain that are not contacts yet: (address, name, client id).
    discovered: list[tuple[str, str, int]]
    firm_in_to: bool
    firm_in_cc: bool


def classify(pm: ParsedMessage, d: Directory) -> Classification:
    sender = pm.from_addr
    firm_in_to = any(d.is_firm(a) for a in pm.to)
    firm_in_cc = any(d.is_firm(a) for a in pm.cc)
    discovered: list[tuple[str, str, int]] = []

    client_id, contact_id = d.client_of(sender) if sender else (None, None)
    # A listed contact is inbound even at a firm domain: that is how internal clients write.
    if contact_id is not None or (client_id is not None and not d.is_firm(sender)):
        if contact_id is None and client_id is not None:
            discovered.append((sender, pm.from_name, client_id))
        return Classification("inbound", client_id, [contact_id] if contact_id else [],
                              discovered, firm_in_to, firm_in_cc)

    if sender and d.is_firm(sender):
        clients: list[int] = []
        contacts: list[int] = []
        for addr in pm.to + pm.cc:
            cid, ctid = d.client_of(addr)
            if cid is None:
                continue
            if cid not in clients:
                clients.append(cid)
            if ctid is not None:
                contacts.append(ctid)
            elif not d.is_firm(addr):
                discovered.append((addr, "", cid))
        if clients:
            return Classification("outbound", clients[0], contacts, discovered, firm_in_to,
                                  firm_in_cc)
        return Classification("internal", None, [], [], firm_in_to, firm_in_cc)
    return Classification("other", None, [], [], firm_in_to, firm_in_cc)
