"""The fault campaign's judge and options, on fabricated records (no parts started)."""

from __future__ import annotations

import pytest

from bench.faults import FAULTS, NEW_FAULTS, Row, accepted_by_delivery, judge, parse_args, summarise

UNKNOWN = {"gone@example.org"}


def fabricated(rows, events, *, unsubscribed=None, oversize=(), suppressed=()):
    row = Row(1, "kind", "kind")
    lost = judge(rows, accepted_by_delivery(events), unknown_user=lambda e: e in UNKNOWN,
                 unsubscribed=unsubscribed or {}, oversize=set(oversize),
                 suppressed=set(suppressed), row=row)
    return row, lost


def accepted(delivery: int, t: float = 10.0) -> dict:
    return {"event": "accepted", "delivery": delivery, "t": t, "rcpt": f"r{delivery}@example.org"}


def test_a_row_sent_and_accepted_once_counts_nothing_bad():
    row, lost = fabricated([(1, 11, "r1@example.org", "sent", "250 ok", "active")], [accepted(1)])
    assert (row.planned, row.sent, row.lost, row.duplicates, row.wrong) == (1, 1, 0, 0, 0)
    assert lost == []


def test_a_final_row_the_server_never_accepted_is_lost_with_its_reason():
    row, lost = fabricated([(1, 11, "r1@example.org", "failed", "5.7.1 refused", "active"),
                            (2, 12, "r2@example.org", "sent", "250 ok", "active")], [accepted(2)])
    assert row.lost == 1 and lost == [1]
    assert any(n.startswith("lost 1: failed: 5.7.1 refused") for n in row.notes)


def test_accepted_twice_is_one_duplicate_and_a_non_final_row_is_not_lost():
    row, lost = fabricated([(1, 11, "r1@example.org", "sent", "", "active"),
                            (2, 12, "r2@example.org", "deferred", "451", "active")],
                           [accepted(1, 1.0), accepted(1, 2.0)])
    assert (row.duplicates, row.non_final, row.lost) == (1, 1, 0)


def test_unknown_users_failing_is_expected_not_lost_nor_wrong():
    row, _ = fabricated([(1, 11, "gone@example.org", "failed", "550 5.1.1", "suppressed")], [],
                        suppressed={"gone@example.org"})
    assert (row.failed_511, row.lost, row.wrong) == (1, 0, 0)


def test_failed_cancelled_or_suppressed_without_a_reason_is_wrong():
    rows = [(1, 11, "r1@example.org", "failed", "552 5.3.4", "active"),
            (2, 12, "r2@example.org", "cancelled", "subscriber left", "active"),
            (3, 13, "r3@example.org", "sent", "250", "suppressed")]
    row, _ = fabricated(rows, [accepted(3)], suppressed={"r3@example.org"})
    assert row.wrong == 3


def test_an_over_size_digest_under_the_size_fault_may_fail_and_is_neither_lost_nor_wrong():
    row, lost = fabricated([(1, 11, "longread0@example.org", "failed", "552 5.3.4", "active")],
                           [], oversize={11})
    assert (row.lost, row.wrong, row.oversize) == (0, 0, 1) and lost == []


def test_accepted_after_the_unsubscribe_committed_counts_and_before_does_not():
    rows = [(1, 11, "r1@example.org", "sent", "", "unsubscribed"),
            (2, 12, "r2@example.org", "sent", "", "unsubscribed"),
            (3, 13, "r3@example.org", "cancelled", "left", "unsubscribed")]
    row, _ = fabricated(rows, [accepted(1, 5.0), accepted(2, 15.0)],
                        unsubscribed={11: 10.0, 12: 10.0, 13: 10.0})
    assert (row.after_unsub, row.lost, row.wrong) == (1, 0, 0)


def test_skipped_rows_are_not_planned_and_events_without_a_delivery_are_ignored():
    row, _ = fabricated([(1, 11, "r1@example.org", "skipped", "", "active")],
                        [{"event": "accepted", "delivery": None, "t": 1.0},
                         {"event": "451", "delivery": 1, "t": 1.0}])
    assert (row.planned, row.lost) == (0, 0)


def test_the_table_has_one_line_per_kind_with_the_duplicates_of_each_fault():
    a, b, c = Row(1, "x", "late-250"), Row(2, "x", "late-250"), Row(3, "x", "size")
    a.planned, b.planned, c.planned = 300, 300, 300
    a.duplicates, b.duplicates, c.operator = 4, 2, 1
    lines = summarise([a, b, c])
    assert "dups/fault" in lines[0] and "operator" in lines[0]
    late = next(line for line in lines if line.strip().startswith("late-250"))
    assert late.split()[1:5] == ["2", "600", "0", "6"] and "4 / 2" in late
    size = next(line for line in lines if line.strip().startswith("size"))
    assert size.split()[-1] == "1"


def test_keep_is_the_default_and_no_keep_cleans_up():
    assert parse_args([]).keep is True
    assert parse_args(["--no-keep"]).keep is False


def test_every_new_kind_is_selectable_by_name_with_duration_and_readers(capsys):
    args = parse_args(["--faults", ",".join(NEW_FAULTS), "--duration", "30",
                       "--subscribers", "1500"])
    assert args.kinds == list(NEW_FAULTS) and set(NEW_FAULTS) <= set(FAULTS)
    assert (args.duration, args.subscribers) == (30, 1500)
    with pytest.raises(SystemExit):
        parse_args(["--faults", "size,flood"])
    assert "unknown fault kind(s) flood" in capsys.readouterr().err


def test_a_lost_row_is_rechecked_against_a_second_reading_and_both_figures_are_printed(
        tmp_path, monkeypatch):
    """The server's record said nothing at the first reading (not written yet) and accepted
    the message at the second: the row is not counted lost, and the note names both."""
    import argparse
    import json

    from bench.faults import Campaign

    record = tmp_path / "smtp-events.jsonl"
    record.write_text("")
    campaign = object.__new__(Campaign)
    campaign.args = argparse.Namespace(seed=1, temp_share=0.0, drop_share=0.0, unknown_share=0.0)
    campaign.record, campaign.long_reader_ids, campaign.unsubscribed = record, set(), {}
    flushes = []

    def flush_smtp() -> int:
        flushes.append(1)
        if len(flushes) == 2:  # the event reaches the file only by the second reading
            record.write_text(json.dumps({"event": "accepted", "delivery": 1, "t": 5.0,
                                          "rcpt": "r1@example.org"}) + "\n")
        return len(flushes)

    campaign.flush_smtp = flush_smtp
    campaign.deliveries = lambda run_id: [(1, 11, "r1@example.org", "sent", "250", "active")]
    campaign.suppressed = lambda: set()
    monkeypatch.setattr("bench.faults.time.sleep", lambda seconds: None)
    row = Row(1, "late-250", "late-250")
    campaign.count(row, run_id=7, since=0.0)
    assert (row.lost, row.lost_first) == (0, 1) and len(flushes) == 2
    assert any("lost: 1 at the first reading of the record, 0 at the second" in n
               for n in row.notes)
