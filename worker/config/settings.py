"""Configuration: one TOML file (plus an optional clients CSV), validated all at once.

The config is the source of truth for clients, contacts, owners and partners; it is synced into
the store at start-up. Every problem is collected and reported together with the key that is
wrong and how to fix it, so an operator fixes the file in one pass instead of ten.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .. import defaults
from ..errors import ConfigError

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
ENV_PREFIX = "CAREWATCH__"

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The names a weekday may be given by in `hours`: its three letters or its full English name.
WEEKDAY_NAMES = {**{d: d for d in WEEKDAYS},
                 **{full: full[:3] for full in ("monday", "tuesday", "wednesday", "thursday", "friday",
                                                "saturday", "sunday")}}
KNOWN_ROLES = ("principal", "sponsor", "user", "finance", "legal", "other")
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def duration_words(minutes: float) -> str:
    """Calendar time in words, the inverse of parse_duration_minutes: "30 days", "36 hours"."""
    days, hours = minutes / 1440, minutes / 60
    if days >= 2:
        return f"{days:g} days"
    return f"{hours:g} hours" if hours >= 2 else f"{minutes:g} minutes"


def parse_duration_minutes(value: str | int | float, *, business: bool) -> float:
    """Parse "30m", "4h", "2d", "1w" into minutes.

    Business durations (reply_within, escalate_after) are counted on the firm's calendar, where
    a "day" has no fixed length, so only minutes and hours are accepted for them.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration: write e.g. '30m', '4h'" + ("" if business else ", '14d', '2w'"))
    n, unit = float(m.group(1)), m.group(2).lower()
    if business and unit in ("d", "w"):
        raise ValueError(
            f"{value!r}: business durations are counted in business hours; write e.g. '16h' "
            "for two 8-hour business days"
        )
    return n * {"m": 1, "min": 1, "h": 60, "d": 1440, "w": 10080}[unit]


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


