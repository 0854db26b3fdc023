"""Configuration: every problem listed at once, with the key and how to fix it."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from worker.cli.main import app
from worker.config import Settings, load_config, parse_duration_minutes, validate_data
from worker.errors import ConfigError, ExitCode

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env)


def test_the_example_config_validates_as_copied_and_takes_a_crm_csv(tmp_path: Path) -> None:
    # The README's Deploy section copies the example as it is: it validates with no file beside it.
    shutil.copy(ROOT / "config" / "carewatch.example.toml", tmp_path / "carewatch.toml")
    cfg = load_config(tmp_path / "carewatch.toml", environ={})
    assert [c.name for c in cfg.clients] == ["Acme Ltd", "Tax Division"]
    assert cfg.settings.store.url == f"sqlite:///{tmp_path.resolve()}/carewatch.db"
    assert cfg.settings.mailboxes[0].password_file == Path("/run/secrets/imap_password")
    # Its CRM line, uncommented, adds the clients of a CSV shaped like clients.example.csv.
    text = (tmp_path / "carewatch.toml").read_text()
    assert '# clients_csv = "clients.csv"' in text
    (tmp_path / "carewatch.toml").write_text(text.replace("# clients_csv =", "clients_csv ="))
    shutil.copy(ROOT / "config" / "clients.example.csv", tmp_path / "clients.csv")
    cfg = load_config(tmp_path / "carewatch.toml", environ={})
    names = [c.name for c in cfg.clients]
    assert "Globex Corporation" in names and "People Team" in names
    globex = next(c for c in cfg.clients if c.name == "Globex Corporation")
    assert globex.domains == ["globex.example", "globex.co.uk"] and len(globex.contacts) == 2
    people = next(c for c in cfg.clients if c.name == "People Team")
    assert people.internal


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key the config accepts and uses, dotted (list entries and dict values as their
    model); a deprecated key, which does nothing, is left out."""
    for name, field in model.model_fields.items():
        if field.deprecated:
            continue
        yield prefix + name
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _keys(t, f"{prefix}{name}.")
            else:
                stack.extend(typing.get_args(t))


def test_the_example_config_shows_every_key_and_its_commented_lines_are_valid(tmp_path: Path) -> None:
    # The issue asks for a fully commented example: a key added to the models must be shown.
    text = (ROOT / "config" / "carewatch.example.toml").read_text()
    shown = set(re.findall(r"^[#\s]*([a-z_]+)\s*=", text, re.M)) | set(re.findall(r"[{,]\s*([a-z_]+)\s*=", text))
    sections = {"firm", "calendar", "mailboxes", "owners", "partners", "clients", "policy", "store", "notify",
                "digest", "service", "smtp", "roles"}
    missing = sorted(k for k in set(_keys(Settings)) if k.rpartition(".")[2] not in shown | sections)
    assert missing == [], f"not in config/carewatch.example.toml: {missing}"
    # Uncommenting the optional lines gives a config that still validates: the examples are
    # real. (A commented line is taken when it is TOML on its own and its key is not set yet
    # in its table; the commented Maildir mailbox stays out.)
    def tables(uncomment: set[tuple[str, str]]) -> Iterator[tuple[str, str, str | None, str]]:
        """(table, line, key or None, the line uncommented or not)."""
        table = ""
        for n, line in enumerate(text.splitlines()):
            body = line.lstrip("# ") if line.startswith("#") else line
            if body.startswith("[") and not body.startswith("[[mailboxes]]") or line.startswith("[[mailboxes]]"):
                table = f"{n}:{body.split('#')[0].strip()}"  # each [[array]] entry on its own
                yield table, line, None, body
                continue
            m = re.match(r"([a-z_]+) = ", body)
            key = m.group(1) if m else None
            yield table, line, key, body if (table, key) in uncomment or not line.startswith("#") else line

    real = {(t, k) for t, line, k, _ in tables(set()) if k and not line.startswith("#")}
    optional = set()
    for t, line, k, body in tables(set()):
        if k and line.startswith("#") and (t, k) not in real and not t.endswith("[[mailboxes]]"):
            try:
                tomllib.loads(body)
            except tomllib.TOMLDecodeError:
                continue  # prose that happens to start like a key
            optional.add((t, k))
    lines = [out for _, _, _, out in tables(optional)]
    # The files it names, beside it: the holidays calendar, and a CA file where it says.
    (tmp_path / "holidays.ics").write_text(ICS)
    (tmp_path / "ca.pem").write_text("(a certificate)")
    lines = [line.replace("/etc/ssl/private-ca.pem", str(tmp_path / "ca.pem")) for line in lines]
    # Beside the files it names: the CSV, and a templates_dir with a copy of one template.
    (tmp_path / "clients.csv").write_bytes((ROOT / "config" / "clients.example.csv").read_bytes())
    (tmp_path / "my-templates").mkdir()
    (tmp_path / "my-templates" / "alert.txt").write_bytes((ROOT / "templates" / "alert.txt").read_bytes())
    cfg = validate_data(tomllib.loads("\n".join(lines)), tmp_path / "carewatch.example.toml", environ={})
    assert cfg.settings.templates_dir == tmp_path / "my-templates"
    assert cfg.settings.notify.smtp is not None and cfg.settings.service.metrics_host == "0.0.0.0"
    acme = next(c for c in cfg.settings.clients if c.name == "Acme Ltd")
    assert acme.calendar is not None and acme.calendar.timezone == "America/New_York"
    assert cfg.settings.policy.roles["user"].silence is False


