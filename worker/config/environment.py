"""Settings from the environment: CAREWATCH__SECTION__KEY=value.

pydantic-settings finds the variables against the schema: the prefix, "__" for nesting,
names in any case, and whether the key it lands on takes a list or a table. What it reads
a value as is the rule in `worker/overrides.py`, shared with the HEALTHCHECK: text as
written, or in quotes as TOML writes it; a list or table in TOML or JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_origin

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from ..overrides import env_prefixed, env_text, list_or_table
from .schema import ENV_PREFIX, Settings


class _Undecodable:
    """A list or table that is neither TOML nor JSON, kept to be reported with its variable."""

    def __init__(self, raw: str) -> None:
        self.raw = raw


class _CarewatchEnv(EnvSettingsSource):
    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return list_or_table(value)
        except ValueError:
            return _Undecodable(value)


def environment_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list[str]]:
    """What the environment sets: (the settings as nested dicts, the variable that set each
    key path, problems with variables that set nothing or cannot be read)."""
    ours = {k: env_text(v) for k, v in env_prefixed(environ).items()}
    # The source reads only the model's fields, so the schema stays a plain model that
    # validates what it is given (the file and these) and reads no environment by itself.
    source = _CarewatchEnv(Settings, env_prefix=ENV_PREFIX,  # type: ignore[arg-type]
                           env_nested_delimiter="__", case_sensitive=False)
    source.env_vars = {k.lower(): v for k, v in ours.items()}  # as it reads names in any case
    data = source()
    by_path = {tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__")): name for name in ours}
    problems: list[str] = []
    for path, name in sorted(by_path.items(), key=lambda kv: kv[1]):
        field = Settings.model_fields.get(path[0])
        if field is None:
            problems.append(f"{name}: no such setting; after {ENV_PREFIX} comes a section or key of "
                            "the config (CAREWATCH__STORE__URL sets [store] url)")
        elif len(path) > 1 and get_origin(field.annotation) is list:
            problems.append(f"{name}: the entries of [[{path[0]}]] cannot be set one key at a time; "
                            f"set {ENV_PREFIX}{path[0].upper()} to the whole list, or change the file")
            data.pop(path[0], None)
    for path, raw in _undecodable(data):
        name = by_path.get(path, ENV_PREFIX + "__".join(path).upper())
        problems.append(f"{name}: {raw!r} is not a list or table; write one in TOML or JSON, "
                        'e.g. ["a", "b"] or { key = "value" }')
    return data, by_path, problems


def _undecodable(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Take the values no syntax could read out of `node`, with their key paths."""
    found: list[tuple[tuple[str, ...], str]] = []
    for key, value in list(node.items()):
        if isinstance(value, _Undecodable):
            found.append(((*path, key), value.raw))
            del node[key]
        elif isinstance(value, dict):
            found += _undecodable(value, (*path, key))
    return found


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it, table into table; anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
