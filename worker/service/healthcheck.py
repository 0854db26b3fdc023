"""The container's HEALTHCHECK: GET /healthz on the port the config names.

Run as `python -m worker.service.healthcheck`. It reads only the
`[service]` section and its CAREWATCH__SERVICE__* settings, so it starts in a few tens of
milliseconds every interval instead of loading the whole configuration; the worker has
validated the rest. Exit 0 when /healthz answers 200, 1 otherwise, printing the body.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from ..defaults import ENV_CONFIG, METRICS_PORT
from ..overrides import service_overrides


def health_url(environ: Mapping[str, str] | None = None) -> str | None:
    """http://host:port/healthz of the worker the config describes; None when it serves none."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = environ.get(ENV_CONFIG)
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            pass  # the worker reports a broken config; here the defaults stand
    found = data.get("service")
    service: dict[str, Any] = {**(found if isinstance(found, dict) else {}), **service_overrides(environ)}
    try:
        port = int(service.get("metrics_port", METRICS_PORT))
    except (TypeError, ValueError):
        port = METRICS_PORT  # the worker refuses such a config and says why; this checks the default
    if port < 0:
        return None
    host = str(service.get("metrics_host", "0.0.0.0"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check(timeout: float = 4.0) -> int:
    url = health_url()
    if url is None:
        print("service.metrics_port is -1: the worker serves no /healthz", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http to this host)
            print(r.read().decode("utf-8", "replace"))
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode("utf-8", "replace"))
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(check())
