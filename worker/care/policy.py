"""Thresholds per (client, role): defaults, then [policy.roles.ROLE], then the client's own
overrides ("default" first, then the role)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import defaults
from ..config import ClientConfig, Config, RolePolicy, parse_duration_minutes
from .clock import BusinessCalendar


@dataclass(frozen=True)
class Thresholds:
    reply_within_minutes: float
    #: Calendar days without outbound mail before a contact counts as silent; None = never.
    silence_after_days: float | None
    going_quiet: bool


class Policies:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = config.settings.policy
        self.clients = {c.name: c for c in config.clients}
        self.firm_calendar = BusinessCalendar.from_config(config.settings.calendar)
        self._calendars: dict[str, BusinessCalendar] = {}
        self.count_cc = self.policy.count_cc
        self.going_quiet_factor = self.policy.going_quiet_factor
        self.going_quiet_floor_seconds = parse_duration_minutes(self.policy.going_quiet_floor, business=False) * 60
        self.going_quiet_min = self.policy.going_quiet_min_messages
        self.slowing_factor = self.policy.slowing_factor
        self.slowing_floor_minutes = parse_duration_minutes(self.policy.slowing_floor, business=True)
        self.stats_window_days = self.policy.stats_window_days
        #: Seconds after the client's last word before an unanswered thread stops waiting (0: never).
        self.waits_expire_seconds = parse_duration_minutes(self.policy.waits_expire_after, business=False) * 60
        #: Share of the reply window after which the owner is warned (0: never).
        self.warn_at = self.policy.warn_at
        #: Business minutes between two unanswered messages for the later to be a chaser.
        self.chaser_after_minutes = parse_duration_minutes(self.policy.chaser_after, business=True)

    def calendar(self, client_name: str | None) -> BusinessCalendar:
        c = self.clients.get(client_name or "")
        if c is None or c.calendar is None:
            return self.firm_calendar
        if c.name not in self._calendars:
            self._calendars[c.name] = BusinessCalendar.from_config(c.calendar)
        return self._calendars[c.name]

    def thresholds(self, client_name: str | None, role: str) -> Thresholds:
        return self._thresholds(client_name or "", role)

    @lru_cache(maxsize=4096)  # noqa: B019 - the book lives as long as one evaluation
    def _thresholds(self, client_name: str, role: str) -> Thresholds:
        layers: list[RolePolicy] = []
        if role in self.policy.roles:
            layers.append(self.policy.roles[role])
        client: ClientConfig | None = self.clients.get(client_name)
        if client:
            for key in ("default", role):
                if key in client.policy:
                    layers.append(client.policy[key])
        reply = parse_duration_minutes(self.policy.reply_within, business=True)
        silence: float | None = defaults.SILENCE_AFTER_DAYS.get(role)
        quiet = True
        for layer in layers:
            if layer.reply_within is not None:
                reply = parse_duration_minutes(layer.reply_within, business=True)
            if layer.silence_after is not None:
                silence = parse_duration_minutes(layer.silence_after, business=False) / 1440
            if layer.silence is False:
                silence = None
            if layer.going_quiet is not None:
                quiet = layer.going_quiet
        return Thresholds(reply, silence, quiet)
