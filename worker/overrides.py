"""How a value given in the environment (CAREWATCH__SECTION__KEY=value) is read.

The worker's config finds these variables with pydantic-settings (`config/environment.py`);
the container's HEALTHCHECK reads its two keys here, without importing pydantic, so that it
starts in milliseconds. Both read a value by the same rule:

- text as written (`smtp`, `postgresql://db/cw`, `true`, `9200`), converted by the key's type;
- or in quotes as TOML writes a string (`"smtp"`), for shells and compose files that keep them;
- a list or table in TOML or JSON (`["a.example", "b.example"]`, `{ host = "mail" }`).
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Mapping
from typing import Any

from .defaults import ENV_PREFIX


def env_prefixed(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that name a setting: CAREWATCH__ in any case, then at least one key."""
    n = len(ENV_PREFIX)
    return {k: v for k, v in environ.items()
            if k[:n].upper() == ENV_PREFIX and k[n:].strip("_")}


def env_text(raw: str) -> str:
    """The text a value stands for: the string when it is quoted as TOML quotes one."""
    if raw[:1] not in ('"', "'"):
        return raw
    try:
        value: Any = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return value if isinstance(value, str) else raw


def list_or_table(raw: str) -> Any:
    """A list or table written in JSON or in TOML; ValueError when it is neither."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{raw!r} is neither JSON nor TOML") from exc


def service_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The [service] keys the environment sets, for the HEALTHCHECK: CAREWATCH__SERVICE__KEY,
    or a whole table in CAREWATCH__SERVICE (the keys one at a time win, as in the config)."""
    table: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    section = ENV_PREFIX + "SERVICE"
    for name, raw in env_prefixed(environ).items():
        if name.upper() == section:
            with contextlib.suppress(ValueError):
                found = list_or_table(env_text(raw))
                if isinstance(found, dict):
                    table = {k.lower(): v for k, v in found.items()}
        elif name.upper().startswith(section + "__"):
            keys[name[len(section) + 2:].lower()] = env_text(raw)
    return {**table, **keys}
