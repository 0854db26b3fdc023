"""The CPU half of ingest: fetched header blocks -> parsed, classified messages.

Pure functions of their arguments and a classification directory: the fetch thread of a scan
runs them (ingest.py) and so can a test, without a mailbox or a store.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .classify import Classification, Directory, automated_reason, classify, is_acknowledgement, snippet_text
from .commands import find_token, parse_command
from .headers import ParsedMessage, parse_header_block
from .mailbox.base import Item, RawMessage


@dataclass(slots=True)
class PreparedMessage:
    raw: RawMessage
    pm: ParsedMessage
    cl: Classification
    auto: str | None
    command: bool
    ack: bool = False


@dataclass(slots=True)
class PreparedBatch:
    now: datetime
    messages: list[PreparedMessage]
    commands: list[dict[str, Any]]
    skipped: list[tuple[Item, str]]


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
            skipped.append((raw.item, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        auto = automated_reason(pm)
        out.append(PreparedMessage(raw, pm, classify(pm, d), auto, auto is None and is_alert_reply(pm)))
    return out, skipped


def wants_snippet(m: PreparedMessage) -> bool:
    """Acknowledgements matter only for inbound human mail (and alert replies carry commands):
    only those get a few hundred bytes of body, with BODY.PEEK; bodies are never stored."""
    return (m.cl.direction == "inbound" and m.auto is None) or m.command


def read_snippets(messages: list[PreparedMessage], snippets: dict[Hashable, bytes]) -> list[dict[str, Any]]:
    """Set each message's acknowledgement flag from its snippet, and return the alert-reply
    commands found in the snippets."""
    commands = []
    for m in messages:
        body = snippets.get(m.raw.item.key)
        if body is None:
            continue
        h = m.pm.auto_headers
        text = snippet_text(body, h.get("content-type", "text/plain"), h.get("content-transfer-encoding", ""))
        m.ack = is_acknowledgement(m.pm.subject, text)
        # Replies to our alert emails ("snooze 3d", "done") carry our reference.
        parsed = parse_command(text) if m.command else None
        if parsed is None:
            continue
        verb, span, item = parsed
        pm = m.pm
        commands.append({
            "message_id": pm.message_id, "from_addr": pm.from_addr, "token": find_token(pm.subject),
            "in_reply_to": pm.in_reply_to, "command": verb,
            "argument": (span or "") + (f"#{item}" if item else "") or None,
            "received_at": pm.sent_at, "status": "pending"})
    return commands
