"""The configuration's schema: every section and key, with its default and its checks of one
value (the sections are in firm.py and services.py, what they share in base.py), and the
validated Config the rest of Carewatch reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import (
    ENV_CONFIG,
    ENV_PREFIX,
    KNOWN_ROLES,
    LENIENT,
    PASSWORD_SOURCE,
    SECRET_KEYS,
    WEEKDAYS,
    Section,
)
from .firm import (
    CalendarConfig,
    ClientConfig,
    ContactConfig,
    FirmConfig,
    OwnerConfig,
    PartnerConfig,
    PolicyConfig,
    RolePolicy,
)
from .services import DigestConfig, MailboxConfig, NotifyConfig, ServiceConfig, SmtpConfig, StoreConfig


class Settings(Section):
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


__all__ = ["ENV_CONFIG", "ENV_PREFIX", "KNOWN_ROLES", "LENIENT", "PASSWORD_SOURCE", "SECRET_KEYS", "WEEKDAYS",
           "CalendarConfig", "ClientConfig", "Config", "ContactConfig", "DigestConfig", "FirmConfig",
           "MailboxConfig", "NotifyConfig", "OwnerConfig", "PartnerConfig", "PolicyConfig", "RolePolicy",
           "ServiceConfig", "Settings", "SmtpConfig", "StoreConfig"]
