"""Loading a configuration: the TOML file, a clients CSV, environment overrides, relative
paths; every problem collected with its key and reported together."""

from __future__ import annotations

import copy
import csv
import io
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from ..overrides import env_prefixed
from .checks import _cross_check, findings
from .schema import ENV_CONFIG, LENIENT, PASSWORD_SOURCE, SECRET_KEYS, Config, Settings


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
    env_paths: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    if env_prefixed(environ):  # pydantic-settings (30 ms to import) only when there is something to read
        from .environment import environment_overrides, merge

        env_data, env_paths, problems = environment_overrides(environ)
        data = merge(data, env_data)
    base = cfg_path.parent if cfg_path else Path.cwd()

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
        if isinstance(data.get("clients", []), list):  # (anything else is the schema's to report)
            data["clients"] = list(data.get("clients") or []) + csv_clients

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems += [_schema_problem(err, data, env_paths) for err in errors]
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
        moot = _checks_on_defaulted_keys(errors, data)
        problems += [p for p in _cross_check(partial, csv_lines) if not p.startswith(reported)
                     and not moot(p) and not any(p.startswith(w) and k in p for w, k in secrets)]
        raise ConfigError(problems, str(cfg_path or "")) from None

    s = settings
    _resolve_paths(s, base)
    problems += _cross_check(s, csv_lines)
    if problems:
        raise ConfigError(problems, str(cfg_path or ""))
    return Config(settings=s, path=cfg_path, findings=findings(s))


def _checks_on_defaulted_keys(errors: list[Any], data: Mapping[str, Any]) -> Callable[[str], bool]:
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


def _schema_problem(err: Any, data: Mapping[str, Any], env_paths: Mapping[tuple[str, ...], str]) -> str:
    """One pydantic error as a problem line: the key (and the variable that set it, if one
    did), then what is wrong and how to fix it."""
    where = _format_loc(err["loc"], data)
    loc = tuple(str(p) for p in err["loc"])
    setter = next((name for path, name in env_paths.items() if loc[:len(path)] == path), None)
    if setter:
        where += f" (set by {setter})"
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
