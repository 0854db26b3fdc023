"""A realistic demo firm: clients, owners, partners, contacts and months of correspondence in a
local Maildir, with the situations that matter. Deterministic for a seed. The same generator
feeds the demo, tests and benchmarks."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from .synth import build_message

TZ = ZoneInfo("Europe/London")
FIRM = "harbourline.example"
#: The demo's "now": a Monday morning, so last Friday's unanswered question shows.
DEFAULT_NOW = datetime(2026, 11, 16, 11, 0, tzinfo=TZ)

OWNERS = [("Olivia Okafor", "olivia"), ("Marcus Lee", "marcus"), ("Priya Shah", "priya"), ("Tom Berg", "tom")]
PARTNERS = [("Helen Grant", "helen", "all"), ("Daniel Roth", "daniel", ["marcus", "tom"])]

FIRST = ["Alice", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Uma", "Victor", "Wen", "Yusuf"]
LAST = ["Archer", "Bauer", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
        "Kowalski", "Larsen", "Moreau", "Novak", "Okoye", "Petrov", "Quist", "Rossi", "Silva", "Tanaka"]
TOPICS = ["Q3 accounts", "Board pack", "VAT return", "Payroll question", "Contract renewal", "Audit timetable",
          "Invoice 4471", "Year-end planning", "Due diligence list", "Share options", "Lease review",
          "Budget 2027", "Pension scheme", "Grant application", "Subsidiary merger", "Expense policy"]
QUESTIONS = ["Could you take a look at the attached and tell me what you think?",
             "When can we expect the draft? The board meets next week.",
             "Can we set up a call this week to go through the open points?",
             "Quick question: does this change anything for our filing?"]
THANKS = ["Thanks, got it!", "Perfect, thank you.", "Many thanks!", "Great, thanks a lot."]


@dataclass
class DemoClient:
    name: str
    domain: str
    owner: str
    internal: bool = False
    contacts: list[tuple[str, str, str]] = field(default_factory=list)  # (name, email, role)
    #: minutes the firm usually takes to reply (business-hours-ish), and this week's.
    reply_minutes: tuple[int, int] = (90, 90)
    situation: str = "healthy"


@dataclass
class DemoFirm:
    root: Path
    config: Path
    maildir: Path
    now: datetime
    clients: list[DemoClient]
    messages: int


CLIENTS = [
    ("Acme Logistics", "acme-logistics.example", "olivia", "healthy"),
    ("Brightwater Foods", "brightwater.example", "olivia", "unanswered_weekend"),
    ("Cobalt Systems", "cobalt.example", "marcus", "chased"),
    ("Delta Architects", "delta-arch.example", "marcus", "silent_principal"),
    ("Evergreen Trust", "evergreen.example", "priya", "going_quiet"),
    ("Fjord Shipping", "fjord.example", "priya", "slowing"),
    ("Granite Capital", "granite.example", "tom", "healthy"),
    ("Helios Energy", "helios.example", "tom", "ooo"),
    ("Ivory Health", "ivory-health.example", "olivia", "healthy"),
    ("Juniper Retail", "juniper.example", "marcus", "no_principal"),
    ("Kestrel Media", "kestrel.example", "tom", "discovered"),
    ("People & Culture", FIRM, "priya", "internal"),
]


def _person(rng: random.Random, used: set[str]) -> tuple[str, str]:
    """A name not used yet; once the 480 plain combinations run out, surnames get a number."""
    for attempt in range(100_000):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if attempt >= 50:
            last = f"{last}{rng.randrange(2, 10_000)}"
        if f"{first} {last}" not in used:
            used.add(f"{first} {last}")
            return first, last
    raise RuntimeError("no unused name left")  # pragma: no cover - 240 million combinations


def _biz(t: datetime) -> datetime:
    """Move t into business hours (Mon-Fri 09:00-17:30 London)."""
    t = t.astimezone(TZ)
    while t.weekday() >= 5:
        t = (t + timedelta(days=1)).replace(hour=9, minute=15)
    if t.hour < 9:
        t = t.replace(hour=9, minute=5 + t.minute % 50)
    elif t.hour >= 17:
        t = (t + timedelta(days=1)).replace(hour=9, minute=20)
        return _biz(t)
    return t


class _Writer:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.n = 0
        for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        (maildir / ".Sent" / "maildirfolder").touch()

    def write(self, raw: bytes, when: datetime, folder: str = "INBOX") -> None:
        self.n += 1
        d = self.maildir if folder == "INBOX" else self.maildir / f".{folder}"
        p = d / "cur" / f"{int(when.timestamp())}.{self.n:06d}.demo:2,S"
        p.write_bytes(raw)
        os.utime(p, (when.timestamp(), when.timestamp()))


def generate(root: Path, seed: int = 7, now: datetime = DEFAULT_NOW, months: int = 4,
             extra_clients: int = 0) -> DemoFirm:
    """The demo firm; `extra_clients` adds that many ordinary, healthy clients (for tests and
    benchmarks that want a bigger portfolio)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    maildir = root / "Maildir"
    w = _Writer(maildir)
    shared = f"clients@{FIRM}"
    owner_addr = {k: f"{k}@{FIRM}" for _, k in OWNERS}
    clients = _roster(rng, extra_clients)
    start = now - timedelta(days=30 * months)
    count = 0
    for c in clients:
        owner = owner_addr[c.owner]
        principal = next((ct for ct in c.contacts if ct[2] == "principal"), c.contacts[0])
        count = _correspondence(w, rng, c, owner, principal, shared, start, now, count)
        count = _situations(w, rng, c, owner, principal, shared, start, now, count)
    config = root / "carewatch.toml"
    config.write_text(_config_text(root, maildir, clients, shared))
    return DemoFirm(root, config, maildir, now, clients, count)


