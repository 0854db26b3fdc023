"""The firm and whom it serves: [firm], [calendar], [[owners]], [[partners]], [[clients]]
with their contacts, and [policy] (what care means, per role and per client)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator

from .. import defaults
from .base import HOURS_RE, WEEKDAY_NAMES, Section, check_email, lenient
from .values import country_holidays, parse_duration_minutes


class FirmConfig(Section):
    name: str = "Our firm"
    domains: list[str] = Field(min_length=1)
    #: Addresses that are "us" although not at a firm domain (e.g. a shared mailbox elsewhere).
    addresses: list[str] = []

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str], info: ValidationInfo) -> list[str]:
        out = [d.strip().lower().lstrip("@") for d in v]
        for d in out:
            if ("." not in d or "@" in d or " " in d) and not lenient(info):
                raise ValueError(f"{d!r} is not a domain name (write e.g. 'example.com')")
        return out


def _default_hours() -> dict[str, str | list[str]]:
    return dict(defaults.BUSINESS_HOURS)


class CalendarConfig(Section):
    timezone: str = defaults.TIMEZONE
    #: Weekday -> "09:00-17:30" or a list of such ranges; weekdays not listed are closed.
    hours: dict[str, str | list[str]] = Field(default_factory=_default_hours)
    holidays: list[date] = []
    #: An iCalendar file whose all-day events are holidays (relative to the config file).
    holidays_ics: Path | None = None
    #: A country's public holidays, by ISO code with an optional subdivision ("GB-ENG",
    #: "DE-BY", "US-NY", "FR"), from the `holidays` package.
    holidays_country: str | None = None

    @field_validator("holidays_country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v is not None:
            country_holidays(v, date.today().year)  # ValueError, with the reason, for a code it does not know
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as 'Europe/London'") from None
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        out: dict[str, str | list[str]] = {}
        for day, ranges in v.items():
            key = WEEKDAY_NAMES.get(day.strip().lower())
            if key is None:  # "monkey" is not Monday
                raise ValueError(f"{day!r} is not a weekday: use mon, tue, wed, thu, fri, sat, sun "
                                 "(or the full names)")
            if key in out:
                raise ValueError(f"{day!r}: {key} is given twice")
            spans = []
            for r in [ranges] if isinstance(ranges, str) else ranges:
                m = HOURS_RE.match(r.replace(" ", ""))
                if not m:
                    raise ValueError(f"{day}: {r!r} is not a time range: write e.g. '09:00-17:30'")
                h1, m1, h2, m2 = map(int, m.groups())
                if not (h1 * 60 + m1 < h2 * 60 + m2 <= 24 * 60) or m1 > 59 or m2 > 59:
                    raise ValueError(f"{day}: {r!r} must start before it ends, within one day")
                spans.append((h1 * 60 + m1, h2 * 60 + m2, r))
            spans.sort()
            for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
                if start < end:  # 540 business minutes in a 480-minute day otherwise
                    raise ValueError(f"{day}: {a!r} and {b!r} overlap")
            out[key] = ranges
        return out


class OwnerConfig(Section):
    name: str
    email: str
    #: Who alerts escalate to when this owner has not acted (a partner or a named deputy).
    backup: str | None = None

    _email = field_validator("email")(lambda cls, v, info: check_email(v, info))


class PartnerConfig(Section):
    name: str
    email: str
    #: "all", or the owners (emails or names) whose clients this partner sees.
    scope: Literal["all"] | list[str] = "all"

    _email = field_validator("email")(lambda cls, v, info: check_email(v, info))


class ContactConfig(Section):
    name: str
    email: str
    role: str = "user"

    _email = field_validator("email")(lambda cls, v, info: check_email(v, info))

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        return v.strip().lower()


class RolePolicy(Section):
    reply_within: str | float | None = None
    silence_after: str | float | None = None
    going_quiet: bool | None = None
    #: Set false to stop alerts about silence for this role altogether.
    silence: bool | None = None

    @field_validator("reply_within")
    @classmethod
    def _rw(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration_minutes(v, business=True)
        return v

    @field_validator("silence_after")
    @classmethod
    def _sa(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration_minutes(v, business=False)
        return v


class ClientConfig(Section):
    name: str
    internal: bool = False
    domains: list[str] = []
    owner: str | None = None
    backup: str | None = None
    contacts: list[ContactConfig] = []
    calendar: CalendarConfig | None = None
    #: Per-client policy overrides: role name -> thresholds (or "default" for all roles).
    policy: dict[str, RolePolicy] = {}

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.strip().lower().lstrip("@") for d in v]


class PolicyConfig(Section):
    reply_within: str | float = f"{defaults.REPLY_WITHIN_MINUTES // 60}h"
    #: Count an inbound message as needing a reply when the firm is only in Cc.
    count_cc: bool = False
    escalate_after: str | float = f"{defaults.ESCALATE_AFTER_MINUTES // 60}h"
    #: How many escalation levels follow the first notification (0 = never escalate).
    escalation_levels: int = Field(default=1, ge=0, le=5)
    roles: dict[str, RolePolicy] = {}
    going_quiet_factor: float = Field(default=defaults.GOING_QUIET_FACTOR, gt=1)
    going_quiet_floor: str | float = f"{defaults.GOING_QUIET_FLOOR_DAYS}d"
    going_quiet_min_messages: int = Field(default=defaults.GOING_QUIET_MIN_MESSAGES, ge=2)
    slowing_factor: float = Field(default=defaults.SLOWING_FACTOR, gt=1)
    slowing_floor: str | float = f"{defaults.SLOWING_FLOOR_MINUTES}m"
    stats_window_days: int = Field(default=defaults.STATS_WINDOW_DAYS, ge=1)
    #: Calendar time after the client's last word on an unanswered thread before it stops
    #: waiting (0 = never).
    waits_expire_after: str | float = f"{defaults.WAITS_EXPIRE_AFTER_DAYS}d"
    #: Warn the owner once when a wait has used this share of its reply window ("reply due
    #: soon"), so the reply goes out in time; 0 turns the warning off.
    warn_at: float = Field(default=defaults.WARN_AT_SHARE, ge=0, lt=1)
    #: Business time after the client's previous unanswered message before another one on the
    #: thread counts as a chaser ("any news?"), not a postscript ("forgot the attachment").
    chaser_after: str | float = f"{defaults.CHASER_AFTER_MINUTES}m"

    @field_validator("reply_within", "escalate_after", "slowing_floor", "chaser_after")
    @classmethod
    def _biz(cls, v: str | float) -> str | float:
        parse_duration_minutes(v, business=True)
        return v

    @field_validator("going_quiet_floor", "waits_expire_after")
    @classmethod
    def _cal(cls, v: str | float) -> str | float:
        parse_duration_minutes(v, business=False)
        return v
