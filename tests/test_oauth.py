"""XOAUTH2 for hosted mailboxes: Microsoft's client-credentials flow and Google's service
account (a JWT signed with the account's key, google-auth) against a local token endpoint
(the one thing that cannot run here), and a real Dovecot that accepts the token only after
asking that endpoint whether it is valid (Dovecot's OAuth2 introspection)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import _missing
from servers import Dovecot, dovecot_available
from typer.testing import CliRunner

from worker.cli.main import app
from worker.config import validate_data
from worker.config.connect import check_mailbox
from worker.errors import MailboxAuthError
from worker.mailbox import open_source
from worker.oauth import GOOGLE_SCOPE, MICROSOFT_SCOPE
from worker.synth import build_message

UNAUTHORIZED_CLIENT = {"error": "unauthorized_client",
                       "error_description": "Client is unauthorized to retrieve access tokens using this method, "
                                            "or client not authorized for any of the scopes requested."}


class TokenEndpoint:
    """Plays login.microsoftonline.com (/token), Google's oauth2.googleapis.com (/google-token:
    checks the JWT's signature against the service account's public key, then whether the
    account may act for its subject) and the mail server's introspection endpoint."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.requests: list[dict[str, list[str]]] = []
        self.google_public_pem: bytes = b""
        self.google_delegated: set[str] = set()  # the users domain-wide delegation covers
        self.google_claims: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = urllib.parse.parse_qs(body)
                if self.path.startswith("/google-token"):
                    from google.auth import jwt

                    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                    claims = jwt.decode(form["assertion"][0], certs=outer.google_public_pem,
                                        audience="https://oauth2.googleapis.com/token")
                    outer.google_claims.append(claims)
                    if claims["sub"] not in outer.google_delegated or claims.get("scope") != GOOGLE_SCOPE:
                        self._json(401, UNAUTHORIZED_CLIENT)
                        return
                    tok = f"gtok{len(outer.issued)}"
                    outer.issued.append(tok)
                    self._json(200, {"access_token": tok, "expires_in": 3599, "token_type": "Bearer"})
                elif self.path.startswith("/token"):
                    outer.requests.append(form)
                    if form.get("client_secret") != ["app-secret"] or form.get("scope") != [MICROSOFT_SCOPE]:
                        self._json(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})
                        return
                    tok = f"tok{len(outer.issued)}"
                    outer.issued.append(tok)
                    self._json(200, {"access_token": tok, "expires_in": 3599, "token_type": "Bearer"})
                else:  # Dovecot's introspection: is this token active, and whose?
                    token = (form.get("token") or [""])[0]
                    auth = self.headers.get("Authorization", "")
                    token = token or auth.removeprefix("Bearer ")
                    active = token in outer.issued
                    self._json(200, {"active": "true" if active else "false", "username": "shared@firm.example"})

            def _json(self, code: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def oauth_dovecot() -> Iterator[tuple[Dovecot, TokenEndpoint]]:
    if not dovecot_available():
        _missing("Dovecot")
    ep = TokenEndpoint()
    root = Path(tempfile.mkdtemp(prefix="carewatch-dovecot-"))
    d = Dovecot(root, oauth_token_url=f"{ep.url}/introspect").start()
    yield d, ep
    d.stop()
    ep.stop()
    shutil.rmtree(root, ignore_errors=True)


def mailbox(d: Dovecot, ep: TokenEndpoint, secret_env: str = "CW_APP_SECRET") -> object:
    cfg = validate_data(
        {
            "firm": {"domains": ["firm.example"]},
            "mailboxes": [
                {
                    "name": "m365",
                    "host": "127.0.0.1",
                    "port": d.port,
                    "tls": "none",
                    "allow_plaintext": True,
                    "username": d.user,
                    "auth": "xoauth2",
                    "oauth_provider": "microsoft",
                    "oauth_tenant": "contoso",
                    "oauth_client_id": "app-id",
                    "oauth_client_secret_env": secret_env,
                    "oauth_token_url": f"{ep.url}/token",
                    "folders": ["INBOX"],
                }
            ],
        },
        None,
        {"CW_APP_SECRET": "app-secret", "CW_WRONG": "nope"},
    )
    return cfg.settings.mailboxes[0]


def test_xoauth2_login_with_a_client_credentials_token(
    oauth_dovecot: tuple[Dovecot, TokenEndpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, ep = oauth_dovecot
    d.append([build_message(sender="alice@acme.example", to=[d.user], subject="hi", date=datetime.now(UTC))])
    monkeypatch.setenv("CW_APP_SECRET", "app-secret")
    mb = mailbox(d, ep)
    src = open_source(mb)  # type: ignore[arg-type]
    with src:
        assert src.folder_status("INBOX").messages == 1
    with src:  # a second connection reuses the cached token (refreshed only near expiry)
        pass
    assert ep.issued == ["tok0"]
    req = ep.requests[0]
    assert req["grant_type"] == ["client_credentials"] and req["client_id"] == ["app-id"]


def test_a_refused_client_secret_is_a_clear_auth_error(
    oauth_dovecot: tuple[Dovecot, TokenEndpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, ep = oauth_dovecot
    monkeypatch.setenv("CW_WRONG", "not-the-secret")
    mb = mailbox(d, ep, secret_env="CW_WRONG")
    with pytest.raises(MailboxAuthError) as ei, open_source(mb):  # type: ignore[arg-type]
        pass
    assert "AADSTS7000215" in str(ei.value) and "not-the-secret" not in str(ei.value)


def service_account_key(tmp_path: Path, ep: TokenEndpoint) -> Path:
    """A service account's JSON key as the Google Cloud console gives it, with a fresh RSA key
    and the local endpoint as its token_uri."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ep.google_public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    p = tmp_path / "google.json"
    p.write_text(json.dumps({
        "type": "service_account", "project_id": "firm-mail", "private_key_id": "k1", "private_key": pem,
        "client_email": "carewatch@firm-mail.iam.gserviceaccount.com", "client_id": "1234567890",
        "token_uri": f"{ep.url}/google-token"}))
    return p


def google_mailbox(d: Dovecot, key_file: Path) -> Any:
    cfg = validate_data({"firm": {"domains": ["firm.example"]}, "mailboxes": [{
        "name": "workspace", "host": "127.0.0.1", "port": d.port, "tls": "none", "allow_plaintext": True,
        "username": d.user, "auth": "xoauth2", "oauth_provider": "google",
        "oauth_service_account_file": str(key_file), "folders": ["INBOX"]}]}, None, {})
    return cfg.settings.mailboxes[0]


@pytest.fixture
def east_of_utc() -> Iterator[None]:
    """The process's local time zone is Tokyo (UTC+9) for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_xoauth2_with_a_google_service_account_acting_for_the_mailbox(
    oauth_dovecot: tuple[Dovecot, TokenEndpoint], tmp_path: Path, east_of_utc: None
) -> None:
    """google-auth gives a token's expiry as a naive UTC time. Read as local time east of UTC,
    a fresh token looked expired, and was fetched again for every connection."""
    d, ep = oauth_dovecot
    d.append([build_message(sender="alice@acme.example", to=[d.user], subject="hi", date=datetime.now(UTC))])
    ep.google_delegated.add(d.user)
    mb = google_mailbox(d, service_account_key(tmp_path, ep))
    src = open_source(mb)
    with src:
        assert src.folder_status("INBOX").messages == 1
    with src:  # the token is cached: its lifetime was read right whatever the local time zone
        pass
    assert ep.issued == ["gtok0"]
    check = check_mailbox(mb)  # validate --connect: its own connection and token
    assert check.ok and f"logged in as {d.user!r} with XOAUTH2" in check.lines and "INBOX: 1 message(s)" in check.lines
    claims = ep.google_claims[0]  # the signature was checked against the account's public key
    assert claims["sub"] == d.user and claims["scope"] == GOOGLE_SCOPE
    assert claims["iss"] == "carewatch@firm-mail.iam.gserviceaccount.com"


def test_google_without_domain_wide_delegation_says_what_to_grant(
    oauth_dovecot: tuple[Dovecot, TokenEndpoint], tmp_path: Path
) -> None:
    d, ep = oauth_dovecot
    mb = google_mailbox(d, service_account_key(tmp_path, ep))
    with pytest.raises(MailboxAuthError) as ei, open_source(mb):
        pass
    msg = str(ei.value)
    assert "unauthorized_client" in msg and "domain-wide delegation" in msg and GOOGLE_SCOPE in msg
    assert "PRIVATE KEY" not in msg


def test_check_secrets_reads_the_xoauth2_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing or malformed service account key and an unset client secret are configuration
    problems naming the key, all in one run, before any server is asked."""
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"type": "service_account"}')
    monkeypatch.delenv("CW_UNSET_SECRET", raising=False)
    common = 'host = "imap.example"\nusername = "shared@firm.example"\nauth = "xoauth2"\n'
    cfg = tmp_path / "carewatch.toml"
    cfg.write_text(
        '[firm]\ndomains = ["firm.example"]\n'
        f'[[mailboxes]]\nname = "missing"\n{common}oauth_provider = "google"\n'
        f'oauth_service_account_file = "{tmp_path / "nope.json"}"\n'
        f'[[mailboxes]]\nname = "malformed"\n{common}oauth_provider = "google"\n'
        f'oauth_service_account_file = "{bad_json}"\n'
        f'[[mailboxes]]\nname = "m365"\n{common}oauth_provider = "microsoft"\noauth_tenant = "contoso"\n'
        'oauth_client_id = "app"\noauth_client_secret_env = "CW_UNSET_SECRET"\n')
    r = CliRunner().invoke(app, ["--config", str(cfg), "validate", "--check-secrets"])
    out = " ".join(r.output.split())
    assert r.exit_code == 3, r.output
    assert f"mailboxes.missing.oauth_service_account_file: cannot read {tmp_path / 'nope.json'}: " \
           "No such file or directory" in out
    assert f"mailboxes.malformed.oauth_service_account_file: {bad_json} is not a service account's JSON key" in out
    assert "mailboxes.m365.oauth_client_secret: environment variable CW_UNSET_SECRET is not set" in out
    assert "Traceback" not in out
