"""The reference model on its own: small scenarios, one or more per rule, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.model import promise as P

T0 = datetime(2025, 10, 20, 5, 30, tzinfo=UTC)  # a Monday
POLICING = P.Filter(themes=frozenset({"Policing"}))
SEE = P.Filter(locations=frozenset({"South-Eastern Europe"}))


def item(key, *, themes=(), places=(), ctype=None, published=None):
    return P.Item(key, frozenset(themes), frozenset(places), ctype, published, T0, False)


def world(*readers, **kw) -> P.Promise:
    model = P.Promise(P.Config(**kw))
    for email, filters, frequency in readers:
        model.add(email, filters, frequency, "UTC", 0, 8, T0)
    return model


def deliver(model: P.Promise, outcome: P.Outcome) -> None:
    for email, kinds in outcome.items():
        for kind, expect in kinds.items():
            model.observe(email, kind, expect.must, delivered=True)


def test_m1_m2_m3_matching():
    news = item("a", themes=["Policing"], places=["OSCE Mission to Serbia"], ctype="News")
    assert P.matches(news, ())  # M2
    assert P.matches(news, (POLICING,))
    assert P.matches(news, (SEE,))  # M3: the region covers the place
    assert not P.matches(news, (P.Filter(frozenset({"Policing"}), frozenset(),
                                         frozenset({"Press release"})),))  # M1: AND
    assert P.matches(news, (P.Filter(types=frozenset({"Press release"})), POLICING))  # any filter


def test_m5_ticking_means_only_these():
    assert P.form_filters(True, (POLICING,)) == (POLICING,)
    assert P.form_filters(True, ()) == ()
    assert P.form_filters(False, ()) is None


def test_r1_r2_confirmation_only_and_never_to_the_suppressed():
    model = world()
    outcome = model.subscribe("a@x.org", (), "weekly", "UTC", 0, 8, T0)
    assert outcome["a@x.org"]["confirmation"].must == {"confirmation"}
    model.ingest([item("i1")], T0)
    assert model.send_now("weekly", T0 + timedelta(hours=1)) == {}  # pending: no digest
    model.suppress("b@x.org", T0)
    assert model.subscribe("b@x.org", (), "weekly", "UTC", 0, 8, T0) == {}  # R2


def test_s2_first_digest_looks_back_and_carries_by_ingestion():
    model = world(("a@x.org", (), "weekly"))
    old = item("old", published=T0 - timedelta(days=20))  # published long ago, arrives now
    model.ingest([old], T0)
    outcome = model.send_now("weekly", T0 + timedelta(hours=1))
    assert outcome["a@x.org"]["digest"].must == {"old"}
    deliver(model, outcome)
    assert model.send_now("weekly", T0 + timedelta(hours=2)) == {}  # N1, S4


def test_m4_backfill_is_never_in_a_digest_but_may_be_sent_ad_hoc():
    model = world(("a@x.org", (), "weekly"))
    model.ingest([item("arch", published=T0 - timedelta(days=40))], T0)
    assert model.send_now("weekly", T0 + timedelta(hours=1)) == {}
    outcome = model.adhoc(["arch"], (), None, False, T0 + timedelta(hours=2))
    assert outcome["a@x.org"]["adhoc"].must == {"arch"}


def test_s1_weekly_reader_is_due_at_their_local_hour_across_dst():
    reader = P.Reader("a@x.org", "active", "weekly", "Europe/Vienna", 6, 2)  # Sunday 02:00
    # 26 Oct 2025: Vienna's clocks go back at 03:00 to 02:00: 02:00 comes twice, counted once.
    due = P.due_moments(reader, datetime(2025, 10, 25, tzinfo=UTC),
                        datetime(2025, 10, 27, tzinfo=UTC))
    assert due == [datetime(2025, 10, 26, 0, tzinfo=UTC)]
    # 30 Mar 2025: 02:00 does not exist; it comes round when the gap ends (01:00 UTC).
    due = P.due_moments(reader, datetime(2025, 3, 29, tzinfo=UTC),
                        datetime(2025, 3, 31, tzinfo=UTC))
    assert due == [datetime(2025, 3, 30, 1, tzinfo=UTC)]
    kathmandu = P.Reader("b@x.org", "active", "daily", "Asia/Kathmandu", 0, 8)
    due = P.due_moments(kathmandu, datetime(2025, 3, 1, tzinfo=UTC),
                        datetime(2025, 3, 1, 12, tzinfo=UTC))
    assert due == [datetime(2025, 3, 1, 3, tzinfo=UTC)]  # 02:15 UTC, served never early


def test_s3_catch_up_holds_late_slots_and_skips_older_ones():
    model = world(("a@x.org", (), "daily"))  # daily at 08:00 UTC
    model.tick(T0)  # a new installation: only this hour
    model.ingest([item("i1")], T0)
    # Down from Monday 05:30 to Wednesday 03:30: Monday 08:00 is 43.5 h late (held),
    # Tuesday 08:00 is 19.5 h late (timely): the timely slot carries the item.
    outcome, held = model.tick(T0 + timedelta(hours=46))
    assert outcome["a@x.org"]["digest"].must == {"i1"}
    assert held == {}
    model2 = world(("a@x.org", (), "weekly"))  # Monday 08:00
    model2.tick(T0)
    model2.ingest([item("i1")], T0)
    outcome, held = model2.tick(T0 + timedelta(hours=30))  # Monday 08:00 is 27.5 h late
    assert outcome == {}
    assert held == {("weekly", datetime(2025, 10, 20, 8, tzinfo=UTC)): {"a@x.org"}}
    assert model2.release("weekly:2025-10-20T08", T0)["a@x.org"]["digest"].must == {"i1"}


def test_o2_cancel_gives_the_items_to_the_next_digest():
    model = world(("a@x.org", (), "weekly"))
    model.tick(T0)
    model.ingest([item("i1")], T0)
    model.tick(T0 + timedelta(hours=30))
    model.cancel("weekly:2025-10-20T08", T0 + timedelta(hours=31))
    assert model.send_now("weekly", T0 + timedelta(hours=32))["a@x.org"]["digest"].must == {"i1"}


def test_r4_r6_leaving_cancels_and_coming_back_looks_back_afresh():
    model = world(("a@x.org", (), "weekly"))
    model.ingest([item("i1")], T0)
    deliver(model, model.send_now("weekly", T0 + timedelta(hours=1)))
    model.unsubscribe("a@x.org", T0 + timedelta(days=1))
    later = T0 + timedelta(days=40)
    model.items["i2"] = P.Item("i2", frozenset(), frozenset(), None, None,
                               T0 + timedelta(days=20), False)  # while away, past look-back
    model.ingest([item("i3")], later)
    model.resubscribe("a@x.org", later)
    outcome = model.send_now("weekly", later + timedelta(hours=1))
    assert outcome["a@x.org"]["digest"].must == {"i3"}  # not i2 (R6), not i1 (N1)


def test_r5_unsuppress_gives_back_the_status_before():
    model = world(("a@x.org", (), "weekly"))
    model.unsubscribe("a@x.org", T0)
    model.suppress("a@x.org", T0)
    model.unsuppress("a@x.org", T0)
    assert model.readers["a@x.org"].status == "unsubscribed"


def test_b1_the_same_bounce_report_again_does_not_undo_an_operator_lifting_it():
    model = world(("a@x.org", (), "weekly"))
    model.hard_bounce("a@x.org", T0, report=7)
    assert model.readers["a@x.org"].status == "suppressed"
    model.unsuppress("a@x.org", T0)
    model.hard_bounce("a@x.org", T0, report=7)  # delivered again: not new evidence
    assert model.readers["a@x.org"].status == "active"
    model.hard_bounce("a@x.org", T0, report=8)  # a new bounce
    assert model.readers["a@x.org"].status == "suppressed"


def test_a1_a2_alerts_for_matching_new_items_only():
    model = world(("a@x.org", (POLICING,), "immediate"), ("b@x.org", (), "immediate"))
    outcome = model.ingest([item("i1", themes=["Elections"])], T0)
    assert set(outcome) == {"b@x.org"}  # M2 whatever the others chose
    assert outcome["b@x.org"]["alert"].must == {"i1"}


def test_h2_h3_adhoc_once_per_request_and_not_again_in_digests():
    model = world(("a@x.org", (), "weekly"))
    model.ingest([item("i1")], T0)
    outcome = model.adhoc(["i1"], (), None, False, T0)
    deliver(model, outcome)
    assert model.adhoc(["i1"], (), None, False, T0) == {}  # H2
    assert model.send_now("weekly", T0 + timedelta(hours=1)) == {}  # H3
    assert model.adhoc(["i1"], (), "again", False, T0)["a@x.org"]["adhoc"].repeat_ok  # H2 key


def test_n2_o3_failed_items_wait_for_the_resend():
    model = world(("a@x.org", (), "weekly"))
    model.ingest([item("i1")], T0)
    model.send_now("weekly", T0 + timedelta(hours=1))
    model.observe("a@x.org", "digest", {"i1"}, delivered=False)
    model.ingest([item("i2")], T0 + timedelta(hours=2))
    assert model.send_now("weekly", T0 + timedelta(hours=3))["a@x.org"]["digest"].must == {"i2"}
    outcome = model.resend(7, {"a@x.org": frozenset({"i1"})}, T0)
    assert outcome["a@x.org"]["resend"].must == {"i1"}
    assert model.resend(7, {"a@x.org": frozenset({"i1"})}, T0) == {}  # once per run


def test_i1_i2_import_updates_only_given_cells_and_never_resubscribes():
    model = world(("a@x.org", (POLICING,), "daily"))
    model.import_rows([{"email": "a@x.org", "hour": "13"}], False, T0)
    reader = model.readers["a@x.org"]
    assert (reader.frequency, reader.hour, reader.filters) == ("daily", 13, (POLICING,))
    model.unsubscribe("a@x.org", T0)
    model.import_rows([{"email": "a@x.org", "status": "active", "hour": "8"}], False, T0)
    assert (reader.status, reader.hour) == ("unsubscribed", 13)
    model.import_rows([{"email": "n@x.org", "status": "suppressed"}], False, T0)
    assert "n@x.org" in model.suppressed  # R3


def test_i4_an_edited_item_is_the_same_item():
    model = world(("a@x.org", (POLICING,), "weekly"))
    model.ingest([item("i1", themes=["Elections"])], T0)
    model.ingest([item("i1", themes=["Policing"])], T0 + timedelta(hours=1))
    assert model.items["i1"].ingested == T0
    assert model.send_now("weekly", T0 + timedelta(hours=2))["a@x.org"]["digest"].must == {"i1"}


def test_c1_o4_refused_and_dry_runs_send_nothing():
    model = world(("a@x.org", (), "weekly"))
    model.ingest([item("i1")], T0)
    assert model.refused_as_of(T0) == {} and model.dry_run(T0) == {}
    assert model.readers["a@x.org"].wm is None
