"""Rules that span several keys (references, uniqueness, files that must exist) and the
findings: what good client management asks for but the config lacks."""

from __future__ import annotations

from .schema import KNOWN_ROLES, PASSWORD_SOURCE, Settings
from .values import not_usable


def _cross_check(s: Settings, csv_lines: dict[tuple[str, str], int]) -> list[str]:
    """Rules that span several keys: references, uniqueness, mailbox completeness."""
    return (_mailbox_problems(s) + _people_problems(s) + _client_problems(s, csv_lines) + _notify_problems(s)
            + _path_problems(s))


def _mailbox_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    seen_mb: set[str] = set()
    for i, mb in enumerate(s.mailboxes):
        where = f'mailboxes[{i}] ("{mb.name}")'
        if mb.name in seen_mb:
            problems.append(f"{where}.name: duplicate mailbox name; each mailbox needs its own name")
        seen_mb.add(mb.name)
        if mb.kind == "imap":
            if not mb.host:
                problems.append(f"{where}.host: required for an IMAP mailbox")
            if not mb.username:
                problems.append(f"{where}.username: required for an IMAP mailbox")
            if mb.auth == "password" and not (mb.password_env or mb.password_file):
                problems.append(f"{where}: set {PASSWORD_SOURCE}")
            if mb.auth == "xoauth2" and not mb.oauth_provider:
                problems.append(f"{where}.oauth_provider: required with auth = \"xoauth2\" "
                                "(\"microsoft\" or \"google\")")
            if mb.tls == "none" and not mb.allow_plaintext:
                problems.append(f"{where}.tls: \"none\" sends the password in clear; use \"implicit\" "
                                "or \"starttls\", or set allow_plaintext = true if you really mean it")
        else:
            if not mb.path:
                problems.append(f"{where}.path: required for a Maildir mailbox")
        if not mb.folders:
            problems.append(f"{where}.folders: list at least one folder, e.g. [\"INBOX\", \"Sent\"]")
        for f in sorted({f for f in mb.folders if mb.folders.count(f) > 1}):
            problems.append(f"{where}.folders: {f!r} is listed twice")

    return problems


def _people_problems(s: Settings) -> list[str]:
    """Owners' and partners' references to one another."""
    problems: list[str] = []
    people = {o.email: o for o in s.owners}
    names = {o.name.lower(): o.email for o in s.owners}
    for i, o in enumerate(s.owners):
        if o.backup and not s.find_person(o.backup):
            problems.append(f'owners[{i}] ("{o.name}").backup: {o.backup!r} is neither an owner nor a '
                            "partner; add them or fix the spelling")
    owner_set = set(people) | set(names)
    for i, p in enumerate(s.partners):
        if isinstance(p.scope, list):
            for ref in p.scope:
                if ref.strip().lower() not in owner_set:
                    problems.append(f'partners[{i}] ("{p.name}").scope: {ref!r} is not an owner')

    return problems


def _client_problems(s: Settings, csv_lines: dict[tuple[str, str], int]) -> list[str]:
    """Clients: unique names, owners and backups that exist, each contact at one client."""
    problems: list[str] = []
    owner_set = {o.email for o in s.owners} | {o.name.lower() for o in s.owners}
    seen_clients: set[str] = set()
    contact_home: dict[str, str] = {}
    for i, c in enumerate(s.clients):
        where = f'clients[{i}] ("{c.name}")'
        if c.name.lower() in seen_clients:
            problems.append(f"{where}.name: duplicate client name")
        seen_clients.add(c.name.lower())
        if c.owner and c.owner.strip().lower() not in owner_set:
            problems.append(f"{where}.owner: {c.owner!r} is not listed under [[owners]]; add them "
                            "or fix the spelling")
        if c.backup and not s.find_person(c.backup):
            problems.append(f"{where}.backup: {c.backup!r} is neither an owner nor a partner")
        if not c.internal:
            for d in c.domains:
                if d in s.firm.domains:
                    problems.append(f"{where}.domains: {d!r} is a firm domain; mark the client "
                                    "internal = true and list its contacts by email")
        if not c.domains and not c.contacts:
            problems.append(f"{where}: give the client at least one domain or one contact")
        for j, ct in enumerate(c.contacts):
            line = csv_lines.get((c.name, ct.email))
            cwhere = f"{s.clients_csv}:{line}" if line else f"{where}.contacts[{j}]"
            if ct.email in contact_home and contact_home[ct.email] != c.name:
                problems.append(f"{cwhere}: {ct.email} is already a contact of "
                                f"{contact_home[ct.email]!r}; a person belongs to one client")
            contact_home.setdefault(ct.email, c.name)

    return problems


