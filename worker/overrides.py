"""Settings from the environment: CAREWATCH__SECTION__KEY=value, the value in TOML syntax (or a
bare string). Kept apart from the config package, which builds pydantic models on import, so
that the container's HEALTHCHECK reads the same overrides in milliseconds."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from .defaults import ENV_PREFIX


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
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
