"""The configuration: its schema (schema), the values it names (values: durations, secrets,
country holidays), loading it with environment overrides and a clients CSV (load), the rules
across keys and the findings (checks), and `validate --connect`'s tries of every server
(connect)."""

from .load import load_config, validate_data
from .schema import (
    ENV_CONFIG,
    KNOWN_ROLES,
    PASSWORD_SOURCE,
    WEEKDAYS,
    CalendarConfig,
    ClientConfig,
    Config,
    ContactConfig,
    MailboxConfig,
    OwnerConfig,
    PartnerConfig,
    RolePolicy,
    Settings,
    SmtpConfig,
)
from .values import country_holidays, duration_words, parse_duration_minutes, resolve_secret

__all__ = ["ENV_CONFIG", "KNOWN_ROLES", "PASSWORD_SOURCE", "WEEKDAYS", "CalendarConfig", "ClientConfig", "Config",
           "ContactConfig", "MailboxConfig", "OwnerConfig", "PartnerConfig", "RolePolicy", "Settings", "SmtpConfig",
           "country_holidays", "duration_words", "load_config", "parse_duration_minutes", "resolve_secret",
           "validate_data"]
