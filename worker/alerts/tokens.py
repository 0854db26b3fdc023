"""The signed references in alert emails ([cw:...]): the secret that signs them (from the
environment, or kept in the store) and the references themselves."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from sqlmodel import Session

from ..errors import ConfigError
from ..store import Store
from ..store.models import Meta, table_of

#: Replies to an alert email are accepted for this long after it was sent.
TOKEN_VALID_DAYS = 30


# --- tokens --------------------------------------------------------------------------------------
def token_secret(store: Store, db: Session, env_name: str | None = None) -> bytes:
    """The secret that signs the references in alert emails. From the environment variable
    `notify.token_secret_env` names, when set (never written anywhere); otherwise a
    per-deployment secret kept in the store (shared by replicas), made on first use."""
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise ConfigError([f"notify.token_secret_env: the environment variable {env_name} is not set or empty"])
        return hashlib.sha256(value.encode()).digest()
    return bytes.fromhex(_stored_secret(store, db))


def _stored_secret(store: Store, db: Session) -> str:
    """The stored secret (hex), made on first use (in the caller's transaction)."""
    row = db.get(Meta, "token_secret")
    if row is None:
        store.insert_ignore(db, table_of(Meta), [{"key": "token_secret", "value": secrets.token_hex(32)}], ["key"])
        db.flush()
        row = db.get(Meta, "token_secret")
    assert row is not None
    return row.value


def ensure_token_secret(store: Store) -> None:
    """Make the stored secret, in a transaction of its own, before a check begins: a dry run
    (rolled back) must sign with the secret the real send will use."""
    with store.session() as db:
        _stored_secret(store, db)
        db.commit()


def make_token(secret: bytes, message_id: str) -> str:
    return hmac.new(secret, message_id.encode(), hashlib.sha256).hexdigest()[:20]