BROKEN = """\
[firm]
domains = ["firm example"]

[calendar]
timezone = "Mars/Olympus"
hours = { mon = "17:00-09:00", funday = "09:00-10:00" }

[[mailboxes]]
name = "shared"
host = "imap.firm.example"
tls = "none"
folderz = ["INBOX"]

[[owners]]
name = "Olivia"
email = "not-an-email"

[[clients]]
name = "Acme"
domains = ["acme.example"]
owner = "nobody@firm.example"
contacts = [{ name = "A", email = "a@acme.example", role = "principal" }]

[policy]
reply_within = "2d"
"""


def test_a_broken_config_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(BROKEN)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    text = str(ei.value)
    for expected in [
        "firm.domains",
        "'firm example' is not a domain name",
        "calendar.timezone: unknown time zone 'Mars/Olympus'",
        "must start before it ends",
        'mailboxes[0] ("shared").folderz: unknown key',
        'owners[0] ("Olivia").email',
        "policy.reply_within",
        "business durations are counted in business hours",
        # The checks across entries run in the same pass, on the keys that did parse (a
        # malformed email or firm domain taken as written): no second round of fixing.
        'mailboxes[0] ("shared").username: required for an IMAP mailbox',
        '.tls: "none" sends the password in clear',
        'clients[0] ("Acme").owner: \'nobody@firm.example\' is not listed under [[owners]]',
    ]:
        assert expected in text, expected
    assert len(ei.value.problems) == 10 and not ei.value.note
    # Nothing is said twice: a key with a problem of its own gets no cross-check on top.
    assert len({x.split(":")[0] for x in ei.value.problems}) == 10


def test_a_mailbox_of_an_unknown_kind_or_auth_gets_one_problem_not_the_checks_of_the_default(
        tmp_path: Path) -> None:
    """kind = "pop3" took the default kind in the copy the cross-checks read, so the user was
    also told to add a host, a username and a password: three fixes for a kind they never
    meant; auth = "oauth" likewise asked for a password. Other mailboxes are checked as
    before, and so is the odd one's name."""
    from conftest import maildir_config

    cfg = maildir_config(tmp_path)
    text = cfg.read_text().replace('kind = "maildir"', 'kind = "pop3"')
    text += '\n[[mailboxes]]\nname = "shared"\nkind = "imap"\nfolders = ["INBOX"]\n'
    cfg.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(cfg, environ={})
    assert ei.value.problems == [
        'mailboxes[0] ("shared").kind: Input should be \'imap\' or \'maildir\'',
        'mailboxes[1] ("shared").name: duplicate mailbox name; each mailbox needs its own name',
        'mailboxes[1] ("shared").host: required for an IMAP mailbox',
        'mailboxes[1] ("shared").username: required for an IMAP mailbox',
        'mailboxes[1] ("shared"): set password_env (an environment variable name) or password_file (e.g. a '
        'container secret); passwords never go in the file',
    ]

    cfg.write_text(text.replace('kind = "pop3"', 'kind = "imap"\nhost = "imap.example"\nusername = "u"\n'
                                'auth = "oauth"\nallow_plaintext = true\ntls = "none"'))
    with pytest.raises(ConfigError) as ei:
        load_config(cfg, environ={})
    assert ei.value.problems[0] == 'mailboxes[0] ("shared").auth: Input should be \'password\' or \'xoauth2\''
    assert not any(p.startswith('mailboxes[0] ("shared")') for p in ei.value.problems[1:]), ei.value.problems
    assert len(ei.value.problems) == 5  # and mailbox 1's four, as above


def test_a_templates_dir_is_checked_when_the_config_is(tmp_path: Path) -> None:
    """Ops' own templates are read at every start: a folder that is not there (or holds none of
    ours) would silently leave the built-in ones in use, and a template that does not parse
    would fail the first alert, hours later."""
    from conftest import maildir_config

    cfg = maildir_config(tmp_path)
    base = cfg.read_text()
    own = tmp_path / "my-templates"

    def problems(folder: str) -> list[str]:
        cfg.write_text(f'templates_dir = "{folder}"\n' + base)
        with pytest.raises(ConfigError) as ei:
            load_config(cfg, environ={})
        return ei.value.problems

    assert problems("my-templates") == [f"templates_dir: {own} is not a folder"]
    own.mkdir()
    (own / "alert.text").write_text("a misnamed copy")
    assert problems("my-templates")[0].startswith(f"templates_dir: {own} holds none of Carewatch's templates")
    (own / "alert.txt").write_text("Hello {{ recipient_name }}\n{% for x in items %}\n")
    (own / "digest.html").write_text("{% extends 'base.html' %}{% block body %}{{ x }{% endblock %}")
    assert problems("my-templates") == [
        "templates_dir: alert.txt, line 2: Unexpected end of template. Jinja was looking for the following "
        "tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.",
        "templates_dir: digest.html, line 1: unexpected '}'",
    ]
    # A name the template is not given (a typo) is found here, with its line, not at the first alert.
    (own / "alert.txt").write_text("Hello {{ recipient_name }}\n{{ recipient_nmae }}\n")
    (own / "digest.html").write_text("{% extends 'base.html' %}{% block content %}{{ week_to }}{% endblock %}")
    (own / "base.html").write_text("<p>{{ firm_name }} {{ recipient }}</p>{% block content %}{% endblock %}")
    assert [p.split(" (it has")[0] for p in problems("my-templates")] == [
        "templates_dir: base.html, line 1: 'recipient' is not given to this template",  # the digest has none
        "templates_dir: alert.txt, line 2: 'recipient_nmae' is not given to this template",
    ]
    # A name guarded with `is defined` is the author's choice, and renders for both emails.
    (own / "base.html").write_text("<p>{% if recipient is defined %}{{ recipient }}{% endif %}</p>"
                                   "{% block content %}{% endblock %}")
    (own / "alert.txt").write_text("Hello {{ recipient_name }}\n")
    assert load_config(cfg, environ={}).settings.templates_dir == own
    # Carewatch's own templates, copied in whole, pass.
    for t in (ROOT / "templates").iterdir():
        (own / t.name).write_bytes(t.read_bytes())
    cfg.write_text('templates_dir = "my-templates"\n' + base)
    assert load_config(cfg, environ={}).settings.templates_dir == own


