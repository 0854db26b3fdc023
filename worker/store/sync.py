"""Sync the config's clients, contacts, owners and partners into the store.

The config is the source of truth. Rows are never deleted (messages refer to them); a client or
contact removed from the config is marked inactive. Discovered contacts (seen at a client's
domain, not in the config) are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

from sqlmodel import select

from ..config import Config
from ..ingest.classify import ContactRef, Directory
from .db import Store
from .models import Client, Contact, Meta, Person

log = logging.getLogger(__name__)


def classification_fingerprint(config: Config) -> str:
    """What classification depends on: when it changes, stored messages are classified again."""
    s = config.settings
    doc = {
        "firm": [sorted(s.firm.domains), sorted(a.lower() for a in s.firm.addresses)],
        "clients": [[c.name, c.internal, sorted(c.domains), sorted((ct.email, ct.role) for ct in c.contacts)]
                    for c in s.clients],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def directory_fingerprint(config: Config) -> str:
    """Everything the sync writes: when unchanged, the sync has nothing to do."""
    s = config.settings
    doc = {"owners": [o.model_dump() for o in s.owners], "partners": [p.model_dump() for p in s.partners],
           "clients": [c.model_dump(mode="json", include={"name", "internal", "domains", "owner", "backup",
                                                          "contacts"}) for c in s.clients]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def sync_directory(store: Store, config: Config) -> bool:
    """Write the config's directory into the store. Returns True when who-is-who changed (so
    stored messages should be classified again)."""
    s = config.settings
    sync_fp = directory_fingerprint(config)
    with store.session() as db:
        done = db.get(Meta, "directory_synced")
        if done is not None and done.value == sync_fp:
            return False
        people = {p.email: p for p in db.exec(select(Person)).all()}
        wanted: dict[str, Person] = {}
        for o in s.owners:
            p = people.get(o.email) or Person(email=o.email, name=o.name)
            p.name, p.is_owner, p.active = o.name, True, True
            p.backup_email = s.find_person(o.backup)
            wanted[o.email] = p
        for pa in s.partners:
            p = wanted.get(pa.email) or people.get(pa.email) or Person(email=pa.email, name=pa.name)
            if pa.email not in wanted:
                p.is_owner = False
            p.name, p.is_partner, p.active = pa.name, True, True
            wanted[pa.email] = p
        for email, p in people.items():
            if email not in wanted:
                p.active = p.is_owner = p.is_partner = False
                db.add(p)
        for p in wanted.values():
            db.add(p)

        clients = {c.name: c for c in db.exec(select(Client)).all()}
        seen_clients: set[str] = set()
        for client_cfg in s.clients:
            c = clients.get(client_cfg.name) or Client(name=client_cfg.name)
            c.internal = client_cfg.internal
            c.domains = " ".join(client_cfg.domains)
            c.owner_email = s.find_person(client_cfg.owner)
            c.backup_email = s.find_person(client_cfg.backup)
            c.active = True
            db.add(c)
            clients[client_cfg.name] = c
            seen_clients.add(client_cfg.name)
        for name, c in clients.items():
            if name not in seen_clients and c.active:
                c.active = False
                db.add(c)
        db.flush()

        contacts = {c.email: c for c in db.exec(select(Contact)).all()}
        listed: set[str] = set()
        for client_cfg in s.clients:
            client_id = clients[client_cfg.name].id
            assert client_id is not None
            for ct in client_cfg.contacts:
                contact = contacts.get(ct.email) or Contact(email=ct.email, client_id=client_id)
                if contact.first_seen_at is None:
                    # When Carewatch first heard of this person: a silence never broken is not
                    # counted from before the client was listed (care/evaluate.py).
                    contact.first_seen_at = datetime.now(UTC).replace(tzinfo=None)
                contact.name, contact.role, contact.client_id = ct.name, ct.role, client_id
                contact.discovered, contact.active = False, True
                db.add(contact)
                listed.add(ct.email)
        for email, contact in contacts.items():
            if email not in listed and not contact.discovered and contact.active:
                contact.active = False
                db.add(contact)

        fp = classification_fingerprint(config)
        meta = db.get(Meta, "directory_fingerprint")
        changed = meta is None or meta.value != fp
        for key, value in (("directory_fingerprint", fp), ("directory_synced", sync_fp)):
            row = db.get(Meta, key) or Meta(key=key, value=value)
            row.value = value
            db.add(row)
        db.commit()
    if changed:
        log.info("directory synced: %d clients, %d contacts listed", len(s.clients), len(listed))
    return changed


def load_directory(store: Store, config: Config) -> Directory:
    """Build the classification directory from the store (config contacts + discovered ones)."""
    s = config.settings
    with store.session() as db:
        clients = {c.id: c for c in db.exec(select(Client).where(Client.active == True)).all()}  # noqa: E712
        domain_clients: dict[str, int] = {}
        for c in clients.values():
            if c.internal or c.id is None:
                continue
            for d in c.domains.split():
                domain_clients[d] = c.id
        contacts: dict[str, ContactRef] = {}
        # Plain rows, not ORM objects: ten thousand contacts load in a tenth of the time.
        for ct_id, email, client_id, role in db.execute(
                select(Contact.id, Contact.email, Contact.client_id, Contact.role)
                .where(Contact.active == True)).all():  # noqa: E712
            if client_id in clients and ct_id is not None:
                contacts[email] = ContactRef(ct_id, client_id, role)
    return Directory(
        firm_domains=frozenset(s.firm.domains),
        firm_addresses=frozenset(a.lower() for a in s.firm.addresses),
        contacts=contacts, domain_clients=domain_clients,
    )
