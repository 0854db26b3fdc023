"""When the weekly digest goes out: a cron in the firm's time zone, and the last time it was
due, for a worker that starts after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from ..config import Settings


def digest_trigger(settings: Settings) -> CronTrigger:
    d = settings.digest
    return CronTrigger(day_of_week=d.day_of_week, hour=d.hour, minute=d.minute, timezone=settings.calendar.timezone)


def last_digest_time(settings: Settings, now: datetime) -> datetime | None:
    """The latest digest time in the 7 days before `now` (naive UTC), as naive UTC."""
    trigger = digest_trigger(settings)
    tz = ZoneInfo(settings.calendar.timezone)
    local_now = now.replace(tzinfo=UTC).astimezone(tz)
    fire = trigger.get_next_fire_time(None, local_now - timedelta(days=7))
    last = None
    while fire is not None and fire <= local_now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last.astimezone(UTC).replace(tzinfo=None) if last else None
