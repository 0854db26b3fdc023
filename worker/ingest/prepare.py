"""The CPU half of ingest: fetched header blocks -> parsed, classified message rows.

Functions of their arguments, a mailbox source and a classification directory, never the
store: a scan runs them on a helper thread or in a helper process (helper.py) while the
previous batch is stored, and a test can run them without either.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Callable, Generator, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .. import defaults
from ..mailbox.base import Item, MailboxSource, RawMessage
from .acknowledgement import acknowledgement
from .body import body_text
from .classify import Classification, Directory, automated_reason, classify
from .fields import is_subject_reply, normalise_subject
from .headers import ParsedMessage, parse_header_block, valid_text
from .reply_commands import find_token, parse_command

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedMessage:
    raw: RawMessage
    pm: ParsedMessage
    cl: Classification
    auto: str | None
    command: bool
    ack: bool = False
    #: Why it is or is not an acknowledgement (None: no body was read, as for automated mail).
    ack_reason: str | None = None


@dataclass(slots=True)
class PreparedBatch:
    """One fetched batch, ready to store: plain rows, cheap to send to another process."""

    now: datetime
    #: message table rows, in the folder's order.
    rows: list[dict[str, Any]]
    #: Rows that name people at client domains who are not contacts yet: (index in rows,
    #: those people as (address, name, client id), the parsed message to classify again
    #: once they are stored).
    discovered: list[tuple[int, list[tuple[str, str, int]], ParsedMessage]]
    commands: list[dict[str, Any]]
    skipped: list[tuple[Item, str]]


def classified(cl: Classification) -> dict[str, Any]:
    """The columns of a message row that come from classification."""
    return {"direction": cl.direction, "client_id": cl.client_id, "contact_ids": ",".join(map(str, cl.contact_ids)),
            "firm_in_to": cl.firm_in_to, "firm_in_cc": cl.firm_in_cc}


def message_row(pm: ParsedMessage, cl: Classification, auto: str | None, ack: bool, mailbox: str,
                folder: str, uid: int | None, now: datetime, ack_reason: str | None = None) -> dict[str, Any]:
    refs = pm.references
    return {
        "message_id": pm.message_id, "synthetic_id": pm.synthetic_id,
        "in_reply_to": pm.in_reply_to, "references": " ".join(refs)[:20000],
        "subject": pm.subject, "norm_subject": normalise_subject(pm.subject),
        "subject_reply": is_subject_reply(pm.in_reply_to, refs, pm.subject),
        "from_addr": pm.from_addr, "from_name": pm.from_name,
        "to_addrs": ",".join(pm.to), "cc_addrs": ",".join(pm.cc),
        "date_header": pm.date_header, "internal_date": pm.internal_date, "sent_at": pm.sent_at,
        **classified(cl), "automated": auto is not None, "automated_reason": auto, "acknowledgement": ack,
        "ack_reason": ack_reason, "mailbox": mailbox, "folder": folder, "uid": uid, "ingested_at": now,
        "problems": "; ".join(pm.problems)[:2000] or None,
    }


#: Batches between collections: cyclic garbage waits at most this long.
COLLECT_EVERY = 10


@contextmanager
def collected_per_batch() -> Iterator[Callable[[], int]]:
    """The cyclic garbage collector, run every COLLECT_EVERY batches instead of every few
    hundred allocations. A batch allocates hundreds of thousands of objects, nearly none in
    cycles (none in the demo mail), and reference counting frees them; every automatic
    collection walked them all again, along with the directory and config (frozen here for the
    scan): 17% of a helper's time, 10% of storing. A collection at every batch still walked
    the batch in hand (parsed, awaiting its snippets): 12% of a helper's time when full, 6%
    for the youngest generation only. The collector is one per process: the scan's storing
    loop runs under this (which covers a helper thread), and so does a helper process. Yields
    the per-batch call, which returns how many unreachable objects a collection found.
    Storing a batch leaves about ten small objects in cycles (SQLAlchemy bind parameters of
    2-3 KB in all), which wait here for the next collection."""
    was = gc.isenabled()
    gc.freeze()
    gc.disable()
    batches = 0

    def collect() -> int:
        nonlocal batches
        batches += 1
        return gc.collect() if batches % COLLECT_EVERY == 0 else 0

    try:
        yield collect
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


#: A parsed batch awaiting its snippets: (now, messages, skipped, the snippet fetch's completion).
Parsed = tuple[datetime, list[PreparedMessage], list[tuple[Item, str]], Callable[[], dict[Hashable, bytes]]]


def prepared_batches(source: MailboxSource, folder: str, batches: list[Sequence[Item]], directory: Directory,
                     mailbox: str) -> Generator[PreparedBatch, None, None]:
    """Stage one of a scan, a batch at a time, in order: fetch, parse, classify, and read the
    snippets that decide acknowledgements and alert-reply commands. Touches the mailbox, never
    the store. The server is never idle: the next batch's headers are requested before this
    one is parsed, and a batch is finished (its snippets read) only after the next one has
    been parsed. On IMAP this pipelines the FETCH commands, so the waits on the server overlap
    with parsing instead of adding to it. (Finishing each batch as soon as it is parsed would
    let storing start sooner in each folder, but the snippet reads would no longer overlap with
    parsing, and the two cores would be less busy.)

    Where most messages of a batch wanted their snippet (a folder of client mail), the next
    batch's snippets are fetched with its headers, in one FETCH: the server reads each
    message once instead of twice. Where few did (Sent), only the ones wanted are fetched,
    as the batch's second FETCH. The first batch of a folder is parsed before the second is
    asked for, so the second batch is asked for the right way too."""
    headers = source.start_fetch(folder, batches[0]) if batches else None
    with_snippets = False
    previous: Parsed | None = None
    for k in range(len(batches)):
        assert headers is not None
        raws = headers()
        lost: list[tuple[Item, str]] = []
        missing = _unanswered(batches[k], raws)
        if missing:
            # Asked again at once, alone: first the one fetch still in flight (the previous
            # batch's snippets) is completed, as completions go in the order they were started.
            if previous is not None:
                got = previous[3]()
                previous = (*previous[:3], lambda got=got: got)
            again = source.start_fetch(folder, missing)()
            raws = [*raws, *again]
            lost = [(it, NO_ANSWER) for it in _unanswered(missing, again)]
            log.warning("%s/%s: the server left %d message(s) out of a FETCH answer; %d answered when asked again",
                        mailbox, folder, len(missing), len(missing) - len(lost))
        more = k + 1 < len(batches)
        if k > 0 and more:
            headers = source.start_fetch(folder, batches[k + 1], snippets=with_snippets)
        parsed = parse_and_ask(raws, directory, lambda want: source.start_fetch_snippets(folder, want))
        parsed[2].extend(lost)  # recorded as skipped, so the cursor passes no message in silence
        messages = parsed[1]
        with_snippets = sum(map(wants_snippet, messages)) >= defaults.SNIPPETS_WITH_HEADERS_SHARE * len(messages) > 0
        if k == 0:
            if more:
                headers = source.start_fetch(folder, batches[1], snippets=with_snippets)
            # The first batch goes at once: storing waits for nothing else (it starts 0.3 s
            # sooner per folder read in a helper process when the second batch is full size).
            yield _finish(*parsed, mailbox, folder)
            continue
        if previous is not None:
            yield _finish(*previous, mailbox, folder)
        previous = parsed
    if previous is not None:
        yield _finish(*previous, mailbox, folder)


#: The reason recorded for a message the server never answered for.
NO_ANSWER = "the server sent no answer for this message, asked twice (expunged meanwhile, or unreadable)"


def _unanswered(items: Sequence[Item], raws: list[RawMessage]) -> list[Item]:
    """The items of a fetch that came back without an answer."""
    if len(raws) >= len(items):
        return []
    answered = {r.item.key for r in raws}
    return [it for it in items if it.key not in answered]


def parse_and_ask(raws: list[RawMessage], directory: Directory,
                  start_snippets: Callable[[list[Item]], Callable[[], dict[Hashable, bytes]]]) -> Parsed:
    """Parse and classify one batch and ask for the snippets of the messages that want one
    (`start_snippets(items)` starts the fetch and returns its completion). What _finish needs
    next. Snippets fetched with the headers (RawMessage.snippet) are not asked for again.
    Shared with benchmarks/stages.py, which replays recorded snippets through it."""
    now = datetime.now(UTC).replace(tzinfo=None)
    messages, skipped = parse_batch(raws, now, directory)
    have: dict[Hashable, bytes] = {}
    want: list[Item] = []
    for m in messages:
        if wants_snippet(m):
            if m.raw.snippet is None:
                want.append(m.raw.item)
            else:
                have[m.raw.item.key] = m.raw.snippet
    if not want:
        return now, messages, skipped, lambda: have
    pending = start_snippets(want)
    return now, messages, skipped, (lambda: {**have, **pending()}) if have else pending


def _finish(now: datetime, messages: list[PreparedMessage], skipped: list[tuple[Item, str]],
            snippets: Callable[[], dict[Hashable, bytes]], mailbox: str, folder: str) -> PreparedBatch:
    got = snippets()
    commands = read_snippets(messages, got) if got else []
    rows: list[dict[str, Any]] = []
    discovered: list[tuple[int, list[tuple[str, str, int]], ParsedMessage]] = []
    for m in messages:
        item = m.raw.item
        if m.cl.discovered:
            discovered.append((len(rows), m.cl.discovered, m.pm))
        rows.append(message_row(m.pm, m.cl, m.auto, m.ack, mailbox, folder,
                                item.cursor if isinstance(item.key, int) else None, now, m.ack_reason))
    return PreparedBatch(now, rows, discovered, commands, skipped)


def is_alert_reply(pm: ParsedMessage) -> bool:
    """A reply to one of our alert emails: our reference in the subject, or it answers a
    Message-ID we made."""
    if "[cw:" in pm.subject:
        return True
    return any(r.startswith("<cw.") for r in ([pm.in_reply_to] if pm.in_reply_to else []) + pm.references)


def parse_batch(raws: list[RawMessage], now: datetime,
                d: Directory) -> tuple[list[PreparedMessage], list[tuple[Item, str]]]:
    """Parse and classify one fetched batch. Messages that cannot be read at all come back in
    the second list with the reason; one hostile message never stops the others."""
    out: list[PreparedMessage] = []
    skipped: list[tuple[Item, str]] = []
    for raw in raws:
        try:
            if not raw.header.strip():
                raise ValueError("empty header block")
            pm = parse_header_block(raw.header, raw.internal_date, now)
        except Exception as exc:  # never let one hostile message stop the scan
            skipped.append((raw.item, valid_text(f"{type(exc).__name__}: {exc}"[:500])))
            continue
        auto = automated_reason(pm)
        out.append(PreparedMessage(raw, pm, classify(pm, d), auto, auto is None and is_alert_reply(pm)))
    return out, skipped


def wants_snippet(m: PreparedMessage) -> bool:
    """Acknowledgements matter only for inbound human mail (and alert replies carry commands):
    only those get a few hundred bytes of body, with BODY.PEEK; bodies are never stored."""
    return (m.cl.direction == "inbound" and m.auto is None) or m.command


_AUTH_RESULT_RE = re.compile(r"\b(dmarc|dkim)\s*=\s*(\w+)([^;]*)", re.IGNORECASE)
_AUTH_DOMAIN_RE = re.compile(r"\bheader\.(?:d|i)\s*=\s*@?([\w.-]+)", re.IGNORECASE)


def sender_not_authenticated(pm: ParsedMessage) -> str | None:
    """Why a reply's From cannot be trusted, or None. Where the receiving server added
    Authentication-Results (the topmost, its own), the reply must pass DMARC, or DKIM signed by
    the sender's domain; mail the firm's Exchange marks as sent inside the organisation passes.
    Without the header there is nothing to check (the sender and the signed reference still are)."""
    h = pm.auto_headers
    if h.get("x-ms-exchange-organization-authas", "").strip().lower() == "internal":
        return None
    results = h.get("authentication-results")
    if not results:
        return None
    domain = pm.from_addr.rpartition("@")[2].lower()
    for method, verdict, rest in _AUTH_RESULT_RE.findall(results):
        if verdict.lower() != "pass":
            continue
        if method.lower() == "dmarc":
            return None
        signer = _AUTH_DOMAIN_RE.search(rest)
        if signer and (signer.group(1).lower() == domain or domain.endswith("." + signer.group(1).lower())):
            return None
    return f"the sender {pm.from_addr} is not authenticated (Authentication-Results: {results[:120]})"


def read_snippets(messages: list[PreparedMessage], snippets: dict[Hashable, bytes]) -> list[dict[str, Any]]:
    """Set each message's acknowledgement flag from its snippet, and return the alert-reply
    commands found in the snippets."""
    commands = []
    for m in messages:
        body = snippets.get(m.raw.item.key)
        if body is None:
            continue
        h = m.pm.auto_headers
        seen = body_text(body, h.get("content-type", "text/plain"), h.get("content-transfer-encoding", ""),
                         peek=defaults.SNIPPET_BYTES)
        text = seen.text
        m.ack, m.ack_reason = acknowledgement(m.pm.subject, seen)
        # Replies to our alert emails ("snooze 3d", "done") carry our reference.
        parsed = parse_command(text) if m.command else None
        if parsed is None:
            continue
        verb, span, item = parsed
        pm = m.pm
        # The alert email it answers: In-Reply-To, or failing that the latest of ours in References.
        answers = pm.in_reply_to if pm.in_reply_to and pm.in_reply_to.startswith("<cw.") else next(
            (r for r in reversed(pm.references) if r.startswith("<cw.")), pm.in_reply_to)
        forged = sender_not_authenticated(pm)
        commands.append({
            "message_id": pm.message_id, "from_addr": pm.from_addr, "token": find_token(pm.subject),
            "in_reply_to": answers, "command": verb,
            "argument": (span or "") + (f"#{item}" if item else "") or None,
            "received_at": pm.sent_at, "status": "refused" if forged else "pending",
            "result": f"refused: {forged}" if forged else None})
    return commands
