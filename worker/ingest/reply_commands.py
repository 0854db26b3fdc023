"""Replies to alert emails: the reference token and the command on the first line."""

from __future__ import annotations

import re

_TOKEN_RE = re.compile(r"\[cw:([0-9a-f]{20})\]")
_COMMAND_RE = re.compile(
    r"^\s*(?:(snooze)\s+(\d{1,3})\s*(h|d|w)(?:ours?|ays?|eeks?)?|(done|ack|acknowledged|resolved|handled))"
    r"(?:\s*#?\s*(\d{1,3}))?\b", re.IGNORECASE)


def parse_command(text: str) -> tuple[str, str | None, int | None] | None:
    """("snooze", "3d", item) / ("done", None, item) from the first line that says something."""
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        m = _COMMAND_RE.match(s)
        if not m:
            return None
        item = int(m.group(5)) if m.group(5) else None
        if m.group(1):
            return "snooze", f"{m.group(2)}{m.group(3).lower()}", item
        return "done", None, item
    return None


def find_token(subject: str) -> str | None:
    m = _TOKEN_RE.search(subject)
    return m.group(1) if m else None
