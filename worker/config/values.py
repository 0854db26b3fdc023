"""Values the configuration names rather than holds: durations ("4h" of business time, "14d" of
calendar time), secrets (from the environment or a file) and a country's public holidays."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)


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


def country_holidays(code: str, *years: int) -> set[date]:
    """The public holidays of a country ("GB", or with a subdivision: "GB-ENG") in `years`."""
    import holidays

    country, _, subdiv = code.strip().partition("-")
    try:
        table = holidays.country_holidays(country.upper(), subdiv=subdiv.upper() or None, years=list(years))
    except NotImplementedError as exc:
        raise ValueError(f"{code!r}: {exc}; use an ISO country code, with a subdivision where the "
                         "holidays differ by region (e.g. 'GB-ENG', 'DE-BY', 'US-NY')") from None
    return set(table)


def not_usable(path: Path, kind: Literal["file", "folder"]) -> str | None:
    """Why `path` is not a {kind} the worker can use, or None when it is one. Never raises:
    a name too long, a folder that may not be looked into, are said as what they are."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"{path} is not a {kind}"
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror or exc}"
    return None if (stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode)) else f"{path} is not a {kind}"

