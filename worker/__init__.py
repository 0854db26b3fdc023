"""Carewatch: measures client care in a firm's shared mailboxes and tells the accountable owner."""

__version__ = "0.1.0"