def _format_loc(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    """("clients", 2, "owner") -> 'clients[2] ("Acme").owner', naming list items where we can."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            try:
                node = node[item]
                if isinstance(node, Mapping) and "name" in node:
                    label += f' ("{node["name"]}")'
            except (IndexError, KeyError, TypeError):
                node = None
            parts.append(label)
        else:
            if parts:
                parts.append(".")
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return "".join(parts)


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """CAREWATCH__STORE__URL=postgresql://... sets data["store"]["url"]; values parsed as TOML."""
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        node = data
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value


def _column(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def load_clients_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read clients and contacts from a CRM export: one row per contact, client columns repeated.

    Columns: client, internal, domains (";"-separated), owner, backup, contact_name,
    contact_email, role. Returns (clients as dicts, problems with line numbers).
    """
    problems: list[str] = []
    clients: dict[str, dict[str, Any]] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [f"clients_csv: cannot read {path}: {exc.strerror}"]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return [], [f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as "
                    "\"CSV UTF-8\" (Excel: Save As, CSV UTF-8) and try again"]
    header = text.split("\n", 1)[0]
    # Spreadsheets save with ";" (or tabs) where "," is the decimal separator: the header tells.
    delimiter = max((",", ";", "\t"), key=header.count)
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        # "Contact Email" and "contact_email" are the same column (CRM exports title-case them).
        reader.fieldnames = [_column(f) for f in reader.fieldnames or []]
        required = {"client", "contact_email"}
        missing = required - set(reader.fieldnames)
        if missing:
            return [], [f"{path}: missing column(s) {', '.join(sorted(missing))}; the header row "
                        "needs: client,internal,domains,owner,backup,contact_name,contact_email,role"]
        for row in reader:
            line = reader.line_num
            name = (row.get("client") or "").strip()
            if not name:
                problems.append(f"{path}:{line}: empty 'client' column")
                continue
            c = clients.setdefault(name, {"name": name, "contacts": [], "domains": []})
            internal = (row.get("internal") or "").strip().lower()
            if internal in ("1", "true", "yes", "y", "internal"):
                c["internal"] = True
            for d in (row.get("domains") or "").replace(",", ";").split(";"):
                if d.strip() and d.strip().lower() not in c["domains"]:
                    c["domains"].append(d.strip().lower())
            for k in ("owner", "backup"):
                v = (row.get(k) or "").strip()
                if v:
                    if c.get(k) and c[k] != v:
                        problems.append(f"{path}:{line}: client {name!r} has {k} {c[k]!r} on an "
                                        f"earlier row and {v!r} here; a client has exactly one {k}")
                    c[k] = v
            email = (row.get("contact_email") or "").strip()
            if email:
                c["contacts"].append({
                    "name": (row.get("contact_name") or email).strip(),
                    "email": email,
                    "role": (row.get("role") or "user").strip() or "user",
                    "_line": line,
                })
    return list(clients.values()), problems


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, merge and validate the configuration; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any]
    cfg_path: Path | None = None
    if path is None and environ.get(ENV_CONFIG):
        path = environ[ENV_CONFIG]
    if path is None:
        raise ConfigError([f"no configuration given: pass --config PATH or set {ENV_CONFIG}"])
    cfg_path = Path(path)
    try:
        raw = cfg_path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {cfg_path}: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text at byte {exc.start}"], str(cfg_path)) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line N, column M)".
        raise ConfigError([f"TOML syntax error: {exc}"], str(cfg_path)) from None
    return validate_data(data, cfg_path, environ)


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


def validate_data(data: dict[str, Any], cfg_path: Path | None,
                  environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    _apply_env_overrides(data, environ)
    base = cfg_path.parent if cfg_path else Path.cwd()
    problems: list[str] = []

    # Clients from CSV join those written in the file, before validation, so that both are
    # checked by the same rules.
    csv_lines: dict[tuple[str, str], int] = {}
    if data.get("clients_csv"):
        csv_path = _resolve(base, Path(str(data["clients_csv"])))
        assert csv_path is not None
        csv_clients, csv_problems = load_clients_csv(csv_path)
        problems += csv_problems
        for c in csv_clients:
            for contact in c["contacts"]:
                csv_lines[(c["name"], contact["email"].lower())] = contact.pop("_line")
        data = dict(data)
        data["clients"] = list(data.get("clients") or []) + csv_clients

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems += [_schema_problem(err, data) for err in errors]
        # Every problem at once: the checks across entries (references, duplicates, missing
        # hosts) run too, on a copy without the keys just reported, when that copy is valid.
        pruned = _without(data, [err["loc"] for err in errors if not _kept_when_lenient(err)]) \
            if all(err["type"] != "missing" for err in errors) else None
        try:
            partial = Settings.model_validate(pruned, context=LENIENT) if pruned is not None else None
        except ValidationError:
            partial = None
        if partial is None:
            raise ConfigError(problems, str(cfg_path or ""),
                              note="References between entries (owners, partners, clients) are checked "
                                   "once these are fixed.") from None
        # What was reported is not reported again: a key's own problem, and for a secret
        # written into the file, the cross-check's "set password_env or password_file".
        reported = tuple(_format_loc(err["loc"], data) for err in errors)
        secrets = [(_format_loc(err["loc"][:-1], data), f"{err['loc'][-1]}_env") for err in errors
                   if err["type"] == "extra_forbidden" and err["loc"] and err["loc"][-1] in SECRET_KEYS]
        _resolve_paths(partial, base)
        moot = _moot_checks(errors, data)
        problems += [p for p in _cross_check(partial, csv_lines) if not p.startswith(reported)
                     and not moot(p) and not any(p.startswith(w) and k in p for w, k in secrets)]
        raise ConfigError(problems, str(cfg_path or "")) from None

    s = settings
    _resolve_paths(s, base)
    problems += _cross_check(s, csv_lines)
    if problems:
        raise ConfigError(problems, str(cfg_path or ""))
    return Config(settings=s, path=cfg_path, findings=findings(s))


def _moot_checks(errors: list[Any], data: Mapping[str, Any]) -> Callable[[str], bool]:
    """Which cross-check problems to leave out because a key they depend on was wrong: the
    copy the checks read gave that key its default, so they would be about settings nobody
    wrote. A mailbox with a wrong kind took "imap" (no host? no username? no password?) and
    one with a wrong auth took "password" (no password_env?)."""
    kinds: list[str] = []
    auths: list[str] = []
    for err in errors:
        loc = err["loc"]
        if len(loc) == 3 and loc[0] == "mailboxes" and loc[2] in ("kind", "auth"):
            (kinds if loc[2] == "kind" else auths).append(_format_loc(loc[:-1], data))
    # A wrong kind leaves nothing of the mailbox to check but its name, against the others'.
    by_kind = tuple(kinds)
    names = tuple(f"{w}.name:" for w in kinds)
    by_auth = tuple(f"{w}{after}" for w in auths for after in (f": set {PASSWORD_SOURCE}", ".oauth_provider:"))
    return lambda p: (p.startswith(by_kind) and not p.startswith(names)) or p.startswith(by_auth)


def _schema_problem(err: Any, data: Mapping[str, Any]) -> str:
    """One pydantic error as a problem line: the key, then what is wrong and how to fix it."""
    where = _format_loc(err["loc"], data)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and err["loc"] and err["loc"][-1] in SECRET_KEYS:
        msg = (f"secrets never go in the config file (it gets copied, committed and shown): "
               f"{SECRET_KEYS[str(err['loc'][-1])]}, and take the secret out of this file")
    elif err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt? see config/carewatch.example.toml for the keys)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{where}: {msg}"


def _kept_when_lenient(err: Any) -> bool:
    """A malformed email or firm domain: the lenient pass keeps it as written (see LENIENT)."""
    loc = err["loc"]
    return err["type"] == "value_error" and bool(loc) and (
        loc[-1] == "email" or loc[-2:] == ("firm", "domains"))


def _without(data: Mapping[str, Any], locs: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """A copy of the data without the keys at `locs` (so their defaults apply), or None when
    one cannot be taken out without shifting the numbering of entries that problems name
    (an entry of [[clients]], say), or cannot be found."""
    out = copy.deepcopy(dict(data))
    drop: dict[int, tuple[list[Any], set[int]]] = {}
    for loc in locs:
        parent: Any = None
        node: Any = out
        key: Any = None
        for item in loc:  # the longest prefix of loc that exists (unions add type names to it)
            if isinstance(node, dict) and item in node or (
                    isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)):
                parent, key, node = node, item, node[item]
            else:
                break
        if parent is None:
            return None
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif any(isinstance(x, (dict, list)) for x in parent):
            return None
        else:  # a list of plain values (domains, folders): problems name values, not positions
            drop.setdefault(id(parent), (parent, set()))[1].add(key)
    for lst, gone in drop.values():
        lst[:] = [x for i, x in enumerate(lst) if i not in gone]
    return out


def _resolve_paths(s: Settings, base: Path) -> None:
    """Relative paths in the config are relative to the config file's folder."""
    s.clients_csv = _resolve(base, s.clients_csv)
    s.templates_dir = _resolve(base, s.templates_dir)
    s.calendar.holidays_ics = _resolve(base, s.calendar.holidays_ics)
    for c in s.clients:
        if c.calendar is not None:
            c.calendar.holidays_ics = _resolve(base, c.calendar.holidays_ics)
    s.notify.dir = _resolve(base, s.notify.dir) or s.notify.dir
    if s.store.url.startswith("sqlite:///") and not s.store.url.startswith("sqlite:////"):
        rel = s.store.url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            s.store.url = "sqlite:///" + str((base / rel).resolve())
    s.store.password_file = _resolve(base, s.store.password_file)
    for mb in s.mailboxes:
        mb.path = _resolve(base, mb.path)
        mb.password_file = _resolve(base, mb.password_file)
        mb.ca_file = _resolve(base, mb.ca_file)
        mb.oauth_service_account_file = _resolve(base, mb.oauth_service_account_file)
        mb.oauth_client_secret_file = _resolve(base, mb.oauth_client_secret_file)
    if s.notify.smtp:
        s.notify.smtp.password_file = _resolve(base, s.notify.smtp.password_file)
        s.notify.smtp.ca_file = _resolve(base, s.notify.smtp.ca_file)


def _cross_check(s: Settings, csv_lines: dict[tuple[str, str], int]) -> list[str]:
    """Rules that span several keys: references, uniqueness, mailbox completeness."""
    problems: list[str] = []
    people = {o.email: o for o in s.owners}
    names = {o.name.lower(): o.email for o in s.owners}

    seen_mb: set[str] = set()
    for i, mb in enumerate(s.mailboxes):
        where = f'mailboxes[{i}] ("{mb.name}")'
        if mb.name in seen_mb:
            problems.append(f"{where}.name: duplicate mailbox name; each mailbox needs its own name")
        seen_mb.add(mb.name)
        if mb.kind == "imap":
            if not mb.host:
                problems.append(f"{where}.host: required for an IMAP mailbox")
            if not mb.username:
                problems.append(f"{where}.username: required for an IMAP mailbox")
            if mb.auth == "password" and not (mb.password_env or mb.password_file):
                problems.append(f"{where}: set {PASSWORD_SOURCE}")
            if mb.auth == "xoauth2" and not mb.oauth_provider:
                problems.append(f"{where}.oauth_provider: required with auth = \"xoauth2\" "
                                "(\"microsoft\" or \"google\")")
            if mb.tls == "none" and not mb.allow_plaintext:
                problems.append(f"{where}.tls: \"none\" sends the password in clear; use \"implicit\" "
                                "or \"starttls\", or set allow_plaintext = true if you really mean it")
        else:
            if not mb.path:
                problems.append(f"{where}.path: required for a Maildir mailbox")
        if not mb.folders:
            problems.append(f"{where}.folders: list at least one folder, e.g. [\"INBOX\", \"Sent\"]")
        for f in sorted({f for f in mb.folders if mb.folders.count(f) > 1}):
            problems.append(f"{where}.folders: {f!r} is listed twice")

    for i, o in enumerate(s.owners):
        if o.backup and not s.find_person(o.backup):
            problems.append(f'owners[{i}] ("{o.name}").backup: {o.backup!r} is neither an owner nor a '
                            "partner; add them or fix the spelling")
    owner_set = set(people) | set(names)
    for i, p in enumerate(s.partners):
        if isinstance(p.scope, list):
            for ref in p.scope:
                if ref.strip().lower() not in owner_set:
                    problems.append(f'partners[{i}] ("{p.name}").scope: {ref!r} is not an owner')

    seen_clients: set[str] = set()
    contact_home: dict[str, str] = {}
    for i, c in enumerate(s.clients):
        where = f'clients[{i}] ("{c.name}")'
        if c.name.lower() in seen_clients:
            problems.append(f"{where}.name: duplicate client name")
        seen_clients.add(c.name.lower())
        if c.owner and c.owner.strip().lower() not in owner_set:
            problems.append(f"{where}.owner: {c.owner!r} is not listed under [[owners]]; add them "
                            "or fix the spelling")
        if c.backup and not s.find_person(c.backup):
            problems.append(f"{where}.backup: {c.backup!r} is neither an owner nor a partner")
        if not c.internal:
            for d in c.domains:
                if d in s.firm.domains:
                    problems.append(f"{where}.domains: {d!r} is a firm domain; mark the client "
                                    "internal = true and list its contacts by email")
        if not c.domains and not c.contacts:
            problems.append(f"{where}: give the client at least one domain or one contact")
        for j, ct in enumerate(c.contacts):
            line = csv_lines.get((c.name, ct.email))
            cwhere = f"{s.clients_csv}:{line}" if line else f"{where}.contacts[{j}]"
            if ct.email in contact_home and contact_home[ct.email] != c.name:
                problems.append(f"{cwhere}: {ct.email} is already a contact of "
                                f"{contact_home[ct.email]!r}; a person belongs to one client")
            contact_home.setdefault(ct.email, c.name)

    n = s.notify
    if n.transport == "smtp" and n.smtp is None:
        problems.append('notify.smtp: notify.transport = "smtp" needs a [notify.smtp] section (at least host)')
    if n.smtp is not None:
        if n.smtp.tls == "none" and not n.smtp.allow_plaintext:
            problems.append('notify.smtp.tls: "none" sends the alerts (and any password) in clear; use '
                            '"starttls" or "implicit", or set allow_plaintext = true if you really mean it')
        if n.smtp.username and not (n.smtp.password_env or n.smtp.password_file):
            problems.append(f"notify.smtp: a username needs {PASSWORD_SOURCE}")
    if s.templates_dir is not None:
        from ..notify.render import template_problems  # (jinja2 only for a config that has its own)

        problems += template_problems(s.templates_dir)
    return problems + _path_problems(s)


def _path_problems(s: Settings) -> list[str]:
    """Every file and folder the config names that must be there when the worker starts
    (secret files aside: they may be mounted only where it runs; --check-secrets reads them)."""
    from ..care.clock import load_ics_holidays

    problems: list[str] = []
    calendars = [("calendar", s.calendar)] + [(f'clients ("{c.name}").calendar', c.calendar)
                                              for c in s.clients if c.calendar is not None]
    for where, cal in calendars:
        if cal.holidays_ics is None:
            continue
        try:
            load_ics_holidays(cal.holidays_ics)
        except OSError as exc:
            problems.append(f"{where}.holidays_ics: cannot read {cal.holidays_ics}: {exc.strerror}")
        except ValueError as exc:
            problems.append(f"{where}.holidays_ics: {exc}")
    files = [(f'mailboxes[{i}] ("{mb.name}").ca_file', mb.ca_file) for i, mb in enumerate(s.mailboxes)]
    if s.notify.smtp is not None:
        files.append(("notify.smtp.ca_file", s.notify.smtp.ca_file))
    problems += [f"{where}: {path} is not a file" for where, path in files if path is not None and not path.is_file()]
    # (A Maildir may be filled only later, by another program: `validate --connect` and the scan
    # say when it is not there.)
    return problems


def findings(s: Settings) -> list[str]:
    """What good client management asks for but the config lacks (not errors: the worker runs)."""
    out: list[str] = []
    if not s.mailboxes:
        out.append("no [[mailboxes]]: scan and run have nothing to read; add the firm's shared mailbox")
    if s.mailboxes and not s.clients:
        out.append("no clients: every message is 'other' until clients are listed ([[clients]] or clients_csv)")
    for c in s.clients:
        if not c.owner:
            out.append(f"client {c.name!r} has no owner: every client needs exactly one "
                       "accountable account manager")
        principals = [ct for ct in c.contacts if ct.role == "principal"]
        if not principals:
            out.append(f"client {c.name!r} has no principal contact: name the one person "
                       "accountable on the client's side (role = \"principal\")")
        elif len(principals) > 1:
            out.append(f"client {c.name!r} has {len(principals)} principals "
                       f"({', '.join(p.email for p in principals)}): there should be exactly one")
        for ct in c.contacts:
            if ct.role not in KNOWN_ROLES and ct.role not in s.policy.roles:
                out.append(f"client {c.name!r}: contact {ct.email} has role {ct.role!r}, which has "
                           "no policy of its own; the defaults apply")
    return out


def resolve_secret(env: str | None, file: Path | None, what: str,
                   environ: Mapping[str, str] | None = None) -> str:
    """Read a secret from an environment variable or a file (the *_FILE container convention)."""
    environ = os.environ if environ is None else environ
    if env:
        if env in environ and environ[env] != "":
            return environ[env]
        file_env = environ.get(env + "_FILE")
        if file_env:
            file = Path(file_env)
        elif not file:
            raise ConfigError([f"{what}: environment variable {env} is not set"])
    if file:
        try:
            secret = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{what}: cannot read secret file {file}: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{what}: secret file {file} is not UTF-8 text"]) from None
        if not secret:  # a secret mounted wrong, or created but never filled in
            raise ConfigError([f"{what}: secret file {file} is empty"])
        return secret
    raise ConfigError([f"{what}: no secret configured"])
