"""The alert lifecycle: every state change goes through transition(), so that what an alert
may become from what it is stays in one place."""

from __future__ import annotations

from datetime import datetime

from ..store.models import Alert

ACTIVE = ("open", "notified", "escalated", "snoozed", "acknowledged")


#: An alert ends "resolved" when its lapse cleared (the reply was sent, the firm wrote), or
#: "expired" when its thread stopped waiting without ever being answered
#: (policy.waits_expire_after): a failure of care, not a success, so the two are kept apart.
CLOSED = ("resolved", "expired")


def transition(a: Alert, event: str, now: datetime, *, until: datetime | None = None, by: str | None = None,
               at: datetime | None = None, ended: str = "resolved") -> None:
    """Every state change of an alert, in one place, each resetting what it must:

    - "told":      open -> notified (the owner was emailed);
    - "escalated": notified/escalated -> escalated, one level up (the backup was emailed too);
    - "snoozed":   active -> snoozed until `until` (by reply or `alerts snooze`);
    - "done":      active -> acknowledged (by reply or `alerts ack`; `by` who, `at` when they
                   said so, if not now);
    - "wake":      snoozed -> open when the snooze is over: told again, and the escalation
                   clock starts again from that notice;
    - "reopen":    resolved/expired -> open, level 0, when its lapse is back (a chaser, a
                   policy change); resolved_at stays, telling this notice from the first;
    - "end":       active -> `ended` ("resolved" when the lapse cleared, "expired" when its
                   thread stopped waiting unanswered).
    """
    if event == "told":
        a.state, a.notified_at = "notified", now
    elif event == "escalated":
        a.state, a.level, a.escalated_at = "escalated", a.level + 1, now
    elif event == "snoozed":
        a.state, a.snoozed_until = "snoozed", until
    elif event == "done":
        a.state, a.acknowledged_at, a.acknowledged_by = "acknowledged", at or now, by
    elif event == "wake":
        a.state, a.notified_at, a.escalated_at = "open", None, None
    elif event == "reopen":
        a.state, a.level, a.notified_at, a.escalated_at = "open", 0, None, None
    elif event == "end":
        a.state, a.resolved_at = ended, now
    else:
        raise ValueError(f"no such alert transition: {event!r}")
    a.updated_at = now


def last_notice(a: Alert) -> datetime | None:
    """When the alert was last in an email (told or escalated), if ever."""
    return max((t for t in (a.notified_at, a.escalated_at) if t is not None), default=None)
