"""bench/bounces.py scores the reader against labels and a recorded baseline: run on a tiny
corpus of its own (no fetch), the figures it prints are the ones the labels imply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "bounces.py"

REPORT = """\
From: MAILER-DAEMON@mx.example.net
To: bounces+{n}@newsroom.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Not delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {address}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {reply}

--B--
"""

AUTOREPLY = """\
From: reader@example.net
To: news@newsroom.example.org
Subject: Out of office

I am away until Monday.
"""


def corpus(tmp_path: Path) -> list[str]:
    """--corpus arguments for three folders of its own (one empty): nothing is fetched."""
    parser, flufl, ruby = tmp_path / "bounceparser", tmp_path / "flufl", tmp_path / "ruby"
    for folder in (parser, flufl, ruby):
        folder.mkdir()
    (parser / "gmail-disabled.msg").write_text(REPORT.format(
        n=1, address="gone@gmail.example", status="5.2.1",
        reply="550 5.2.1 The email account that you tried to reach is disabled"))
    (parser / "unknown.msg").write_text(REPORT.format(
        n=2, address="nobody@example.net", status="5.1.1", reply="550 5.1.1 User unknown"))
    (flufl / "autoreply.txt").write_text(AUTOREPLY)
    return ["--corpus", f"bounceparser={parser}", "--corpus", f"flufl={flufl}",
            "--corpus", f"bounce_email={ruby}"]


def run(tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *corpus(tmp_path),
         "--labels", str(tmp_path / "labels.tsv"),
         "--baseline", str(tmp_path / "baseline.tsv"), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_the_bounce_bench_counts_right_recipients_wrong_hards_and_the_baseline(tmp_path):
    (tmp_path / "labels.tsv").write_text(
        "# message\trecipient\tclass\tnote\n"
        "bounceparser/gmail-disabled.msg\tgone@gmail.example\tsoft\t\n"
        "bounceparser/unknown.msg\tnobody@example.net\thard\t\n"
        "flufl/autoreply.txt\t-\tnone\tan autoreply\n")
    # A recorded reading that called the disabled account hard and missed the other.
    (tmp_path / "baseline.tsv").write_text(
        "bounceparser/gmail-disabled.msg\tgone@gmail.example\thard\n"
        "bounceparser/unknown.msg\t-\tnone\n"
        "flufl/autoreply.txt\t-\tnone\n")
    out = run(tmp_path)
    assert ("messages: 3 (bounceparser 2, flufl 1, bounce_email 0); real bounces naming a "
            "recipient: 2") in out
    assert ("before (baseline.tsv): read with the right recipient 1 of 2 bounces (50.0 %); "
            "wrongly hard 1; hard found 0 of 1") in out
    assert "wrongly hard: bounceparser/gmail-disabled.msg: gone@gmail.example (label: soft)" in out
    assert ("now: read with the right recipient 2 of 2 bounces (100.0 %); wrongly hard 0; "
            "hard found 1 of 1 (100.0 %); non-bounces read as failures 0 of 1") in out


def test_the_bounce_bench_refuses_a_corpus_its_labels_do_not_cover(tmp_path):
    (tmp_path / "labels.tsv").write_text("bounceparser/unknown.msg\tnobody@example.net\thard\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *corpus(tmp_path),
         "--labels", str(tmp_path / "labels.tsv")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "2 messages without a label" in proc.stderr and "--fetch" in proc.stderr


def test_recording_a_baseline_writes_the_current_reading(tmp_path):
    (tmp_path / "labels.tsv").write_text(
        "bounceparser/gmail-disabled.msg\tgone@gmail.example\tsoft\t\n"
        "bounceparser/unknown.msg\tnobody@example.net\thard\t\n"
        "flufl/autoreply.txt\t-\tnone\t\n")
    run(tmp_path, "--record-baseline")
    recorded = (tmp_path / "baseline.tsv").read_text()
    assert "bounceparser/gmail-disabled.msg\tgone@gmail.example\tsoft" in recorded
    assert "bounceparser/unknown.msg\tnobody@example.net\thard" in recorded
    assert "flufl/autoreply.txt\t-\tnone" in recorded
