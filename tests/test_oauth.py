"""XOAUTH2 for hosted mailboxes: Microsoft's client-credentials flow against a local token
endpoint (the one thing that cannot run here), and a real Dovecot that accepts the token only
after asking that endpoint whether it is valid (Dovecot's OAuth2 introspection)."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import _missing
from servers import Dovecot, dovecot_available

from worker.config import validate_data
from worker.errors import MailboxAuthError
from worker.mailbox import open_source
from worker.oauth import MICROSOFT_SCOPE
from worker.synth import build_message


class TokenEndpoint:
    """Plays login.microsoftonline.com (token) and the mail server's introspection endpoint."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.requests: list[dict[str, list[str]]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = urllib.parse.parse_qs(body)
                if self.path.startswith("/token"):
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
