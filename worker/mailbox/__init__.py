"""Mailbox sources: IMAP (imapclient) and a local Maildir. Both are read-only."""

from __future__ import annotations

from ..config import MailboxConfig
from ..errors import MailboxError
from .base import FolderStatus, Item, MailboxSource, RawMessage
from .maildir import MaildirSource

__all__ = ["FolderStatus", "Item", "MailboxSource", "RawMessage", "MaildirSource", "open_source"]


def open_source(mb: MailboxConfig) -> MailboxSource:
    """Build (not yet connect) the source for a configured mailbox."""
    if mb.kind == "maildir":
        assert mb.path is not None
        return MaildirSource(mb.name, mb.path, configured=mb.folders)
    from .imap import ImapSource

    if not mb.host or not mb.username:
        raise MailboxError("host and username are required", where=f"mailbox {mb.name!r}")
    password = oauth = None
    if mb.auth == "xoauth2":
        from ..oauth import token_provider

        oauth = token_provider(mb)
    else:
        password = mb.read_password
    return ImapSource(mb.name, mb.host, mb.server_port, mb.tls, mb.username, password=password,
                      oauth_token=oauth, ca_file=mb.ca_file, timeout=mb.timeout_seconds,
                      configured=mb.folders)
