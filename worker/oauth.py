"""XOAUTH2 access tokens for hosted mailboxes (Microsoft 365 and Google Workspace no longer
accept passwords over IMAP). Tokens are cached and refreshed before they expire."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC
from typing import Any

from .config import MailboxConfig
from .errors import ConfigError, MailboxAuthError, MailboxError

log = logging.getLogger(__name__)

MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
#: Refresh this long before the token expires.
REFRESH_MARGIN_SECONDS = 300


class TokenCache:
    def __init__(self, fetch: Callable[[], tuple[str, float]]) -> None:
        self.fetch = fetch
        self.token: str | None = None
        self.expires_at = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            if self.token is None or time.time() >= self.expires_at - REFRESH_MARGIN_SECONDS:
                self.token, lifetime = self.fetch()
                self.expires_at = time.time() + lifetime
            return self.token


def microsoft_client_credentials(mb: MailboxConfig) -> tuple[str, float]:
    """Client-credentials grant for an app granted the shared mailbox (Exchange app-only access)."""
    if not mb.oauth_client_id or not (mb.oauth_tenant or mb.oauth_token_url):
        raise MailboxError("oauth_client_id and oauth_tenant are required for Microsoft 365",
                           where=f"mailbox {mb.name!r}")
    url = mb.oauth_token_url or f"https://login.microsoftonline.com/{mb.oauth_tenant}/oauth2/v2.0/token"
    secret = mb.read_oauth_client_secret()
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": mb.oauth_client_id,
                                   "client_secret": secret, "scope": MICROSOFT_SCOPE}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=mb.timeout_seconds) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        # The error body never contains our secret; it names the problem (AADSTS codes).
        raise MailboxAuthError(f"the token endpoint refused the client ({exc.code}): "
                               f"{detail}", where=f"mailbox {mb.name!r}") from None
    except (OSError, ValueError) as exc:
        raise MailboxError(f"cannot reach the token endpoint: {exc}", where=f"mailbox {mb.name!r}") from None
    if "access_token" not in doc:
        raise MailboxAuthError("the token endpoint answered without an access_token", where=f"mailbox {mb.name!r}")
    return doc["access_token"], float(doc.get("expires_in", 3600))


def google_credentials(mb: MailboxConfig) -> Any:
    """The service account's credentials, acting as the mailbox user. A key file that cannot be
    read or is not a service-account key is a configuration problem naming the file (before, a
    missing file read as "cannot create or write" and a malformed one as a traceback)."""
    try:
        from google.oauth2 import service_account
    except ImportError:
        raise MailboxError("Google Workspace XOAUTH2 needs the google-auth package: "
                           "pip install 'carewatch[google]'") from None
    key = f"mailboxes.{mb.name}.oauth_service_account_file"
    if not mb.oauth_service_account_file:
        raise ConfigError([f"{key}: required with oauth_provider = \"google\" (the service account's JSON key)"])
    path = mb.oauth_service_account_file
    try:
        return service_account.Credentials.from_service_account_file(
            str(path), scopes=[GOOGLE_SCOPE], subject=mb.username)
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror}"]) from None
    except (ValueError, KeyError) as exc:  # not JSON, or JSON without client_email/private_key
        raise ConfigError([f"{key}: {path} is not a service account's JSON key (from the Google Cloud "
                           f"console, Service accounts, Keys): {type(exc).__name__}: {exc}"]) from None


def google_service_account(mb: MailboxConfig) -> tuple[str, float]:
    """A service account with domain-wide delegation, acting as the mailbox user."""
    from google.auth import exceptions
    from google.auth.transport.requests import Request

    creds = google_credentials(mb)
    try:
        creds.refresh(Request())
    except exceptions.RefreshError as exc:
        # e.g. "unauthorized_client: Client is unauthorized to retrieve access tokens using this
        # method": the service account has no domain-wide delegation for the mail scope.
        said = exc.args[0] if exc.args else str(exc)
        raise MailboxAuthError(f"Google refused a token for {mb.username!r} ({said}); "
                               f"grant the service account domain-wide delegation for {GOOGLE_SCOPE} "
                               "in the Workspace admin console", where=f"mailbox {mb.name!r}") from None
    except exceptions.TransportError as exc:
        raise MailboxError(f"cannot reach Google's token endpoint: {exc}", where=f"mailbox {mb.name!r}") from None
    lifetime = (creds.expiry.replace(tzinfo=UTC).timestamp() - time.time()) if creds.expiry else 3600.0
    return creds.token, lifetime


def check_oauth_secrets(mb: MailboxConfig) -> None:
    """Raise ConfigError if the mailbox's XOAUTH2 credentials cannot be read (no token is asked for)."""
    if mb.oauth_provider == "google":
        google_credentials(mb)
    else:
        mb.read_oauth_client_secret()


def token_provider(mb: MailboxConfig) -> Callable[[], str]:
    if mb.oauth_provider == "google":
        return TokenCache(lambda: google_service_account(mb))
    return TokenCache(lambda: microsoft_client_credentials(mb))
