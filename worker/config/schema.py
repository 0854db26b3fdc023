"""The configuration's schema: every section and key, with its default and its checks of one
value, and the validated Config the rest of Carewatch reads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .. import defaults
from .values import country_holidays, parse_duration_minutes, resolve_secret

ENV_CONFIG = defaults.ENV_CONFIG
#: Keys that would hold a secret, and how each is given instead (never in the file).
SECRET_KEYS = {
    "password": "set password_env to the name of an environment variable, or password_file to a file "
                "holding it (e.g. a container secret)",
    "oauth_client_secret": "set oauth_client_secret_env to the name of an environment variable, or "
                           "oauth_client_secret_file to a file holding it (e.g. a container secret)",
    "token_secret": "set token_secret_env to the name of an environment variable",
}
#: How a password is given, for the checks that find none (validate_data relies on the
#: "password_env" in it to say nothing twice).
PASSWORD_SOURCE = ("password_env (an environment variable name) or password_file (e.g. a container secret); "
                   "passwords never go in the file")
#: Environment overrides: CAREWATCH__STORE__URL=... sets [store] url (double underscore = nesting).
ENV_PREFIX = defaults.ENV_PREFIX

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The names a weekday may be given by in `hours`: its three letters or its full English name.
WEEKDAY_NAMES = {**{d: d for d in WEEKDAYS},
                 **{full: full[:3] for full in ("monday", "tuesday", "wednesday", "thursday", "friday",
                                                "saturday", "sunday")}}
KNOWN_ROLES = ("principal", "sponsor", "user", "finance", "legal", "other")
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


#: Validation context for a second pass over a config that failed: required values that are
#: malformed (an email, a firm domain) are kept as written, so the checks across entries can
#: still run; their own problems were reported by the first pass.
LENIENT = {"lenient": True}


def _lenient(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("lenient"))


def _check_email(v: str, info: ValidationInfo) -> str:
    v = v.strip().lower()
    if not _EMAIL_RE.match(v) and not _lenient(info):
        raise ValueError(f"{v!r} is not an email address")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FirmConfig(_Model):
    name: str = "Our firm"
    domains: list[str] = Field(min_length=1)
    #: Addresses that are "us" although not at a firm domain (e.g. a shared mailbox elsewhere).
    addresses: list[str] = []

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: list[str], info: ValidationInfo) -> list[str]:
        out = [d.strip().lower().lstrip("@") for d in v]
        for d in out:
            if ("." not in d or "@" in d or " " in d) and not _lenient(info):
                raise ValueError(f"{d!r} is not a domain name (write e.g. 'example.com')")
        return out


def _default_hours() -> dict[str, str | list[str]]:
    return dict(defaults.BUSINESS_HOURS)


class CalendarConfig(_Model):
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
        except (ZoneInfoNotFoundError, ValueError):
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
                m = _HOURS_RE.match(r.replace(" ", ""))
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


class MailboxConfig(_Model):
    name: str
    kind: Literal["imap", "maildir"] = "imap"
    # IMAP
    host: str | None = None
    port: int | None = None
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    #: Plain-text IMAP (tls = "none") is refused unless this is set: passwords would travel in clear.
    allow_plaintext: bool = False
    #: A CA bundle to trust in addition to (instead of) the system store, e.g. for a private CA.
    ca_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    auth: Literal["password", "xoauth2"] = "password"
    #: XOAUTH2 token provider: "microsoft" (client credentials) or "google" (service account).
    oauth_provider: Literal["microsoft", "google"] | None = None
    oauth_tenant: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret_env: str | None = None
    oauth_client_secret_file: Path | None = None
    oauth_token_url: str | None = None
    oauth_service_account_file: Path | None = None
    # Maildir
    path: Path | None = None
    # both
    folders: list[str] = ["INBOX"]
    batch_size: int = Field(default=defaults.SCAN_BATCH_SIZE, ge=1, le=50000)
    scan_interval_minutes: float = Field(default=5, gt=0)
    idle: bool = True
    timeout_seconds: float = Field(default=defaults.IMAP_TIMEOUT_SECONDS, gt=0)

    @property
    def server_port(self) -> int:
        """The IMAP port set, or the one the TLS mode implies."""
        return self.port or (993 if self.tls == "implicit" else 143)

    @property
    def where(self) -> str:
        """host:port for IMAP, the path for Maildir."""
        return str(self.path) if self.kind == "maildir" else f"{self.host}:{self.server_port}"

    def read_password(self) -> str:
        """The IMAP password, from the environment or a file (ConfigError if it cannot be read)."""
        return resolve_secret(self.password_env, self.password_file, f"mailboxes.{self.name}.password")

    def read_oauth_client_secret(self) -> str:
        """The XOAUTH2 client secret (Microsoft), from the environment or a file."""
        return resolve_secret(self.oauth_client_secret_env, self.oauth_client_secret_file,
                              f"mailboxes.{self.name}.oauth_client_secret")


class OwnerConfig(_Model):
    name: str
    email: str
    #: Who alerts escalate to when this owner has not acted (a partner or a named deputy).
    backup: str | None = None

    _email = field_validator("email")(lambda cls, v, info: _check_email(v, info))


class PartnerConfig(_Model):
    name: str
    email: str
    #: "all", or the owners (emails or names) whose clients this partner sees.
    scope: Literal["all"] | list[str] = "all"

    _email = field_validator("email")(lambda cls, v, info: _check_email(v, info))


class ContactConfig(_Model):
    name: str
    email: str
    role: str = "user"

    _email = field_validator("email")(lambda cls, v, info: _check_email(v, info))

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        return v.strip().lower()


class RolePolicy(_Model):
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


class ClientConfig(_Model):
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


class PolicyConfig(_Model):
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


class StoreConfig(_Model):
    url: str = defaults.DATABASE_URL
    #: SQLite only: the page cache of each open connection, in MiB. A cap, filled as the file
    #: outgrows it. With 8, a scan of 118k messages took 6% longer than with 64 and 57 MiB less.
    sqlite_cache_mib: int = Field(default=defaults.SQLITE_CACHE_KIB // 1024, ge=1, le=4096)
    #: PostgreSQL: the password, kept out of the URL (an environment variable, or a file such
    #: as a container secret). A password in the URL is used when neither is set.
    password_env: str | None = None
    password_file: Path | None = None

    def connect_url(self) -> str:
        """The URL to connect with: `url` with the password from password_env/password_file."""
        if not (self.password_env or self.password_file):
            return self.url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        secret = resolve_secret(self.password_env, self.password_file, "store.password")
        try:
            return make_url(self.url).set(password=secret).render_as_string(hide_password=False)
        except ArgumentError:  # open_store says what is wrong with the URL
            return self.url


class SmtpConfig(_Model):
    host: str
    port: int | None = None
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    allow_plaintext: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    timeout_seconds: float = Field(default=defaults.SMTP_TIMEOUT_SECONDS, gt=0)

    @property
    def server_port(self) -> int:
        """The port set, or the one the TLS mode implies."""
        return self.port or {"implicit": 465, "starttls": 587, "none": 25}[self.tls]

    def read_password(self) -> str:
        """The SMTP password, from the environment or a file (ConfigError if it cannot be read)."""
        return resolve_secret(self.password_env, self.password_file, "notify.smtp.password")


class NotifyConfig(_Model):
    #: "file" writes .eml files into `dir` (the embedded default); "smtp" sends them.
    transport: Literal["file", "smtp"] = "file"
    dir: Path = Path("outbox")
    smtp: SmtpConfig | None = None
    from_address: str = "carewatch@localhost"
    from_name: str = "Carewatch"
    #: Where owners reply to snooze or acknowledge (a scanned mailbox address).
    reply_to: str | None = None
    #: Hold alerts raised outside the recipient's business hours until the next opening.
    quiet_hours: bool = True
    #: Escalations are urgent: deliver them even in quiet hours.
    escalations_ignore_quiet_hours: bool = False
    #: How long an email is retried (with capped backoff) before it is given up as failed,
    #: counted from when it was queued: an SMTP outage over a weekend loses nothing.
    give_up_after: str = defaults.OUTBOX_GIVE_UP_AFTER
    #: No longer used: retries are bounded by give_up_after. Accepted so old configs load.
    max_attempts: int | None = Field(default=None, ge=1)
    #: The environment variable holding the secret that signs the references in alert emails
    #: (never stored); without it, a random secret is made and kept in the store.
    token_secret_env: str | None = None
    #: The longest an alert can be snoozed for, by reply or by `alerts snooze`.
    max_snooze: str = "4w"

    @property
    def give_up_delta(self) -> timedelta:
        return timedelta(minutes=parse_duration_minutes(self.give_up_after, business=False))

    @field_validator("max_snooze")
    @classmethod
    def _max_snooze(cls, v: str) -> str:
        parse_duration_minutes(v, business=False)
        return v

    @field_validator("give_up_after")
    @classmethod
    def _give_up_after(cls, v: str) -> str:
        if parse_duration_minutes(v, business=False) < 1:
            raise ValueError(f"{v!r}: give emails at least a minute")
        return v


class DigestConfig(_Model):
    #: Cron fields in the firm's time zone (APScheduler CronTrigger): Monday 07:00 by default.
    day_of_week: str = "mon"
    hour: int = Field(default=7, ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)


class ServiceConfig(_Model):
    #: -1 turns /healthz and /metrics off.
    metrics_port: int = Field(default=defaults.METRICS_PORT, ge=-1, le=65535)
    metrics_host: str = "0.0.0.0"
    #: A mailbox counts as unhealthy when its last good scan is older than this many intervals.
    health_stale_intervals: float = Field(default=3, gt=0)


class Settings(_Model):
    firm: FirmConfig
    calendar: CalendarConfig = CalendarConfig()
    mailboxes: list[MailboxConfig] = []
    owners: list[OwnerConfig] = []
    partners: list[PartnerConfig] = []
    clients: list[ClientConfig] = []
    #: A CSV exported from a CRM with more clients and contacts (see config/clients.example.csv).
    clients_csv: Path | None = None
    policy: PolicyConfig = PolicyConfig()
    store: StoreConfig = StoreConfig()
    notify: NotifyConfig = NotifyConfig()
    digest: DigestConfig = DigestConfig()
    service: ServiceConfig = ServiceConfig()
    #: A folder with your own copies of the email templates.
    templates_dir: Path | None = None

    def find_person(self, ref: str | None) -> str | None:
        """The email of the owner or partner that `ref` (an email or a name) names, else None."""
        if not ref:
            return None
        r = ref.strip().lower()
        people: list[OwnerConfig | PartnerConfig] = [*self.owners, *self.partners]
        for person in people:
            if r in (person.email, person.name.lower()):
                return person.email
        return None


@dataclass
class Config:
    """A validated configuration, plus what it was loaded from and the findings about it."""

    settings: Settings
    path: Path | None
    findings: list[str]

    # Convenience pass-throughs; the rest of the code reads these a lot.
    @property
    def firm(self) -> FirmConfig:
        return self.settings.firm

    @property
    def clients(self) -> list[ClientConfig]:
        return self.settings.clients
