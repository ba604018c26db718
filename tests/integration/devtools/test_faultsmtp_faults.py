"""The faulty SMTP server's campaign faults, driven by the standard library's smtplib client."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from digest.devtools.faultsmtp import FaultPlan, FaultySMTPServer, read_events
from digest.errors import ValidationError


def message(delivery: int, size: int = 0) -> bytes:
    body = (b"x" * 76 + b"\r\n") * (max(0, size) // 78)  # lines within RFC 5321's 1000
    return (f"From: a@example.org\r\nTo: r{delivery}@example.org\r\n"
            f"Message-ID: <m{delivery}@example.org>\r\nX-Digest-Delivery: {delivery}\r\n"
            f"Subject: hi\r\n\r\n").encode() + body + b"\r\n"


@pytest.fixture
def server(tmp_path):
    # No random faults: only the window under test plays.
    with FaultySMTPServer(tmp_path / "events.jsonl", FaultPlan(1, 0.0, 0.0, 0.0)) as running:
        yield running


def accepted(server: FaultySMTPServer) -> list[dict]:
    server.flush()
    return [e for e in read_events(server.record) if e["event"] == "accepted"]


def test_size_limit_is_announced_in_ehlo_and_a_larger_message_gets_552_5_3_4(server):
    server.set_size_limit(30 * 1024)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.ehlo()
        assert conn.esmtp_features["size"] == str(30 * 1024)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # SIZE= at MAIL FROM
            conn.sendmail("a@example.org", ["r1@example.org"], message(1, 55 * 1024))
        assert refused.value.smtp_code == 552
        assert refused.value.smtp_error.startswith(b"5.3.4")
        conn.rset()
        conn.sendmail("a@example.org", ["r2@example.org"], message(2, 1024))
    assert [e["delivery"] for e in accepted(server)] == [2]
    assert any(e["event"] == "size-refused" for e in read_events(server.record))


def test_a_message_over_the_limit_without_size_parameter_is_refused_at_the_final_dot(server):
    server.set_size_limit(30 * 1024)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.ehlo()
        conn.mail("a@example.org")  # no SIZE= parameter
        conn.rcpt("r1@example.org")
        code, reply = conn.data(message(1, 55 * 1024))
    assert (code, reply[:5]) == (552, b"5.3.4")
    assert accepted(server) == []


def test_no_size_limit_announces_the_usual_size_and_takes_a_large_message(server):
    server.set_size_limit(0)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.sendmail("a@example.org", ["r1@example.org"], message(1, 55 * 1024))
    assert [e["delivery"] for e in accepted(server)] == [1]


def test_late_250_is_recorded_at_once_and_answered_after_the_delay(server):
    server.late_250(10, 0.6, 0.6)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.ehlo()
        conn.mail("a@example.org")
        conn.rcpt("r1@example.org")
        started = time.monotonic()
        code, _ = conn.data(message(1))
        waited = time.monotonic() - started
    assert code == 250 and waited >= 0.55
    [event] = accepted(server)
    assert event["late"] == 0.6


def test_a_client_that_gives_up_on_a_late_250_leaves_an_accepted_message(server):
    server.late_250(10, 3, 3)
    conn = smtplib.SMTP(server.host, server.port, timeout=0.5)
    conn.ehlo()
    conn.mail("a@example.org")
    conn.rcpt("r1@example.org")
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected, socket.timeout)):
        conn.data(message(1))
    conn.close()
    # The server took it although the client never heard the 250: resending duplicates it.
    assert [e["delivery"] for e in accepted(server)] == [1]


def test_reset_after_250_delivers_the_message_and_resets_the_next_command(server):
    server.reset_after_250(10)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.sendmail("a@example.org", ["r1@example.org"], message(1))
        time.sleep(0.3)
        with pytest.raises((ConnectionResetError, smtplib.SMTPServerDisconnected)):
            conn.sendmail("a@example.org", ["r2@example.org"], message(2))
    assert [e["delivery"] for e in accepted(server)] == [1]
    assert accepted(server)[0]["reset"] is True


def test_stall_data_stops_reading_after_354_until_the_window_ends(server):
    server.stall_data(1.0)
    with smtplib.SMTP(server.host, server.port, timeout=5) as conn:
        conn.ehlo()
        conn.mail("a@example.org")
        conn.rcpt("r1@example.org")
        started = time.monotonic()
        code, _ = conn.data(message(1))
        waited = time.monotonic() - started
    assert code == 250 and waited >= 0.8
    events = read_events(server.record)
    assert any(e["event"] == "stall-data" for e in events)


def test_a_stalled_message_whose_final_dot_was_sent_is_taken_even_if_the_client_gave_up(server):
    # As a real MTA does: the whole message waited in the socket buffer, the server reads it
    # (final dot included) when the stall ends and queues it; the client never hears the 250.
    server.stall_data(2.0)
    conn = smtplib.SMTP(server.host, server.port, timeout=0.5)
    conn.ehlo()
    conn.mail("a@example.org")
    conn.rcpt("r1@example.org")
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected, socket.timeout)):
        conn.data(message(1))
    conn.close()
    time.sleep(2.3)
    assert [e["delivery"] for e in accepted(server)] == [1]


def test_control_lines_drive_the_windows_and_a_bad_line_says_what_to_send(server):
    assert server.command("size 30720") == "ok size" and server.size_limit == 30720
    assert server.command("late-250 45 60 120") == "ok late-250"
    assert server.late_range == (60.0, 120.0)
    assert server.command("flush").startswith("flushed ")
    with pytest.raises(ValidationError, match="unknown command 'slow'; use one of"):
        server.command("slow 3")
    with pytest.raises(ValidationError, match="arguments must be numbers"):
        server.command("size big")
    with pytest.raises(ValidationError, match="late-250 takes"):
        server.command("late-250 1 2")


def test_the_standalone_server_takes_control_lines_on_stdin_and_answers_each(tmp_path):
    import subprocess
    import sys

    record = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest.devtools.faultsmtp", "--port", "0", "--record",
         str(record), "--temp-share", "0", "--drop-share", "0", "--unknown-share", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        proc.stdin.write("size 30720\nslow 3\nflush\n")
        proc.stdin.flush()
        answers = [proc.stdout.readline().strip() for _ in range(3)]
        assert answers[0] == "ok size"
        assert answers[1].startswith("error: unknown command 'slow'")
        assert answers[2] == "flushed 1"  # the size-limit event, on disk
        assert [e["event"] for e in read_events(record)] == ["size-limit"]
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as conn:
            conn.ehlo()
            assert conn.esmtp_features["size"] == "30720"
    finally:
        proc.terminate()
        proc.wait(10)
