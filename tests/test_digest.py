"""The weekly partner digest, from a generated portfolio (dozens of clients, months of mail)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import IN_CI
from test_alerts import Firm, at, london
from test_care import ALICE, OLIVIA, SHARED
from typer.testing import CliRunner

from worker.cli.main import app
from worker.config import load_config
from worker.demo import generate
from worker.digest.build import build_digest
from worker.digest.present import context, render_digest
from worker.ingest.run import prepare_store, run_scan

runner = CliRunner()
NOW = datetime(2026, 11, 16, 11, 0)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("portfolio")
    firm = generate(root / "firm", seed=11, extra_clients=24)
    cfg = load_config(firm.config)
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    return cfg, store, firm


class Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        if tag in ("script", "link", "img", "iframe", "object"):
            self.external.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "background") and v and re.match(r"^(https?:)?//", v):
                self.external.append(f"{tag} {k}={v}")
            if k == "style" and v and "url(" in v:
                self.external.append(f"{tag} style url()")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()


def test_digest_facts_equal_status_json_for_the_same_moment(portfolio) -> None:  # type: ignore[no-untyped-def]
    cfg, store, firm = portfolio
    r = runner.invoke(app, ["--config", str(firm.config), "status", "--json", "--now", NOW.isoformat() + "Z"])
    status = json.loads(r.stdout)
    helen = next(p for p in cfg.settings.partners if p.email.startswith("helen"))
    d = build_digest(store, cfg, helen, NOW)
    assert len(d.clients) == len(status["clients"]) == 36
    by_name = {c["name"]: c for c in status["clients"]}
    for row in d.clients:
        s = by_name[row.name]
        assert row.median_response_minutes == s["response_time"]["median_business_minutes"] or (
            round(row.median_response_minutes or 0, 1) == s["response_time"]["median_business_minutes"]
        )
        assert row.open_waits == s["open_waits"]
        assert row.days_since_principal == s["days_since_outbound_to_principal"]
        lapses = s["lapses"] + [lp for ct in s["contacts"] for lp in ct["lapses"]]
        assert (row.rag == "red") == any(lp["kind"] in ("unanswered", "chased", "silent") for lp in lapses)
    assert d.this_week.open_waits == sum(c["open_waits"] for c in status["clients"])
    silent_principals = sum(
        1
        for c in status["clients"]
        for ct in c["contacts"]
        if ct["role"] == "principal" and any(lp["kind"] == "silent" for lp in ct["lapses"])
    )
    assert d.this_week.silent_principals == silent_principals
    # The riskiest accounts are named with their owner and reasons.
    names = [a.name for a in d.at_risk]
    assert "Cobalt Systems" in names[:3]
    assert d.no_principal == ["Juniper Retail"]
    assert any(email.startswith("nadia.frost@") for _, email, _ in d.discovered)


def test_scope_is_respected(portfolio) -> None:  # type: ignore[no-untyped-def]
    cfg, store, _ = portfolio
    daniel = next(p for p in cfg.settings.partners if p.email.startswith("daniel"))
    d = build_digest(store, cfg, daniel, NOW)
    owners = {r.owner for r in d.clients}
    assert owners == {"marcus@harbourline.example", "tom@harbourline.example"}
    assert {o.email for o in d.owners} == owners
    assert all(a.owner in owners for a in (r for r in d.at_risk))
    assert "Evergreen Trust" not in {r.name for r in d.clients}  # Priya's client
    # Each client appears under exactly one owner.
    held = [c for o in d.owners for c in o.clients]
    assert len(held) == len(set(held)) == len(d.clients)


def test_week_over_week_deltas(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    # The week before: two replies within an hour. This week: one after three hours, one
    # still waiting past the principal's 8h.
    for day, minutes in ((3, 30), (4, 50)):
        q = f.mail.add(ALICE, [SHARED], f"Q{day}", london(2026, 11, day, 10, 0))
        f.mail.add(OLIVIA, [ALICE], f"Re: Q{day}", london(2026, 11, day, 10, minutes), reply_to=q)
    q = f.mail.add(ALICE, [SHARED], "Q10", london(2026, 11, 10, 10, 0))
    f.mail.add(OLIVIA, [ALICE], "Re: Q10", london(2026, 11, 10, 13, 0), reply_to=q)
    f.mail.add(ALICE, [SHARED], "Q11", london(2026, 11, 11, 9, 0))
    f.scan()
    paul = f.config.settings.partners[0]
    d = build_digest(f.store, f.config, paul, at(2026, 11, 12, 12, 0))
    assert d.last_week.median_response_minutes == 40 and d.last_week.responses == 2
    assert d.this_week.median_response_minutes == 180 and d.this_week.responses == 1
    assert d.last_week.within_policy_share == 1.0
    assert d.this_week.within_policy_share == 0.5  # one in time, one overdue
    assert (d.this_week.open_waits, d.last_week.open_waits) == (1, 0)
    ctx = context(d, f.config)
    median = next(x for x in ctx["figures"] if x["label"] == "Median first response")
    assert median["delta"]["text"] == "+2.3 h" and median["delta"]["good"] is False
    share = next(x for x in ctx["figures"] if x["label"] == "Answered within policy")
    assert share["delta"]["text"] == "−50 pts"
    subject, text, _ = render_digest(d, f.config)
    assert "+2.3 h" in text and "Acme Ltd" in text and "red" in subject


def test_html_is_well_formed_escaped_and_self_contained(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    extra = (
        '\n[[clients]]\nname = "<img src=x onerror=alert(1)> & Co"\ndomains = ["evil.example"]\n'
        'owner = "olivia@firm.example"\ncontacts = [{ name = "<b>Eve</b>", email = "eve@evil.example", '
        'role = "principal" }]\n'
    )
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}", extra=extra)
    f.mail.add("eve@evil.example", [SHARED], "<script>x</script>", london(2026, 11, 10, 9, 0))
    f.scan()
    _, text, html = render_digest(
        build_digest(f.store, f.config, f.config.settings.partners[0], at(2026, 11, 12, 12, 0)), f.config
    )
    c = Checker()
    c.feed(html)
    c.close()
    assert c.errors == [] and c.stack == [] and c.external == []
    # No tag got in (the parser saw no img/script at all); in text the name is escaped. (The
    # CSS inliner writes "<" literally inside quoted attribute values, where it is only text.)
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; Co" in html
    assert "<script>" not in html and "<b>Eve</b>" not in html
    assert "<img src=x onerror=alert(1)> & Co" in text  # plain text is plain


def _chromium(args: list[str]) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "the caller checks for Chromium first"
    profile = tempfile.mkdtemp(prefix="cw-chromium-")
    try:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("width", [360, 414, 600])
def test_digest_fits_a_phone_and_a_600px_column_in_chromium(portfolio, tmp_path: Path, width: int) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium not installed")
    cfg, store, _ = portfolio
    d = build_digest(store, cfg, cfg.settings.partners[0], NOW)
    _, _, html = render_digest(d, cfg)
    (tmp_path / "digest.html").write_text(html)
    # The digest inside a frame of the phone's width, measured after layout from the page
    # around it: the frame's document may not scroll sideways, and no element (the client
    # table's last column included) may end beyond its right edge.
    probe = (
        f"<iframe id=f src='digest.html' style='width:{width}px;height:3000px;border:0'></iframe>"
        "<script>document.getElementById('f').onload=function(){var d=this.contentWindow.document,w=0,who='';"
        "d.querySelectorAll('*').forEach(function(e){var r=e.getBoundingClientRect();"
        "if(r.right>w){w=r.right;who=e.tagName+':'+(e.textContent||'').slice(0,40)}});"
        "document.body.setAttribute('data-sw',d.documentElement.scrollWidth);"
        "document.body.setAttribute('data-iw',this.contentWindow.innerWidth);"
        "document.body.setAttribute('data-right',Math.ceil(w));document.body.setAttribute('data-who',who);"
        "document.title='measured'}</script>"
    )
    (tmp_path / "frame.html").write_text(f"<!DOCTYPE html><html><body style='margin:0'>{probe}</body></html>")
    r = _chromium([f"--window-size={width + 40},900", "--virtual-time-budget=5000", "--allow-file-access-from-files",
                   "--dump-dom", (tmp_path / "frame.html").as_uri()])
    sw, iw, right = (re.search(rf'data-{k}="(\d+)"', r.stdout) for k in ("sw", "iw", "right"))
    assert sw and iw and right, r.stderr[-2000:]
    who = re.search(r'data-who="([^"]*)"', r.stdout)
    assert int(iw.group(1)) == width
    assert int(sw.group(1)) <= width and int(right.group(1)) <= width, (sw.group(1), right.group(1), who)
    # Every client's RAG is in words as well as in colour.
    for c in d.clients:
        assert re.search(rf">{c.rag.capitalize()}<", html), c.rag
    shot = tmp_path / "digest.png"
    _chromium([f"--window-size={width},2400", f"--screenshot={shot}", (tmp_path / "digest.html").as_uri()])
    assert shot.exists() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digest_command_previews_and_sends_once_per_week(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.mail.add(ALICE, [SHARED], "Q", london(2026, 11, 10, 10, 0))
    env = {"CAREWATCH__NOTIFY__TRANSPORT": '"smtp"'}
    r = runner.invoke(
        app,
        ["--config", str(f.path), "digest", "--preview", str(tmp_path / "p"), "--now", "2026-11-16T07:00:00Z"],
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "paul.html").exists() and (tmp_path / "p" / "paul.txt").exists()
    for _ in range(2):
        r = runner.invoke(app, ["--config", str(f.path), "digest", "--send", "--now", "2026-11-16T07:00:00Z"], env=env)
        assert r.exit_code == 0, r.output
    assert [to for _, to, _ in smtp.messages] == [["paul@firm.example"]]
    r = runner.invoke(app, ["--config", str(f.path), "digest", "--send", "--now", "2026-11-23T07:00:00Z"], env=env)
    assert len(smtp.messages) == 2
    assert runner.invoke(app, ["--config", str(f.path), "digest"], env=env).exit_code == 2
    assert os.environ.get("CAREWATCH__NOTIFY__TRANSPORT") is None


def test_the_digest_names_the_questions_that_stopped_waiting_unanswered(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    """A question nobody answered in 30 days leaves the open waits, so the partner would never
    hear of it: the week it stops waiting, the digest lists it under "Never answered"."""
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 2, 10, 0))
    q = f.mail.add(ALICE, [SHARED], "Engagement letter", london(2026, 11, 2, 11, 0))
    f.mail.add(ALICE, [SHARED], "Re: Engagement letter", london(2026, 11, 3, 9, 0), reply_to=q, body="Any news?")
    answered = f.mail.add(ALICE, [SHARED], "Invoice", london(2026, 11, 2, 12, 0))
    f.check(at(2026, 11, 3, 12, 0))
    f.mail.add(OLIVIA, [ALICE], "Re: Invoice", london(2026, 11, 20, 9, 0), reply_to=answered, folder="Sent")
    f.check(at(2026, 11, 20, 10, 0))
    f.check(at(2026, 12, 4, 12, 0))  # the last word on both unanswered threads was 31 days ago
    paul = f.config.settings.partners[0]

    d = build_digest(f.store, f.config, paul, at(2026, 12, 4, 12, 5))
    rows = [(n.client, n.contact, n.subject, n.owner_name) for n in d.never_answered]
    # One line per thread, though the chased one had two alerts (unanswered and chased).
    assert sorted(rows) == [("Acme Ltd", "Alice Principal", "Budget 2027", "Olivia Owner"),
                            ("Acme Ltd", "Alice Principal", "Engagement letter", "Olivia Owner")]
    # The open waits fell from 2 to 0: the headline says what that fall hides.
    figure = next(x for x in context(d, f.config)["figures"] if x["label"] == "Never answered")
    assert (figure["value"], figure["before"], figure["delta"]["text"], figure["delta"]["good"]) == ("2", "0", "+2",
                                                                                                     False)
    subject, text, html = render_digest(d, f.config)
    assert "NEVER ANSWERED (no reply 30 days after the client's last word" in text
    assert '- Acme Ltd: Alice Principal, "Budget 2027" (since 02 Nov 2026, owner Olivia Owner)' in text
    assert "Never answered" in html and "\u201cEngagement letter\u201d" in html and "Invoice" not in html

    # The week after, it is old news.
    later = build_digest(f.store, f.config, paul, at(2026, 12, 12, 12, 0))
    assert later.never_answered == []
    figure = next(x for x in context(later, f.config)["figures"] if x["label"] == "Never answered")
    assert (figure["value"], figure["before"], figure["delta"]["good"]) == ("0", "2", True)
    assert "NEVER ANSWERED" not in render_digest(later, f.config)[1]


def test_every_amber_or_red_client_says_why(tmp_path: Path, smtp) -> None:  # type: ignore[no-untyped-def]
    """A client with a message still within policy is amber: the digest says that is why."""
    f = Firm(tmp_path, smtp, f"sqlite:///{tmp_path / 'cw.db'}")
    f.mail.add(ALICE, [SHARED], "Budget 2027", london(2026, 11, 16, 10, 0))
    f.scan()
    d = build_digest(f.store, f.config, f.config.settings.partners[0], at(2026, 11, 16, 12, 0))
    rows = {c["name"]: c for c in context(d, f.config)["clients"]}
    assert rows["Acme Ltd"]["rag"] == "amber"
    assert rows["Acme Ltd"]["why"] == "1 message waiting for a reply, still within policy (the longest for 2.0 h " \
                                      "of business time)"
    assert all(c["why"] for c in rows.values() if c["rag"] != "green")
    _, text, html = render_digest(d, f.config)
    assert "why: 1 message waiting for a reply, still within policy" in text and "still within policy" in html


def test_the_digest_names_its_seven_days_and_keeps_one_unit_per_column() -> None:
    from datetime import datetime as dt
    from zoneinfo import ZoneInfo

    from worker.digest.present import column_unit, in_unit, principal_words, week_days, week_span

    london = ZoneInfo("Europe/London")
    # Sent Monday 07:00: the week that ended on Sunday, seven days.
    first, last = week_days(dt(2026, 11, 16, 7, 0), london)
    assert (last - first).days == 6 and week_span(first, last) == "9–15 Nov 2026"
    assert week_span(*week_days(dt(2026, 11, 2, 7, 0), london)) == "26 Oct – 1 Nov 2026"
    assert week_span(*week_days(dt(2027, 1, 4, 7, 0), london)) == "28 Dec 2026 – 3 Jan 2027"
    # Sent late on a Friday: that Friday is the last day.
    assert week_span(*week_days(dt(2026, 11, 20, 18, 0), london)) == "14–20 Nov 2026"
    # One unit per column: 88 minutes beside 1.7 hours reads as 1.5 h beside 1.7 h.
    assert column_unit([88, 102, None]) == "h" and [in_unit(m, "h") for m in (88, 102, None)] == ["1.5", "1.7", "–"]
    assert column_unit([12, 45]) == "min" and in_unit(45, "min") == "45"
    assert principal_words(None) == "principal: never written to"
    assert principal_words(0.4) == "principal: written to today"
    assert principal_words(1.9) == "principal: 1 day since we wrote"
    assert principal_words(5) == "principal: 5 days since we wrote"


def test_the_digest_text_has_no_parenthesised_plurals(portfolio) -> None:  # type: ignore[no-untyped-def]
    cfg, store, _ = portfolio
    d = build_digest(store, cfg, cfg.settings.partners[0], NOW)
    _, text, html = render_digest(d, cfg)
    for body in (text, html):
        assert "(s)" not in body and "d ago" not in body
        assert not re.search(r"\b1 days\b|\b1 emails\b", body)