def _roster(rng: random.Random, extra_clients: int) -> list[DemoClient]:
    """The firm's clients, each with two to four contacts."""
    used: set[str] = set()
    clients: list[DemoClient] = []
    roster = list(CLIENTS) + [(f"Client {k:03d} Ltd", f"client{k:03d}.example", OWNERS[k % len(OWNERS)][1], "healthy")
                              for k in range(extra_clients)]
    for name, domain, owner, situation in roster:
        c = DemoClient(name, domain, owner, internal=situation == "internal", situation=situation)
        roles = ["principal", "sponsor", "user", "user"] if situation != "no_principal" else ["sponsor", "user", "user"]
        for role in roles[: 2 + rng.randrange(len(roles) - 1)]:
            first, last = _person(rng, used)
            local = f"{first}.{last}".lower()
            email = f"{local}@{domain}" if not c.internal else f"{local}@{FIRM}"
            c.contacts.append((f"{first} {last}", email, role))
        c.reply_minutes = {"slowing": (60, 14 * 60), "healthy": (75, 75)}.get(situation, (110, 110))
        clients.append(c)

    return clients


def _correspondence(w: _Writer, rng: random.Random, c: DemoClient, owner: str, principal: tuple[str, str, str],
                    shared: str, start: datetime, now: datetime, count: int) -> int:
    """Regular correspondence: every contact writes every few days; the firm answers."""
    for ct_name, ct_email, role in c.contacts:
        gap = {"principal": 4, "sponsor": 9}.get(role, 12)
        t = start + timedelta(days=rng.uniform(0, gap), hours=rng.uniform(0, 8))
        stop_at = now - timedelta(days=3)
        if c.situation == "going_quiet" and role == "principal":
            stop_at = now - timedelta(days=26)
        if c.situation == "silent_principal" and role == "principal":
            stop_at = now - timedelta(days=45)
        k = 0
        while t < stop_at:
            t = _biz(t)
            if t >= stop_at:
                break
            topic = f"{rng.choice(TOPICS)}"
            mid = f"<d{count}.{k}@{c.domain}>"
            frm = (ct_name, ct_email)
            w.write(build_message(sender=frm, to=[shared], cc=[owner], subject=topic, date=t, message_id=mid,
                                  body=f"Hi,\n\n{rng.choice(QUESTIONS)}\n\nBest,\n{ct_name.split()[0]}"), t)
            count += 1
            # The firm replies (from Sent), faster or slower by client and week.
            last_week = t > now - timedelta(days=7)
            base = c.reply_minutes[1] if last_week else c.reply_minutes[0]
            delay = timedelta(minutes=max(10, rng.gauss(base, base / 4)))
            silent_principal = c.situation == "silent_principal" and ct_email == principal[1]
            rt = _biz(t + delay)
            if rt < now and not (silent_principal and t > now - timedelta(days=40)):
                w.write(build_message(sender=(dict((k2, n) for n, k2 in OWNERS)[c.owner], owner), to=[frm],
                                      cc=[shared], subject=f"Re: {topic}", date=rt,
                                      message_id=f"<r{count}@{FIRM}>", in_reply_to=mid, references=[mid],
                                      body="Thanks, here is the update you asked for."), rt, folder="Sent")
                count += 1
                if rng.random() < 0.25 and rt + timedelta(hours=1) < now:
                    ta = _biz(rt + timedelta(minutes=rng.randrange(20, 200)))
                    if ta < now:
                        w.write(build_message(sender=frm, to=[shared, owner], subject=f"Re: {topic}", date=ta,
                                              message_id=f"<a{count}@{c.domain}>",
                                              in_reply_to=f"<r{count - 1}@{FIRM}>",
                                              body=rng.choice(THANKS) + f"\n\n{ct_name.split()[0]}"), ta)
                        count += 1
            k += 1
            t = t + timedelta(days=rng.uniform(gap * 0.6, gap * 1.4))
    return count


