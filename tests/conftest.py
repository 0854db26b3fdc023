"""Fixtures: real Dovecot, real SMTP (aiosmtpd), real databases (SQLite; PostgreSQL when
CAREWATCH_TEST_POSTGRES_URL is set). In CI (CI=true) a missing server fails the run."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
from servers import Dovecot, SmtpSink, dovecot_available  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"

# The CLI's rich consoles are made at import and keep a COLUMNS set then; pytest-xdist sets
# COLUMNS=80 in its workers. Tests that want a width pass COLUMNS to the command they run.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
PG_URL = os.environ.get("CAREWATCH_TEST_POSTGRES_URL")

# Property tests: a quick look by default, a thorough one in CI (HYPOTHESIS_PROFILE overrides).
settings.register_profile("quick", max_examples=60)
settings.register_profile("ci", max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "quick"))


def _missing(what: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def _start_dovecot() -> tuple[Dovecot, Path]:
    if not dovecot_available():
        _missing("Dovecot (apt-get install dovecot-imapd)")
    # Its folder lives outside pytest's tmp_path: Dovecot's auth and login processes run as
    # other users and must be able to traverse to their files.
    root = Path(tempfile.mkdtemp(prefix="carewatch-dovecot-"))
    return Dovecot(root).start(), root


@pytest.fixture(scope="session")
def dovecot_session() -> Iterator[Dovecot]:
    """One Dovecot for the whole run (per xdist worker); tests get a user of their own on it."""
    d, root = _start_dovecot()
    yield d
    d.stop(kill=True)
    shutil.rmtree(root, ignore_errors=True)


_users = itertools.count(1)


@pytest.fixture
def dovecot(request: pytest.FixtureRequest) -> Iterator[Dovecot]:
    """An empty mailbox (INBOX and Sent, a UIDVALIDITY of its own) for this test alone.

    It is a user of the run's shared server, which saves starting and stopping one per test.
    A test that stops, restarts or kills the server is marked `private_dovecot` and gets a
    server of its own."""
    if request.node.get_closest_marker("private_dovecot"):
        d, root = _start_dovecot()
        yield d
        if d.proc is not None:
            d.stop(kill=True)  # nothing to keep: a graceful stop costs a second per test
        shutil.rmtree(root, ignore_errors=True)
        return
    shared: Dovecot = request.getfixturevalue("dovecot_session")
    view = shared.new_user(f"shared{next(_users)}-{os.getpid()}@firm.example")
    yield view
    view.remove_user()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    yield s
    s.stop()


def _pg_schema(request: pytest.FixtureRequest) -> Iterator[str]:
    if not PG_URL:
        _missing("PostgreSQL (set CAREWATCH_TEST_POSTGRES_URL)")
    from sqlalchemy import create_engine, text

    # A schema of its own per test keeps tests independent on one database.
    schema = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    eng = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.begin() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            c.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001
        _missing(f"PostgreSQL at {PG_URL} ({exc.__class__.__name__})")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'carewatch.db'}"
        return
    yield from _pg_schema(request)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """PostgreSQL only (scale-out tests)."""
    yield from _pg_schema(request)


FIRM_TOML = """\
[firm]
name = "Firm & Partners"
domains = ["firm.example"]

[calendar]
timezone = "Europe/London"
holidays = ["2025-12-25", "2025-12-26", "2026-12-25", "2026-12-28"]

[store]
url = "{db_url}"

[[mailboxes]]
name = "shared"
{mailbox}
folders = ["INBOX", "Sent"]
batch_size = {batch_size}

[notify]
dir = "{outbox}"
from_address = "carewatch@firm.example"
reply_to = "shared@firm.example"

[[owners]]
name = "Olivia Owner"
email = "olivia@firm.example"
backup = "Paul Partner"

[[owners]]
name = "Oscar Owner"
email = "oscar@firm.example"
backup = "paul@firm.example"

[[partners]]
name = "Paul Partner"
email = "paul@firm.example"

[[clients]]
name = "Acme Ltd"
domains = ["acme.example"]
owner = "olivia@firm.example"
contacts = [
  {{ name = "Alice Principal", email = "alice@acme.example", role = "principal" }},
  {{ name = "Bob User", email = "bob@acme.example", role = "user" }},
]

[[clients]]
name = "Globex"
domains = ["globex.example"]
owner = "oscar@firm.example"
contacts = [
  {{ name = "Gina Sponsor", email = "gina@globex.example", role = "principal" }},
]

[[clients]]
name = "Tax Division"
internal = true
owner = "oscar@firm.example"
contacts = [
  {{ name = "Ivan Internal", email = "ivan@firm.example", role = "principal" }},
]
"""


def write_config(
    tmp_path: Path,
    db_url: str,
    dovecot: Dovecot | None = None,
    maildir: Path | None = None,
    batch_size: int = 500,
    extra: str = "",
    mailbox_extra: str = "",
) -> Path:
    if dovecot is not None:
        mailbox = textwrap.dedent(f"""\
            kind = "imap"
            host = "127.0.0.1"
            port = {dovecot.port}
            tls = "none"
            allow_plaintext = true
            username = "{dovecot.user}"
            password_env = "CW_TEST_IMAP_PASSWORD"
            """)
        os.environ["CW_TEST_IMAP_PASSWORD"] = dovecot.password
    else:
        assert maildir is not None
        mailbox = f'kind = "maildir"\npath = "{maildir}"\n'
    p = tmp_path / "carewatch.toml"
    p.write_text(
        FIRM_TOML.format(
            db_url=db_url, mailbox=mailbox + mailbox_extra, batch_size=batch_size, outbox=tmp_path / "outbox"
        )
        + extra
    )
    return p


def set_folders(cfg_path: Path, *folders: str) -> Path:
    """Rewrite the config's `folders = [...]` line (the one mailbox of FIRM_TOML)."""
    text, n = re.subn(r"(?m)^folders = .*$", lambda _: "folders = " + json.dumps(list(folders)), cfg_path.read_text())
    assert n == 1
    cfg_path.write_text(text)
    return cfg_path


def maildir_config(tmp_path: Path, raws: list[bytes] | None = None, db_url: str | None = None) -> Path:
    """A config over a local Maildir (INBOX and Sent) holding `raws` in INBOX, on SQLite
    unless `db_url` says otherwise."""
    md = tmp_path / "md"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for k, raw in enumerate(raws or []):
        (md / "cur" / f"{k}.host:2,").write_bytes(raw)
    return write_config(tmp_path, db_url or f"sqlite:///{tmp_path / 'cw.db'}", maildir=md)