def test_when_entries_cannot_be_read_the_error_says_more_checks_follow(tmp_path: Path) -> None:
    # A required key missing from an entry: the checks across entries cannot run on it, and
    # the message says so rather than pretending the list is complete.
    p = tmp_path / "c.toml"
    p.write_text(BROKEN.replace('email = "not-an-email"\n', ""))
    r = run("--config", str(p), "validate", env={"COLUMNS": "300"})
    assert r.exit_code == ExitCode.CONFIG
    assert 'owners[0] ("Olivia").email: required key is missing' in r.output
    assert "References between entries (owners, partners, clients) are checked once these are fixed." in r.output
    assert "nobody@firm.example" not in r.output
    # Text with brackets reaches the terminal as written (rich would read [[owners]] as markup).
    p.write_text(BROKEN.replace('"firm example"', '"firm.example"').replace("Mars/Olympus", "UTC")
                 .replace("17:00-09:00", "09:00-17:00").replace(', funday = "09:00-10:00"', "")
                 .replace("folderz", "folders").replace("not-an-email", "olivia@firm.example")
                 .replace('"2d"', '"16h"'))
    r = run("--config", str(p), "validate", env={"COLUMNS": "300"})
    assert r.exit_code == ExitCode.CONFIG
    assert "'nobody@firm.example' is not listed under [[owners]]; add them" in r.output, r.output


def test_cross_checks_name_the_key_and_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        BROKEN.replace('"firm example"', '"firm.example"')
        .replace("Mars/Olympus", "UTC")
        .replace("17:00-09:00", "09:00-17:00")
        .replace(', funday = "09:00-10:00"', "")
        .replace("folderz", "folders")
        .replace("not-an-email", "olivia@firm.example")
        .replace('"2d"', '"16h"')
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    problems = ei.value.problems
    assert any('clients[0] ("Acme").owner' in x and "not listed under [[owners]]" in x for x in problems)
    assert any("username: required" in x for x in problems)
    assert any("password_env" in x and "never go in the file" in x for x in problems)
    assert any('.tls: "none" sends the password in clear' in x for x in problems)