def _notify_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    n = s.notify
    if n.transport == "smtp" and n.smtp is None:
        problems.append('notify.smtp: notify.transport = "smtp" needs a [notify.smtp] section (at least host)')
    if n.smtp is not None:
        if n.smtp.tls == "none" and not n.smtp.allow_plaintext:
            problems.append('notify.smtp.tls: "none" sends the alerts (and any password) in clear; use '
                            '"starttls" or "implicit", or set allow_plaintext = true if you really mean it')
        if n.smtp.username and not (n.smtp.password_env or n.smtp.password_file):
            problems.append(f"notify.smtp: a username needs {PASSWORD_SOURCE}")
    if s.templates_dir is not None:
        from ..notify.render import template_problems  # (jinja2 only for a config that has its own)

        problems += template_problems(s.templates_dir)
    return problems


def _path_problems(s: Settings) -> list[str]:
    """Every file and folder the config names that must be there when the worker starts
    (secret files aside: they may be mounted only where it runs; --check-secrets reads them)."""
    from ..care.clock import load_ics_holidays

    problems: list[str] = []
    calendars = [("calendar", s.calendar)] + [(f'clients ("{c.name}").calendar', c.calendar)
                                              for c in s.clients if c.calendar is not None]
    for where, cal in calendars:
        if cal.holidays_ics is None:
            continue
        try:
            load_ics_holidays(cal.holidays_ics)
        except OSError as exc:
            problems.append(f"{where}.holidays_ics: cannot read {cal.holidays_ics}: {exc.strerror}")
        except ValueError as exc:
            problems.append(f"{where}.holidays_ics: {exc}")
    files = [(f'mailboxes[{i}] ("{mb.name}").ca_file', mb.ca_file) for i, mb in enumerate(s.mailboxes)]
    if s.notify.smtp is not None:
        files.append(("notify.smtp.ca_file", s.notify.smtp.ca_file))
    problems += [f"{where}: {why}" for where, path in files
                 if path is not None and (why := not_usable(path, "file"))]
    # (A Maildir may be filled only later, by another program: `validate --connect` and the scan
    # say when it is not there.)
    return problems


def findings(s: Settings) -> list[str]:
    """What good client management asks for but the config lacks (not errors: the worker runs)."""
    out: list[str] = []
    if not s.mailboxes:
        out.append("no [[mailboxes]]: scan and run have nothing to read; add the firm's shared mailbox")
    if s.mailboxes and not s.clients:
        out.append("no clients: every message is 'other' until clients are listed ([[clients]] or clients_csv)")
    for c in s.clients:
        if not c.owner:
            out.append(f"client {c.name!r} has no owner: every client needs exactly one "
                       "accountable account manager")
        principals = [ct for ct in c.contacts if ct.role == "principal"]
        if not principals:
            out.append(f"client {c.name!r} has no principal contact: name the one person "
                       "accountable on the client's side (role = \"principal\")")
        elif len(principals) > 1:
            out.append(f"client {c.name!r} has {len(principals)} principals "
                       f"({', '.join(p.email for p in principals)}): there should be exactly one")
        for ct in c.contacts:
            if ct.role not in KNOWN_ROLES and ct.role not in s.policy.roles:
                out.append(f"client {c.name!r}: contact {ct.email} has role {ct.role!r}, which has "
                           "no policy of its own; the defaults apply")
    if "max_attempts" in s.notify.model_fields_set:
        out.append(f"notify.max_attempts does nothing: an email is retried for give_up_after "
                   f"({s.notify.give_up_after}) from when it was queued; delete the key")
    return out
