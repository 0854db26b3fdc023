"""Classifying stored mail again when the directory or the automated-mail rules change."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlmodel import col

from ..store.db import Store
from ..store.locks import lock_for_storing
from ..store.models import (
    Message,
    MessageContact,
    columns,
)
from ..store.sql import sql_in_list
from ..store.threads import finish_threads, link_contacts, refresh_replies
from .classify import SENDER_SUBJECT_RULES, Directory, automated_reason, classify
from .headers import ParsedMessage

log = logging.getLogger(__name__)


def reclassify_automation(store: Store, chunk: int = 5000) -> int:
    """Judge stored messages again by the automated-mail rules that need only what is stored
    (the sender's address and the subject), after those rules changed. A message known as
    automated by a header (Auto-Submitted, List-Id, a bounce report...) stays so: its headers
    are not stored. Acknowledgements cannot be judged again: bodies are never stored.
    Returns how many messages changed."""
    changed = 0
    last_id = 0
    while True:
        with store.session() as db:
            lock_for_storing(store, db.connection())
            rows = db.execute(
                select(*columns(Message.id, Message.from_addr, Message.subject, Message.automated,
                                Message.automated_reason, Message.thread_id))
                .where(col(Message.id) > last_id).order_by(col(Message.id)).limit(chunk)).all()
            if not rows:
                return changed
            threads: set[int] = set()
            for r in rows:
                if r.automated and r.automated_reason not in SENDER_SUBJECT_RULES:
                    continue
                pm = ParsedMessage(
                    message_id="", synthetic_id=False, in_reply_to=None, references=[], subject=r.subject,
                    from_addr=r.from_addr, from_name="", to=[], cc=[], date_header=None, internal_date=None,
                    sent_at=datetime.min)
                reason = automated_reason(pm)
                if (reason is not None) != bool(r.automated) or (reason and reason != r.automated_reason):
                    db.execute(update(Message).where(Message.id == r.id).values(
                        automated=reason is not None, automated_reason=reason))
                    changed += 1
                    if r.thread_id is not None:
                        threads.add(r.thread_id)
            if threads:
                refresh_replies(db.connection(), threads, merged=threads)
            db.commit()
            last_id = rows[-1].id


def reclassify(store: Store, directory: Directory, chunk: int = 5000) -> int:
    """Classify stored messages again after who-is-who changed in the config. Returns changed.

    A message that now has a client is threaded by subject as ingest would have threaded it
    (which needs a client): a refs-less reply to a client listed only now joins the question
    it answered, whichever of the two comes first here. Each chunk is stored alone, as a
    scan's batch is (lock_for_storing), so a scan running meanwhile sees it whole."""
    changed = 0
    last_id = 0
    while True:
        with store.session() as db:
            lock_for_storing(store, db.connection())
            relink: list[dict[str, Any]] = []
            gained: list[int] = []  # messages that now have a client: to thread by subject
            threads: set[int] = set()
            rows = db.execute(
                select(*columns(Message.id, Message.message_id, Message.from_addr, Message.from_name,
                                Message.to_addrs, Message.cc_addrs, Message.direction, Message.client_id,
                                Message.contact_ids, Message.automated, Message.sent_at, Message.thread_id))
                .where(col(Message.id) > last_id).order_by(col(Message.id)).limit(chunk)
            ).all()
            if not rows:
                return changed
            for r in rows:
                pm = ParsedMessage(
                    message_id="", synthetic_id=False, in_reply_to=None, references=[], subject="",
                    from_addr=r.from_addr, from_name=r.from_name,
                    to=[a for a in r.to_addrs.split(",") if a], cc=[a for a in r.cc_addrs.split(",") if a],
                    date_header=None, internal_date=None, sent_at=datetime.min)
                cl = classify(pm, directory)
                ids = ",".join(map(str, cl.contact_ids))
                if (cl.direction, cl.client_id, ids) != (r.direction, r.client_id, r.contact_ids):
                    db.execute(update(Message).where(Message.id == r.id).values(
                        direction=cl.direction, client_id=cl.client_id, contact_ids=ids,
                        firm_in_to=cl.firm_in_to, firm_in_cc=cl.firm_in_cc))
                    db.execute(delete(MessageContact).where(MessageContact.message_pk == r.id))
                    relink.append({"message_id": r.message_id, "contact_ids": ids, "direction": cl.direction,
                                   "automated": r.automated, "sent_at": r.sent_at})
                    if r.thread_id is not None:
                        threads.add(r.thread_id)
                        if cl.client_id is not None and cl.client_id != r.client_id:
                            gained.append(r.id)
                    changed += 1
            link_contacts(db.connection(), relink)
            if gained:
                # Their threading columns (References can run to kilobytes) are read for them
                # only, as updated above.
                cond, ids_param = sql_in_list(store.dialect, "id", "BIGINT")
                rethread = db.execute(select(*columns(
                    Message.message_id, Message.client_id, Message.contact_ids, Message.thread_id, Message.sent_at,
                    Message.norm_subject, Message.subject, Message.in_reply_to, Message.references))
                    .where(text(cond).bindparams(ids_param)), {"ids": gained}).mappings().all()
                threads |= finish_threads(db.connection(), [dict(r) for r in rethread])
            # Directions and contacts changed: the replies and answered episodes of these
            # threads may have too: only these are recomputed, as a client spread over the whole
            # history would otherwise cost every thread of the store once per chunk.
            if threads:
                refresh_replies(db.connection(), threads, merged=threads)
            db.commit()
            last_id = rows[-1].id
