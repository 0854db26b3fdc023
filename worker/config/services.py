"""What Carewatch talks to and how it runs: [[mailboxes]], [store], [notify] (with its
[notify.smtp]), [digest] and [service]."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .. import defaults
from .base import Section
from .values import parse_duration_minutes, resolve_secret


class MailboxConfig(Section):
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


class StoreConfig(Section):
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


class SmtpConfig(Section):
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


class NotifyConfig(Section):
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
    #: Does nothing (give_up_after bounds the retries); accepted, with a finding, so that a
    #: config that sets it still loads. Not shown in the example config.
    max_attempts: int | None = Field(default=None, ge=1, deprecated="give_up_after bounds the retries")
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


class DigestConfig(Section):
    #: Cron fields in the firm's time zone (APScheduler CronTrigger): Monday 07:00 by default.
    day_of_week: str = "mon"
    hour: int = Field(default=7, ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)


class ServiceConfig(Section):
    #: -1 turns /healthz and /metrics off.
    metrics_port: int = Field(default=defaults.METRICS_PORT, ge=-1, le=65535)
    metrics_host: str = "0.0.0.0"
    #: A mailbox counts as unhealthy when its last good scan is older than this many intervals.
    health_stale_intervals: float = Field(default=3, gt=0)
