"""Evaluation: the care picture as a pure function of (stored messages, config, now).

Nothing here looks at the clock or the mailbox: `now` is given, messages sent after it are
ignored, and the output is ordered by names and times, so replaying a past moment gives the
same picture every time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from statistics import median
from typing import Any

from .. import defaults
from ..config import Config
from ..store import Store
from .clock import from_ts, to_ts
from .facts import Facts, Response, read_facts
from .picture import (
    DAY,
    WEEK,
    CarePicture,
    ClientCare,
    ContactCare,
    Lapse,
    ResponseStats,
    Wait,
    fmt_minutes,
    iso,
    p90,
    paused_gc,
    rnd,
    whole_days,
)
from .policy import Policies


def stats_of(responses: list[Response], since: float, until: float, window_days: int) -> ResponseStats:
    sel = [r for r in responses if since < r.replied_at <= until]
    st = ResponseStats(window_days=window_days, count=len(sel))
    if sel:
        biz = [r.business_minutes for r in sel]
        st.median_business_minutes = median(biz)
        st.p90_business_minutes = p90(biz)
        st.median_wall_minutes = median(r.wall_minutes for r in sel)
    return st


def _wait_order(w: tuple[int, float, bool, str, str]) -> tuple[float, int]:
    return w[1], w[0]  # since, then message pk


def evaluate(store: Store, config: Config, now: datetime, client_filter: str | None = None,
             history_days: int | None = None) -> CarePicture:
    """The care picture at `now` (naive UTC)."""
    with paused_gc():
        return _evaluate(store, config, now, client_filter, history_days)


def _evaluate(store: Store, config: Config, now: datetime, client_filter: str | None,
              history_days: int | None) -> CarePicture:
    book = Policies(config)
    return _assemble(read_facts(store, book, now, client_filter, history_days), book, now)


def _assemble(f: Facts, book: Policies, now: datetime) -> CarePicture:
    """The care picture from what was read: per client and contact, waits, statistics, lapses."""
    now_ts = to_ts(now)
    window_days = book.stats_window_days
    clients, contacts, responses, waits = f.clients, f.contacts, f.responses, f.waits
    episode_chasers, expired, last_in, last_out = f.episode_chasers, f.expired, f.last_in, f.last_out
    considered, observation_start = f.considered, f.observation_start

    # --- assemble the picture and derive lapses ---------------------------------------------
    by_client_contacts: dict[int, list[ContactCare]] = defaultdict(list)
    for ct in sorted(contacts.values(), key=lambda c: (c.client_id, c.discovered, c.email)):
        if ct.client_id not in clients:
            continue
        cl = clients[ct.client_id]
        person = ContactCare(id=ct.id or 0, email=ct.email, name=ct.name, role=ct.role, discovered=ct.discovered,
                         client=cl.name, owner=cl.owner_email,
                         last_inbound_at=from_ts(last_in[ct.id]) if ct.id in last_in else None,
                         last_outbound_at=from_ts(last_out[ct.id]) if ct.id in last_out else None)
        by_client_contacts[ct.client_id].append(person)

    out_clients: list[ClientCare] = []
    next_change: float | None = None
    obs = observation_start
    for cid, cl in sorted(clients.items(), key=lambda kv: kv[1].name.lower()):
        care = ClientCare(id=cid, name=cl.name, internal=cl.internal, owner=cl.owner_email,
                          backup=cl.backup_email, contacts=by_client_contacts.get(cid, []),
                          responses=responses.get(cid, []))  # in (replied, since) order from SQL
        care.stats = stats_of(care.responses, now_ts - window_days * DAY, now_ts, window_days)
        per_contact: dict[int, list[Response]] = defaultdict(list)
        for r in care.responses:
            per_contact[r.contact_id].append(r)
        for person in care.contacts:
            th = book.thresholds(cl.name, person.role)
            person.stats = stats_of(per_contact.get(person.id, []), now_ts - window_days * DAY, now_ts, window_days)
            reply_within = th.reply_within_minutes
            crossing = _wait_lapses(person, cl.name, waits.get(person.id, ()), episode_chasers, book, now_ts,
                                    reply_within)
            if crossing is not None:
                next_change = crossing if next_change is None else min(next_change, crossing)
            _silence_lapse(person, cl.name, th, f, now_ts)
            _going_quiet_lapse(person, cl.name, th, f, book, now_ts)
        _client_lapses(care, cl, cid, book, now, now_ts, obs)
        out_clients.append(care)
    return CarePicture(now=now, clients=out_clients, observation_start=from_ts(obs) if obs else None,
                       messages_considered=considered, expired=expired,
                       next_change=from_ts(next_change) if next_change is not None else None)


def _wait_lapses(person: ContactCare, client: str, waits: Iterable[tuple[int, float, bool, str, str]],
                 episode_chasers: dict[int, int], book: Policies, now_ts: float,
                 reply_within: float) -> float | None:
    """A contact's waits, their warnings and lapses (unanswered, chased); returns the next
    moment one of them crosses its warning or its window by time alone."""
    waited = book.calendar(client).minutes_until(now_ts)
    expected = f"a reply within {fmt_minutes(reply_within)} of business time"
    next_change: float | None = None
    for db_id, since, chased, mid, subj in sorted(waits, key=_wait_order):
        w = Wait(mid, subj, from_ts(since), waited(since), (now_ts - since) / 60, chased, person.id, db_id)
        person.waiting.append(w)
        chasers = episode_chasers.get(db_id)
        if chasers is None:
            continue  # a later message of an episode: the first one carries the lapse
        for mark in (book.warn_at * reply_within if book.warn_at else None, reply_within):
            if mark is not None and w.business_minutes < mark:
                crossing = book.calendar(client).add_minutes(since, mark)
                next_change = crossing if next_change is None else min(next_change, crossing)
                break
        biz = round(w.business_minutes, 1)
        if book.warn_at and not chasers and book.warn_at * reply_within <= w.business_minutes <= reply_within:
            due = from_ts(book.calendar(client).add_minutes(since, reply_within))
            person.due_soon.append(Lapse(
                "due_soon", f"due_soon:{person.id}:{mid}", client, person.email, w.since,
                f"{person.name} has waited {fmt_minutes(w.business_minutes)} of business time for a reply to "
                f"\u201c{subj}\u201d: {fmt_minutes(reply_within - w.business_minutes)} left", expected,
                {"message_id": mid, "subject": subj, "business_minutes": biz,
                 "reply_within_minutes": reply_within, "due_at": iso(due)}))
        if w.business_minutes > reply_within:
            person.lapses.append(Lapse(
                "unanswered", f"unanswered:{person.id}:{mid}", client, person.email, w.since,
                f"{person.name} has waited {fmt_minutes(w.business_minutes)} of business time for a reply "
                f"to \u201c{subj}\u201d", expected,
                {"message_id": mid, "subject": subj, "business_minutes": biz,
                 "reply_within_minutes": reply_within, "chasers": chasers}))
        if chasers:
            person.lapses.append(Lapse(
                "chased", f"chased:{person.id}:{mid}", client, person.email, w.since,
                f"{person.name} had to follow up {'once' if chasers == 1 else f'{chasers} times'} on "
                f"\u201c{subj}\u201d, still unanswered",
                expected, {"message_id": mid, "subject": subj, "chasers": chasers,
                           "business_minutes": biz}))
    return next_change


def _silence_lapse(person: ContactCare, client: str, th: Any, f: Facts, now_ts: float) -> None:
    """Nobody at the firm has written to the contact for longer than the role allows."""
    obs, last_out, first_seen, contacts = f.observation_start, f.last_out, f.first_seen, f.contacts
    if th.silence_after_days is not None and obs is not None:
        never = person.id not in last_out
        since_ts = last_out[person.id] if not never else max(first_seen.get(person.id, obs), obs)
        listed = contacts[person.id].first_seen_at if person.id in contacts else None
        if never and listed is not None and obs <= to_ts(listed) <= now_ts:
            # Not silent since before Carewatch knew of them (the day the client was
            # listed); a replay of a time before that counts as it always did.
            since_ts = max(since_ts, to_ts(listed))
        silent_days = (now_ts - since_ts) / DAY
        if silent_days > th.silence_after_days and not person.discovered:
            # The key of a silence never broken does not move when older mail is stored
            # (a new folder, an import): the alert is the same one until the firm writes.
            key = f"silent:{person.id}:never" if never else f"silent:{person.id}:{int(since_ts)}"
            person.lapses.append(Lapse(
                "silent", key, client, person.email, from_ts(since_ts),
                (f"nobody at the firm has written to {person.name} ({person.role}) "
                 + ("since records began" if never else f"for {whole_days(silent_days)}")),
                f"a word at least every {th.silence_after_days:.0f} days",
                {"days": round(silent_days, 1), "silence_after_days": th.silence_after_days,
                 "never": never}))


def _going_quiet_lapse(person: ContactCare, client: str, th: Any, f: Facts, book: Policies, now_ts: float) -> None:
    """The contact has been quiet much longer than their usual gap between active days."""
    last_in = f.last_in
    days = f.active_days.get(person.id, [])
    if th.going_quiet and len(days) >= book.going_quiet_min:
        gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
        usual = median(gaps)
        # Counted from their last message itself (not the UTC day it fell on), as the
        # silence is: the email's "since" and the digest's days agree to the minute.
        last_word = last_in.get(person.id, days[-1] * DAY)
        current = (now_ts - last_word) / DAY
        if current > book.going_quiet_factor * usual and current * DAY > book.going_quiet_floor_seconds:
            person.lapses.append(Lapse(
                "going_quiet", f"going_quiet:{person.id}:{days[-1]}", client, person.email, from_ts(last_word),
                f"{person.name} usually writes every {whole_days(usual, 'day')} but has been quiet for "
                f"{whole_days(current)}",
                f"regular contact (about every {whole_days(usual, 'day')})",
                {"usual_gap_days": usual, "current_gap_days": round(current, 1), "active_days": len(days)}))


def _client_lapses(care: ClientCare, cl: Any, cid: int, book: Policies, now: datetime, now_ts: float,
                   obs: float | None) -> None:
    """A client's own lapses: replies slowing down, no owner, no principal."""
    recent = [r.business_minutes for r in care.responses if now_ts - WEEK < r.replied_at <= now_ts]
    base = [r.business_minutes for r in care.responses
            if now_ts - WEEK - defaults.SLOWING_BASELINE_DAYS * DAY < r.replied_at <= now_ts - WEEK]
    if len(recent) >= defaults.SLOWING_MIN_RECENT and len(base) >= defaults.SLOWING_MIN_BASELINE:
        m_recent, m_base = median(recent), median(base)
        if m_recent > book.slowing_factor * m_base and m_recent > book.slowing_floor_minutes:
            year, week, _ = now.isocalendar()
            care.lapses.append(Lapse(
                "slowing", f"slowing:{cid}:{year}-W{week:02d}", cl.name, None, from_ts(now_ts - WEEK),
                f"replies to {cl.name} took a median {fmt_minutes(m_recent)} this week against "
                f"{fmt_minutes(m_base)} usually", f"replies near the usual {fmt_minutes(m_base)}",
                {"recent_median_minutes": rnd(m_recent), "baseline_median_minutes": rnd(m_base),
                 "recent_count": len(recent), "baseline_count": len(base)}))
    if not cl.owner_email:
        care.lapses.append(Lapse("unowned", f"unowned:{cid}:owner", cl.name, None, from_ts(obs or now_ts),
                                 f"{cl.name} has no owner: nobody is accountable for the relationship",
                                 "exactly one owner per client", {"missing": "owner"}))
    principals = [c for c in care.contacts if c.role == "principal" and not c.discovered]
    if not principals:
        care.lapses.append(Lapse("unowned", f"unowned:{cid}:principal", cl.name, None, from_ts(obs or now_ts),
                                 f"{cl.name} has no principal: nobody on the client's side is named "
                                 "accountable", "exactly one principal contact per client",
                                 {"missing": "principal"}))