def _situations(w: _Writer, rng: random.Random, c: DemoClient, owner: str, principal: tuple[str, str, str],
                shared: str, start: datetime, now: datetime, count: int) -> int:
    """The firm's own news, the situation the client is in, and some automated noise."""
    # The firm's own news to the principal now and then (not for the silent one).
    if c.situation != "silent_principal":
        t = start + timedelta(days=10)
        while t < now - timedelta(days=2):
            tt = _biz(t)
            w.write(build_message(sender=owner, to=[principal[1]], subject="Quarterly update", date=tt,
                                  message_id=f"<u{count}@{FIRM}>"), tt, folder="Sent")
            count += 1
            t += timedelta(days=rng.uniform(12, 20))
    # The situations that matter.
    if c.situation == "unanswered_weekend":
        t = datetime.combine((now - timedelta(days=now.weekday() + 3)).date(), datetime.min.time(),
                             TZ).replace(hour=13, minute=40)
        w.write(build_message(sender=(principal[0], principal[1]), to=[shared], cc=[owner],
                              subject="Urgent: revised supplier contract", date=t, message_id=f"<wk@{c.domain}>",
                              body="Hi,\n\nCould you confirm the indemnity clause before Monday?\n\nThanks"), t)
        count += 1
    if c.situation == "chased":
        t1 = _biz(now - timedelta(days=4, hours=3))
        w.write(build_message(sender=(principal[0], principal[1]), to=[shared], subject="Licence renewal terms",
                              date=t1, message_id=f"<ch1@{c.domain}>",
                              body="Hello,\n\nWhat are the options for the renewal?\n\nRegards"), t1)
        t2 = _biz(now - timedelta(days=1, hours=2))
        w.write(build_message(sender=(principal[0], principal[1]), to=[shared], cc=[owner],
                              subject="Re: Licence renewal terms", date=t2, message_id=f"<ch2@{c.domain}>",
                              in_reply_to=f"<ch1@{c.domain}>", references=[f"<ch1@{c.domain}>"],
                              body="Any news on this? We need to decide this week."), t2)
        count += 2
    if c.situation == "ooo":
        # A client asks; the owner's out-of-office answers - which is not a reply.
        t = _biz(now - timedelta(days=4, hours=1))
        w.write(build_message(sender=(principal[0], principal[1]), to=[owner, shared], subject="Site visit dates",
                              date=t, message_id=f"<ooo-q@{c.domain}>"), t)
        w.write(build_message(sender=owner, to=[principal[1]], subject="Automatic reply: Site visit dates",
                              date=t + timedelta(minutes=1), message_id=f"<ooo-r@{FIRM}>",
                              in_reply_to=f"<ooo-q@{c.domain}>", extra_headers={"Auto-Submitted": "auto-replied"},
                              body="I am out of the office until Wednesday."), t + timedelta(minutes=1), "Sent")
        count += 2
    if c.situation == "slowing":
        # This week the team is swamped: every reply takes most of a day.
        for k in range(4):
            t = _biz((now - timedelta(days=6 - k)).replace(hour=9, minute=30))
            if t >= now:
                continue
            q = f"<slow{k}@{c.domain}>"
            w.write(build_message(sender=(principal[0], principal[1]), to=[shared], subject=f"Shipment {k + 101}",
                                  date=t, message_id=q), t)
            rt = _biz(t + timedelta(hours=26))
            if rt < now:
                w.write(build_message(sender=owner, to=[principal[1]], subject=f"Re: Shipment {k + 101}",
                                      date=rt, message_id=f"<slowr{k}@{FIRM}>", in_reply_to=q, references=[q]),
                        rt, folder="Sent")
            count += 2
    if c.situation == "discovered":
        t = _biz(now - timedelta(days=1, hours=5))
        w.write(build_message(sender=("Nadia Frost", f"nadia.frost@{c.domain}"), to=[shared],
                              subject="Introduction: new finance lead", date=t, message_id=f"<nf@{c.domain}>",
                              body="Hello, I have taken over finance at Kestrel. Who should I talk to?"), t)
        count += 1
    # Some automated noise: a newsletter from the client.
    t = _biz(now - timedelta(days=rng.randrange(3, 20)))
    w.write(build_message(sender=f"news@{c.domain}", to=[shared], subject=f"{c.name} monthly newsletter", date=t,
                          message_id=f"<nl{count}@{c.domain}>",
                          extra_headers={"List-Id": f"<news.{c.domain}>", "Precedence": "bulk"}), t)
    count += 1

    return count


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_text(root: Path, maildir: Path, clients: list[DemoClient], shared: str) -> str:
    lines = [
        "# Generated by `carewatch demo`: a made-up firm. Edit freely and run again.",
        "[firm]", 'name = "Harbourline Advisory LLP"', f'domains = ["{FIRM}"]', "",
        "[calendar]", 'timezone = "Europe/London"',
        'holidays = ["2026-08-31", "2026-12-25", "2026-12-28"]', "",
        "[store]", f"url = {_q('sqlite:///' + str(root / 'carewatch.db'))}", "",
        "[[mailboxes]]", 'name = "clients"', 'kind = "maildir"', f"path = {_q(str(maildir))}",
        'folders = ["INBOX", "Sent"]', "",
        "[notify]", f"dir = {_q(str(root / 'outbox'))}", f'from_address = "carewatch@{FIRM}"',
        f"reply_to = {_q(shared)}", "",
        "[policy]", 'reply_within = "8h"', "",
        "[policy.roles.principal]", 'reply_within = "4h"', 'silence_after = "21d"', "",
    ]
    for name, key in OWNERS:
        backup = "helen@" + FIRM if key in ("olivia", "priya") else "daniel@" + FIRM
        lines += ["[[owners]]", f"name = {_q(name)}", f'email = "{key}@{FIRM}"', f'backup = "{backup}"', ""]
    for name, key, scope in PARTNERS:
        sc = _q(scope) if isinstance(scope, str) else "[" + ", ".join(f'"{s}@{FIRM}"' for s in scope) + "]"
        lines += ["[[partners]]", f"name = {_q(name)}", f'email = "{key}@{FIRM}"', f"scope = {sc}", ""]
    for c in clients:
        lines += ["[[clients]]", f"name = {_q(c.name)}", f"internal = {'true' if c.internal else 'false'}"]
        if not c.internal:
            lines.append(f'domains = ["{c.domain}"]')
        lines.append(f'owner = "{c.owner}@{FIRM}"')
        lines.append("contacts = [")
        for n, e, r in c.contacts:
            lines.append(f"  {{ name = {_q(n)}, email = {_q(e)}, role = {_q(r)} }},")
        lines += ["]", ""]
    return "\n".join(lines)


def demo_now(value: datetime | None) -> datetime:
    return (value or DEFAULT_NOW).astimezone(UTC).replace(tzinfo=None)
