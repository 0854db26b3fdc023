"""`carewatch explain`: why a stored message does or does not make anyone wait, after a real scan."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from conftest import maildir_config
from typer.testing import CliRunner

from worker.cli.main import app
from worker.synth import build_message

runner = CliRunner()
ALICE = ("Alice Principal", "alice@acme.example")
OLIVIA = ("Olivia Owner", "olivia@firm.example")
MON = datetime(2026, 11, 16, 9, 0)  # a Monday, 09:00 UTC (London winter time)


def _mail() -> list[bytes]:
    question = build_message(sender=ALICE, to=["shared@firm.example"], subject="Budget", date=MON,
                             message_id="<q1@acme.example>", body="Hi,\n\nCould you send the figures?\n\nAlice")
    reply = build_message(sender=OLIVIA, to=[ALICE], subject="Re: Budget", date=MON.replace(hour=11),
                          message_id="<r1@firm.example>", in_reply_to="<q1@acme.example>",
                          references=["<q1@acme.example>"], body="Attached.\n\nOlivia")
    thanks = build_message(sender=ALICE, to=[OLIVIA], subject="Re: Budget", date=MON.replace(hour=12),
                           message_id="<t1@acme.example>", in_reply_to="<r1@firm.example>",
                           references=["<q1@acme.example>", "<r1@firm.example>"],
                           body="Got it, thank you.\n\nAlice\n\nOn Mon, Olivia wrote:\n> Attached.")
    request = build_message(sender=ALICE, to=[OLIVIA], subject="Re: Budget", date=MON.replace(hour=13),
                            message_id="<p1@acme.example>", in_reply_to="<r1@firm.example>",
                            references=["<q1@acme.example>", "<r1@firm.example>"],
                            body="Thanks! Please call me today.\n\nAlice")
    ooo = build_message(sender=ALICE, to=["shared@firm.example"], subject="Automatic reply: Budget",
                        date=MON.replace(hour=14), message_id="<o1@acme.example>",
                        extra_headers={"Auto-Submitted": "auto-replied"})
    return [question, reply, thanks, request, ooo]


def explain(cfg: Path, message_id: str, *more: str) -> dict:
    r = runner.invoke(app, ["--config", str(cfg), "explain", message_id, "--json", *more])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_explain_says_why_each_message_waits_or_not_after_a_real_scan(tmp_path: Path) -> None:
    cfg = maildir_config(tmp_path, _mail())
    assert runner.invoke(app, ["--config", str(cfg), "scan"]).exit_code == 0
    now = "2026-11-17T09:00:00Z"

    q = explain(cfg, "q1@acme.example", "--now", now)  # without <>, as people paste it
    assert q["direction"] == "inbound" and q["client"] == "Acme Ltd" and not q["automated"]
    assert q["contacts"] == ["Alice Principal <alice@acme.example> (principal)"]
    assert q["effect"].startswith("answered") and q["business_minutes"] == 120.0
    assert q["thread_joined_by"].startswith("nothing")

    r = explain(cfg, "<r1@firm.example>", "--now", now)
    assert r["direction"] == "outbound" and r["answers"] == ["<q1@acme.example>"]
    assert r["business_minutes"] == 120.0 and "References" in r["thread_joined_by"]
    assert r["thread"] == q["thread"] and r["thread_messages"] == 4

    t = explain(cfg, "<t1@acme.example>", "--now", now)
    assert t["acknowledgement"] and "asks nothing" in t["acknowledgement_why"]
    assert t["effect"] == "an acknowledgement: it needs no reply"

    p = explain(cfg, "<p1@acme.example>", "--now", now)
    assert not p["acknowledgement"] and "please" in p["acknowledgement_why"]
    # Monday 13:00 to Tuesday 09:00 London: 4.5 business hours on Monday (the default day ends
    # at 17:30), none on Tuesday yet.
    assert p["effect"].startswith("waiting for a reply") and p["business_minutes"] == 270.0

    o = explain(cfg, "<o1@acme.example>", "--now", now)
    assert o["automated"] and o["automated_rule"].startswith("Auto-Submitted")
    assert o["effect"] == "automated mail: it never needs a reply"

    text = runner.invoke(app, ["--config", str(cfg), "explain", "<p1@acme.example>", "--now", now],
                         env={"COLUMNS": "200"})
    assert text.exit_code == 0 and "waiting for a reply" in text.output and "'please'" in text.output


def test_explain_of_an_unknown_message_is_a_usage_error(tmp_path: Path) -> None:
    cfg = maildir_config(tmp_path, _mail())
    r = runner.invoke(app, ["--config", str(cfg), "explain", "<nope@x>"])
    assert r.exit_code == 2 and "no stored message has the Message-ID <nope@x>" in r.output