def test_the_smtp_settings_are_checked_before_the_first_alert_is_due(tmp_path: Path) -> None:
    # Found at validation, not hours later when delivery first runs.
    p = tmp_path / "c.toml"
    base = '[firm]\ndomains = ["firm.example"]\n'
    p.write_text(base + '[notify]\ntransport = "smtp"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert ei.value.problems == ['notify.smtp: notify.transport = "smtp" needs a [notify.smtp] section '
                                 "(at least host)"]
    p.write_text(base + '[notify]\ntransport = "smtp"\n[notify.smtp]\nhost = "relay"\ntls = "none"\n'
                 'username = "cw"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert len(ei.value.problems) == 2
    assert ei.value.problems[0].startswith('notify.smtp.tls: "none" sends the alerts (and any password) in clear')
    assert ei.value.problems[1].startswith("notify.smtp: a username needs password_env")
    p.write_text(base + '[notify]\ntransport = "smtp"\n[notify.smtp]\nhost = "relay"\ntls = "none"\n'
                 'allow_plaintext = true\nusername = "cw"\npassword_env = "CW_SMTP"\n')
    assert load_config(p, environ={}).settings.notify.smtp is not None


def test_toml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["a.example"\nname = "x"\n')
    r = run("--config", str(p), "validate")
    assert r.exit_code == ExitCode.CONFIG
    assert "line 3" in r.output or "line 2" in r.output


def test_validate_exits_with_the_config_code_and_lists_problems(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(BROKEN)
    r = run("--config", str(p), "validate")
    assert r.exit_code == ExitCode.CONFIG == 3
    assert "problem(s) in the configuration" in r.output and "Mars/Olympus" in r.output


def test_findings_name_clients_without_owner_or_principal(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("""\
[firm]
domains = ["firm.example"]
[[owners]]
name = "O"
email = "o@firm.example"
[[clients]]
name = "NoOwner"
domains = ["a.example"]
contacts = [{ name = "A", email = "a@a.example", role = "principal" }]
[[clients]]
name = "NoPrincipal"
domains = ["b.example"]
owner = "o@firm.example"
contacts = [{ name = "B", email = "b@b.example", role = "user" }]
[[clients]]
name = "TwoPrincipals"
domains = ["c.example"]
owner = "O"
contacts = [{ name = "C", email = "c@c.example", role = "principal" },
            { name = "D", email = "d@c.example", role = "principal" }]
""")
    r = run("--config", str(p), "validate")
    assert r.exit_code == 0
    out = " ".join(r.output.split())
    assert "'NoOwner' has no owner" in out
    assert "'NoPrincipal' has no principal" in out
    assert "'TwoPrincipals' has 2 principals" in out
    assert "no [[mailboxes]]: scan and run have nothing to read" in out
    assert run("--config", str(p), "validate", "--strict").exit_code == ExitCode.FINDINGS
    # A mailbox but no clients: everything would be "other".
    p.write_text('[firm]\ndomains = ["firm.example"]\n[[mailboxes]]\nname = "m"\nkind = "maildir"\n'
                 'path = "md"\nfolders = ["INBOX", "Sent", "INBOX"]\n')
    r = run("--config", str(p), "validate", env={"COLUMNS": "300"})
    assert r.exit_code == ExitCode.CONFIG and "mailboxes[0] (\"m\").folders: 'INBOX' is listed twice" in r.output
    p.write_text(p.read_text().replace(', "INBOX"]', "]"))
    r = run("--config", str(p), "validate", env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "no clients: every message is 'other'" in r.output, r.output


def test_csv_problems_give_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "clients.csv").write_text(
        "client,domains,owner,contact_name,contact_email,role\n"
        "Acme,acme.example,o@firm.example,A,a@acme.example,principal\n"
        "Acme,,p@firm.example,B,not-an-address,user\n"
        ",,,C,c@x.example,user\n"
    )
    (tmp_path / "c.toml").write_text(
        'clients_csv = "clients.csv"\n[firm]\ndomains = ["firm.example"]\n'
        '[[owners]]\nname = "O"\nemail = "o@firm.example"\n'
    )
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "c.toml", environ={})
    text = str(ei.value)
    assert "clients.csv:3: client 'Acme' has owner" in text
    assert "clients.csv:4: empty 'client' column" in text
    assert "not-an-address" in text


def test_spreadsheet_saved_csv_exports_are_read_or_refused_with_the_fix(tmp_path: Path) -> None:
    toml = ('clients_csv = "clients.csv"\n[firm]\ndomains = ["firm.example"]\n'
            '[[owners]]\nname = "O"\nemail = "o@firm.example"\n')
    (tmp_path / "c.toml").write_text(toml)
    # Excel in a locale with a decimal comma saves with ";", keeps a BOM, and CRM exports
    # title-case the headers: all read the same as the example file.
    (tmp_path / "clients.csv").write_bytes(
        "\ufeffClient;Domains;Owner;Contact Name;Contact-Email;Role\r\n"
        "Café Crème SA;cafe.example,cafe.fr;o@firm.example;Renée Roux;renee@cafe.example;principal\r\n"
        .encode("utf-8"))
    cfg = load_config(tmp_path / "c.toml", environ={})
    (client,) = cfg.clients
    assert client.name == "Café Crème SA" and client.domains == ["cafe.example", "cafe.fr"]
    assert [(c.name, c.email, c.role) for c in client.contacts] == [("Renée Roux", "renee@cafe.example", "principal")]
    # Saved in the Windows code page instead: refused with the line and how to save it, not
    # read with the names garbled, and not a traceback.
    (tmp_path / "clients.csv").write_bytes(
        "client,domains,owner,contact_name,contact_email,role\r\n"
        "Acme,acme.example,o@firm.example,Al,al@acme.example,principal\r\n"
        "Café Crème SA,cafe.example,o@firm.example,Renée,renee@cafe.example,principal\r\n".encode("cp1252"))
    r = run("--config", str(tmp_path / "c.toml"), "validate", env={"COLUMNS": "300"})
    assert r.exit_code == ExitCode.CONFIG and "Traceback" not in r.output
    assert 'clients.csv:3: not UTF-8 text (byte 0xe9); save the file as "CSV UTF-8"' in r.output, r.output


def test_secrets_come_from_env_or_files_never_the_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[firm]\ndomains = ["firm.example"]\n[[mailboxes]]\nname = "m"\nhost = "h"\n'
        'username = "u"\npassword_env = "CW_PW"\n'
    )
    r = run("--config", str(p), "validate", "--check-secrets", env={"CW_PW": ""})
    assert r.exit_code == ExitCode.CONFIG and "CW_PW is not set" in r.output
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    r = run("--config", str(p), "validate", "--check-secrets", env={"CW_PW_FILE": str(secret)})
    assert r.exit_code == 0, r.output
    assert "hunter2" not in r.output
    # A secret file that is there but unusable: said so, not a login with an empty password
    # hours later, and not a traceback.
    for content, says in ((b"", "is empty"), (b"\n  \n", "is empty"), (b"\xff\xfehunter2", "is not UTF-8 text")):
        secret.write_bytes(content)
        r = run("--config", str(p), "validate", "--check-secrets", env={"CW_PW_FILE": str(secret), "COLUMNS": "300"})
        assert r.exit_code == ExitCode.CONFIG and f"secret file {secret} {says}" in r.output, r.output
        assert "hunter2" not in r.output
    # A secret written into the file is refused by name, with the way to give it instead,
    # and never repeated back.
    p.write_text(
        '[firm]\ndomains = ["firm.example"]\n[[mailboxes]]\nname = "m"\nhost = "h"\n'
        'username = "u"\npassword = "hunter2"\n[notify.smtp]\nhost = "smtp.firm.example"\n'
        'password = "hunter3"\n'
    )
    r = run("--config", str(p), "validate")
    assert r.exit_code == ExitCode.CONFIG, r.output
    text = " ".join(r.output.split())
    for where in ('mailboxes[0] ("m").password', "notify.smtp.password"):
        assert f"{where}: secrets never go in the config file" in text, text
    assert "set password_env to the name of an environment variable, or password_file" in text
    assert "hunter2" not in r.output and "hunter3" not in r.output


def test_environment_overrides_any_setting(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n')
    cfg = load_config(
        p,
        environ={
            "CAREWATCH__STORE__URL": "postgresql://x@db/cw",
            "CAREWATCH__POLICY__COUNT_CC": "true",
            "CAREWATCH__FIRM__DOMAINS": '["a.example", "b.example"]',
        },
    )
    assert cfg.settings.store.url == "postgresql://x@db/cw"
    assert cfg.settings.policy.count_cc is True
    assert cfg.settings.firm.domains == ["a.example", "b.example"]


def test_environment_values_as_text_as_toml_or_as_json(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\nname = "Kept"\n[policy]\nreply_within = "2h"\n')
    cfg = load_config(p, environ={
        "CAREWATCH__NOTIFY__TRANSPORT": '"smtp"',  # quoted as TOML quotes a string
        "CAREWATCH__NOTIFY__SMTP": '{ host = "mail.firm.example", port = 2525 }',  # a TOML table
        "CAREWATCH__STORE__URL": "sqlite:///x.db",  # text as written
        "carewatch__service__metrics_port": "9300",  # any case
        "CAREWATCH__DIGEST__DAY_OF_WEEK": "'fri'",  # TOML's literal string
        "CAREWATCH__FIRM__ADDRESSES": "['desk@elsewhere.example']",  # a TOML list
        "CAREWATCH__CALENDAR__HOURS": '{"mon": ["08:00-12:00"]}',  # a JSON table
        "CAREWATCH__MAILBOXES": '[{ name = "m", kind = "maildir", path = "2026" }]',  # a whole list
        "CAREWATCH__SERVICE__METRICS_HOST": "2026",  # a text key keeps digits as text
    })
    s = cfg.settings
    assert s.notify.transport == "smtp"
    assert s.notify.smtp is not None and (s.notify.smtp.host, s.notify.smtp.port) == ("mail.firm.example", 2525)
    assert s.store.url.endswith("/x.db") and s.service.metrics_port == 9300
    assert s.digest.day_of_week == "fri" and s.firm.addresses == ["desk@elsewhere.example"]
    assert s.calendar.hours["mon"] == ["08:00-12:00"]
    assert s.service.metrics_host == "2026" and [(m.name, m.path) for m in s.mailboxes] == [("m", tmp_path / "2026")]
    # What the environment leaves alone stays as the file says.
    assert (s.firm.name, s.firm.domains, s.policy.reply_within) == ("Kept", ["firm.example"], "2h")


def test_environment_problems_name_the_variable(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n[[mailboxes]]\nname = "m"\nkind = "maildir"\npath = "m"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={
            "CAREWATCH__STORE__URLL": "sqlite:///x.db",
            "CAREWATCH__STOER__URL": "sqlite:///x.db",
            "CAREWATCH__MAILBOXES__0__PATH": "elsewhere",
            "CAREWATCH__FIRM__DOMAINS": "a.example",
            "CAREWATCH__POLICY__REPLY_WITHIN": "soon",
            "CAREWATCH_LOG_LEVEL": "info",  # one underscore: not a setting of the file
        })
    text = "\n".join(e.value.problems)
    assert "store.urll (set by CAREWATCH__STORE__URLL): unknown key" in text
    assert "CAREWATCH__STOER__URL: no such setting" in text
    assert "CAREWATCH__MAILBOXES__0__PATH: the entries of [[mailboxes]] cannot be set one key at a time" in text
    assert "CAREWATCH__FIRM__DOMAINS: 'a.example' is not a list or table" in text
    assert "policy.reply_within (set by CAREWATCH__POLICY__REPLY_WITHIN): 'soon' is not a duration" in text
    assert len(e.value.problems) == 5, text


@pytest.mark.parametrize("env", [
    {},
    {"CAREWATCH__SERVICE__METRICS_PORT": "9400"},
    {"CAREWATCH__SERVICE__METRICS_PORT": "9400", "CAREWATCH__SERVICE__METRICS_HOST": '"127.0.0.2"'},
    {"carewatch__service__metrics_host": "::1"},
    {"CAREWATCH__SERVICE": "{ metrics_port = 9401, metrics_host = \"127.0.0.3\" }"},
    {"CAREWATCH__SERVICE": '{"metrics_port": 9402}'},  # a JSON table
    {"CAREWATCH__SERVICE": "{ metrics_port = 9403 }", "CAREWATCH__SERVICE__METRICS_PORT": "9404"},
    {"CAREWATCH__SERVICE__METRICS_PORT": "-1"},
])
def test_the_healthcheck_reads_the_service_keys_as_the_worker_does(tmp_path: Path, env: dict[str, str]) -> None:
    from worker.service.healthcheck import health_url

    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n[service]\nmetrics_port = 9123\n')
    s = load_config(p, environ=env).settings.service
    host = "127.0.0.1" if s.metrics_host in ("0.0.0.0", "::") else s.metrics_host
    host = f"[{host}]" if ":" in host else host
    want = None if s.metrics_port < 0 else f"http://{host}:{s.metrics_port}/healthz"
    assert health_url({**env, "CAREWATCH_CONFIG": str(p)}) == want


def test_scanning_a_mailbox_that_is_not_configured_is_refused(tmp_path: Path) -> None:
    from worker.demo import generate

    firm = generate(tmp_path / "demo")
    r = run("--config", str(firm.config), "scan", "--mailbox", "client", env={"COLUMNS": "200"})
    assert r.exit_code == ExitCode.USAGE
    assert "--mailbox 'client': no such mailbox; the configured ones are 'clients'" in r.output
    assert not (tmp_path / "demo" / "carewatch.db").exists()  # refused before anything was read
    r = run("--config", str(firm.config), "scan", "--mailbox", "clients", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {f["folder"] for f in doc["folders"]} == {"INBOX", "Sent"}
    assert all(f["stored"] > 0 for f in doc["folders"])
    assert (tmp_path / "demo" / "carewatch.db").exists()


def test_a_wrong_log_level_is_refused_with_the_choices() -> None:
    example = str(ROOT / "config" / "carewatch.example.toml")
    r = run("--config", example, "validate", env={"CAREWATCH_LOG_LEVEL": "verbose", "COLUMNS": "300"})
    assert r.exit_code == 2 and "Traceback" not in r.output
    text = " ".join(r.output.split())
    assert "CAREWATCH_LOG_LEVEL" in text and "'verbose' is not one of 'debug', 'info', 'warning', 'error'" in text
    r = run("--config", example, "validate", env={"CAREWATCH_LOG_LEVEL": "warning"})
    assert r.exit_code == 0, r.output


def test_durations() -> None:
    assert parse_duration_minutes("4h", business=True) == 240
    assert parse_duration_minutes("14d", business=False) == 14 * 1440
    with pytest.raises(ValueError):
        parse_duration_minutes("2d", business=True)
    with pytest.raises(ValueError):
        parse_duration_minutes("soon", business=False)


def test_a_missing_config_says_how_to_give_one() -> None:
    r = run("validate", env={"CAREWATCH_CONFIG": ""})
    assert r.exit_code == ExitCode.CONFIG and "--config" in r.output


def test_the_sqlite_page_cache_is_set_from_the_config(tmp_path: Path) -> None:
    """The page cache is most of a scan's memory; a small container lowers it."""
    from worker.ingest.run import prepare_store

    p = tmp_path / "c.toml"
    p.write_text(f'[firm]\ndomains = ["firm.example"]\n[store]\nurl = "sqlite:///{tmp_path / "cw.db"}"\n'
                 "sqlite_cache_mib = 8\n")
    store, _ = prepare_store(load_config(p))
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -8 * 1024
    finally:
        store.dispose()
    p.write_text('[firm]\ndomains = ["firm.example"]\n[store]\nsqlite_cache_mib = 0\n')
    with pytest.raises(ConfigError, match="store.sqlite_cache_mib"):
        load_config(p)


def test_the_database_password_comes_from_a_file_or_the_environment_not_the_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n[store]\nurl = "postgresql://carewatch@db.example:5432/cw"\n'
                 'password_file = "secrets/db_password"\n')
    # Missing: said by --check-secrets, by key, before any connection is tried.
    r = run("--config", str(p), "validate", "--check-secrets", env={"COLUMNS": "300"})
    assert r.exit_code == ExitCode.CONFIG and "store.password: cannot read secret file" in r.output, r.output
    (tmp_path / "secrets" / "db_password").write_text("p@ss/word:1\n")
    cfg = load_config(p, environ={})
    assert cfg.settings.store.password_file == tmp_path / "secrets" / "db_password"  # beside the config
    url = cfg.settings.store.connect_url()
    from sqlalchemy.engine import make_url

    assert make_url(url).password == "p@ss/word:1" and make_url(url).host == "db.example"  # quoted in the URL
    assert "p@ss" not in cfg.settings.store.url  # the URL shown in logs and /healthz has none
    r = run("--config", str(p), "validate", "--check-secrets")
    assert r.exit_code == 0, r.output
    # From the environment, the file set there as the compose file does.
    p.write_text('[firm]\ndomains = ["firm.example"]\n[store]\nurl = "postgresql://carewatch@db.example/cw"\n')
    monkeypatch.setenv("DB_PW", "env-pw")
    cfg = load_config(p, environ={"CAREWATCH__STORE__PASSWORD_ENV": "DB_PW"})
    assert make_url(cfg.settings.store.connect_url()).password == "env-pw"
    cfg = load_config(p, environ={"CAREWATCH__STORE__PASSWORD_FILE": str(tmp_path / "secrets" / "db_password")})
    assert make_url(cfg.settings.store.connect_url()).password == "p@ss/word:1"


@pytest.mark.postgres
def test_the_store_opens_with_a_password_file(tmp_path: Path, pg_url: str) -> None:
    from worker.ingest.run import configured_store

    (tmp_path / "pw").write_text("unused-with-trust-auth\n")
    cfg = load_config(write_min(tmp_path, pg_url, tmp_path / "pw"), environ={})
    store = configured_store(cfg)  # connects and migrates
    try:
        assert store.engine.url.password == "unused-with-trust-auth"
        assert "unused-with-trust-auth" not in store.url  # never shown
    finally:
        store.dispose()


def write_min(tmp_path: Path, url: str, password_file: Path) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(f'[firm]\ndomains = ["firm.example"]\n[store]\nurl = "{url}"\npassword_file = "{password_file}"\n')
    return p


ICS = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Example//Holidays//EN\r
BEGIN:VEVENT\r
UID:xmas@example\r
SUMMARY:Christmas Day\r
DTSTART;VALUE=DATE:20241225\r
DTEND;VALUE=DATE:20241226\r
RRULE:FREQ=YEARLY\r
EXDATE;VALUE=DATE:20251225\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:closure@example\r
SUMMARY:Office closed (two days)\r
DTSTART;VALUE=DATE:20261228\r
DTEND;VALUE=DATE:20261230\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:meeting@example\r
SUMMARY:Partners' meeting (a timed event, not a day off)\r
DTSTART:20261201T090000Z\r
DTEND:20261201T170000Z\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:cancelled@example\r
SUMMARY:Away day (cancelled)\r
STATUS:CANCELLED\r
DTSTART;VALUE=DATE:20261204\r
DTEND;VALUE=DATE:20261205\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_ics_holidays_expand_rules_and_leave_out_timed_and_cancelled_events(tmp_path: Path) -> None:
    from datetime import date

    from worker.care.clock import load_ics_holidays

    ics = tmp_path / "holidays.ics"
    ics.write_text(ICS)
    days = load_ics_holidays(ics, today=date(2026, 12, 5))
    assert {date(2024, 12, 25), date(2026, 12, 25), date(2027, 12, 25)} <= days  # every year
    assert date(2025, 12, 25) not in days  # EXDATE
    assert {date(2026, 12, 28), date(2026, 12, 29)} <= days and date(2026, 12, 30) not in days  # DTEND exclusive
    assert date(2026, 12, 1) not in days  # a timed meeting is not a holiday
    assert date(2026, 12, 4) not in days  # cancelled


def test_hours_and_calendar_files_are_checked_by_validate(tmp_path: Path) -> None:
    base = '[firm]\ndomains = ["firm.example"]\n'
    cfg = tmp_path / "c.toml"

    def problems(text: str) -> str:
        cfg.write_text(base + text)
        r = run("--config", str(cfg), "validate", env={"COLUMNS": "300"})
        return " ".join(r.output.split()) if r.exit_code == ExitCode.CONFIG else ""

    assert "'09:00-13:00' and '12:00-17:30' overlap" in problems(
        '[calendar]\nhours = { mon = ["09:00-13:00", "12:00-17:30"] }\n')
    assert "'monkey' is not a weekday" in problems('[calendar]\nhours = { monkey = "09:00-17:00" }\n')
    assert "mon is given twice" in problems('[calendar]\nhours = { mon = "09:00-17:00", Monday = "10:00-12:00" }\n')
    assert problems('[calendar]\nhours = { Monday = "09:00-12:00", tue = ["09:00-12:00", "13:00-17:00"] }\n') == ""
    # The calendar file, where the config is (a client's too), read and parsed by validate.
    assert f"calendar.holidays_ics: cannot read {tmp_path / 'nope.ics'}" in problems(
        '[calendar]\nholidays_ics = "nope.ics"\n')
    (tmp_path / "broken.ics").write_text("this is not a calendar")
    assert "calendar.holidays_ics:" in problems('[calendar]\nholidays_ics = "broken.ics"\n')
    (tmp_path / "ok.ics").write_text(ICS)
    client = ('[[owners]]\nname = "O"\nemail = "o@firm.example"\n[[clients]]\nname = "Acme"\n'
              'domains = ["acme.example"]\nowner = "o@firm.example"\n'
              'contacts = [{ name = "A", email = "a@acme.example", role = "principal" }]\n')
    assert problems(client + 'calendar = { timezone = "America/New_York", holidays_ics = "ok.ics" }\n') == ""
    assert 'clients ("Acme").calendar.holidays_ics: cannot read' in problems(
        client + 'calendar = { timezone = "America/New_York", holidays_ics = "gone.ics" }\n')
    assert "ca_file:" in problems('[[mailboxes]]\nname = "m"\nhost = "h"\nusername = "u"\npassword_env = "X"\n'
                                  'ca_file = "missing-ca.pem"\n')


def test_json_logs_keep_structured_fields_and_backoff_is_one_rule() -> None:
    import io
    import logging

    from worker.logs import JsonFormatter
    from worker.notify.outbox import backoff
    from worker.retry import capped_backoff
    from worker.service.worker import backoff_seconds

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("carewatch.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("scan of %s failed", "clients", extra={"mailbox": "clients", "failures": 3})
    finally:
        log.removeHandler(handler)
    doc = json.loads(out.getvalue())
    assert doc["msg"] == "scan of clients failed" and doc["mailbox"] == "clients" and doc["failures"] == 3
    assert "args" not in doc and "levelno" not in doc  # the record's own fields stay out
    assert [capped_backoff(n, 5, 600) for n in (1, 2, 3, 8, 9, 20)] == [5, 10, 20, 600, 600, 600]
    assert backoff_seconds(3) == 20 and backoff(2).total_seconds() == 120


def test_a_countrys_public_holidays_are_days_off(tmp_path: Path) -> None:
    from datetime import date

    from worker.care.clock import BusinessCalendar
    from worker.config import CalendarConfig

    cal = BusinessCalendar.from_config(CalendarConfig(holidays_country="GB-ENG"))
    assert {date(2026, 12, 25), date(2026, 12, 28), date(2027, 1, 1), date(2026, 8, 31)} <= cal.holidays
    assert date(2026, 11, 16) not in cal.holidays
    scotland = BusinessCalendar.from_config(CalendarConfig(holidays_country="GB-SCT"))
    assert date(2026, 11, 30) in scotland.holidays and date(2026, 11, 30) not in cal.holidays  # St Andrew's Day
    # A code it does not know is refused by validate, by key, with what to write instead.
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n[calendar]\nholidays_country = "England"\n')
    r = run("--config", str(p), "validate", env={"COLUMNS": "300"})
    text = " ".join(r.output.split())
    assert r.exit_code == ExitCode.CONFIG and "calendar.holidays_country" in text and "'GB-ENG'" in text, text


def test_a_key_that_does_nothing_loads_with_a_finding_that_says_so(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[firm]\ndomains = ["firm.example"]\n[notify]\nmax_attempts = 8\ngive_up_after = "2d"\n')
    cfg = load_config(p, environ={})
    assert ("notify.max_attempts does nothing: an email is retried for give_up_after (2d) from when it was "
            "queued; delete the key") in cfg.findings
    p.write_text('[firm]\ndomains = ["firm.example"]\n')
    assert not any("max_attempts" in f for f in load_config(p, environ={}).findings)


# --- any config, any environment: problems are reported, never raised as something else -------
_KEY_PATHS = sorted(set(tuple(k.split(".")) for k in _keys(Settings)))
_LISTS = {"mailboxes", "owners", "partners", "clients", "contacts"}
_HOSTILE = st.one_of(
    st.sampled_from([0, -1, 10**20, 1.5, float("inf"), True, "", "x", "x" * 300, "/tmp/" + "y" * 300,
                     "../../etc/passwd", "Europe/Nowhere", "09:00-08:00", "4x", [], [1], ["a"], [{}], {},
                     {"a": 1}, {"name": "n", "email": "n@x.example"}]),
    st.text(max_size=20), st.integers(), st.lists(st.text(max_size=5), max_size=3),
)


@st.composite
def _hostile_config(draw: st.DrawFn) -> dict[str, object]:
    data: dict[str, object] = {"firm": {"domains": ["firm.example"]}}
    for path in draw(st.lists(st.sampled_from(_KEY_PATHS), min_size=1, max_size=4)):
        node: dict[str, object] = data
        for part in path[:-1]:
            nxt = node.get(part)
            if part in _LISTS:  # one entry of a list of tables
                if not (isinstance(nxt, list) and nxt and isinstance(nxt[0], dict)):
                    nxt = [{}]
                    node[part] = nxt
                node = nxt[0]
            else:
                if not isinstance(nxt, dict):
                    nxt = {}
                    node[part] = nxt
                node = nxt
        node[path[-1]] = draw(_HOSTILE)
    return data


_ENV_NAMES = st.sampled_from(["STORE__URL", "NOTIFY", "NOTIFY__SMTP", "NOTIFY__SMTP__PORT", "CALENDAR__HOURS",
                              "CALENDAR__HOURS__MON", "FIRM", "FIRM__DOMAINS", "MAILBOXES", "MAILBOXES__0__HOST",
                              "CLIENTS", "CLIENTS_CSV", "POLICY__ROLES", "POLICY__ROLES__PRINCIPAL__REPLY_WITHIN",
                              "SERVICE", "TEMPLATES_DIR", "X", "__", "STORE____URL", "CALENDAR__HOURS__MON__X"])
_ENV_VALUES = st.one_of(st.sampled_from(['', '"', "'", "{", "[1,", "null", "true", "-1", "1e999", '"x"', "[]",
                                         "{}", "{ a = 1 }", '{"mon": 5}', '[{"name": "m"}]', "[[1]]", "x" * 300]),
                        st.text(max_size=12))


_LONG = "/tmp/" + "y" * 300  # a file name longer than the file system allows (ENAMETOOLONG)


@settings(suppress_health_check=[HealthCheck.too_slow])
@example(data={"firm": {"domains": ["firm.example"]}, "calendar": {"timezone": "x" * 300}}, env={})
@example(data={"firm": {"domains": ["firm.example"]}, "templates_dir": _LONG}, env={})
@example(data={"firm": {"domains": ["firm.example"]}, "notify": {"smtp": {"host": "h", "ca_file": _LONG}}}, env={})
@example(data={"firm": {"domains": ["firm.example"]}, "clients": 1, "clients_csv": "x.csv"}, env={})
@example(data={"firm": {"domains": ["firm.example"]}},
         env={"CAREWATCH__CLIENTS": "1", "CAREWATCH__CLIENTS_CSV": "x.csv"})
@given(data=_hostile_config(), env=st.dictionaries(_ENV_NAMES.map(lambda k: "CAREWATCH__" + k), _ENV_VALUES,
                                                   max_size=3))
def test_any_config_and_environment_gives_a_config_or_its_problems(data: dict[str, object],
                                                                   env: dict[str, str]) -> None:
    """A config broken in any way, from the file or the environment, is refused with its
    problems listed (exit 3 in the CLI), never with a traceback."""
    try:
        validate_data(data, Path("/tmp/carewatch-fuzz/c.toml"), env)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
