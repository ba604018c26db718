"""Planning matches once per distinct content (ADR 0030): readers with the same filters and the
same window get the same items from one representative's matching, and a reader whose claims
reach into the window (an ad-hoc send after their last digest) is planned alone, so what is
theirs already is left out for them only. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from digest.models import Delivery
from digest.selection import AdhocQuery, plan_adhoc_run, plan_scheduled_run
from tests.factories import T0, make_item, make_subscriber

DAY = timedelta(days=1)


def _carried(session, run_id: int) -> dict[str, list[int]]:
    return {d.email: d.item_ids
            for d in session.query(Delivery).filter(Delivery.run_id == run_id)}


def test_readers_with_the_same_filters_share_the_items_but_not_what_one_already_has(
        session, taxo, settings):
    policing = {"themes": [taxo.policing]}
    ann = make_subscriber(session, "ann@example.org", policing, watermark=T0 - 7 * DAY)
    make_subscriber(session, "bob@example.org", policing, watermark=T0 - 7 * DAY)
    make_subscriber(session, "cy@example.org", {"themes": [taxo.policing, taxo.gender]},
                    watermark=T0 - 7 * DAY)
    first = make_item(session, "Border police training", themes=[taxo.policing],
                      ingested_at=T0 - 3 * DAY)
    second = make_item(session, "Community policing forum", themes=[taxo.policing],
                       ingested_at=T0 - 2 * DAY)
    gender = make_item(session, "Women in policing", themes=[taxo.gender],
                       ingested_at=T0 - 2 * DAY)
    old = make_item(session, "Last month's training", themes=[taxo.policing],
                    ingested_at=T0 - 30 * DAY)
    session.commit()
    # Ann alone gets the first item (and an old one) from an operator before her digest.
    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(first.id, old.id)),
                           slot_key="adhoc:ann-only")
    session.query(Delivery).filter(Delivery.run_id == adhoc.run_id,
                                   Delivery.subscriber_id != ann.id).delete()
    session.commit()

    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert _carried(session, digest.run_id) == {
        "ann@example.org": [second.id],
        "bob@example.org": [first.id, second.id],
        "cy@example.org": sorted([first.id, second.id, gender.id]),
    }


def test_a_chunk_of_many_alike_readers_plans_each_with_its_own_window(session, taxo, settings):
    """Readers alike but for their watermark are different groups: each gets its window."""
    policing = {"themes": [taxo.policing]}
    items = [make_item(session, f"Item {n}", themes=[taxo.policing],
                       ingested_at=T0 - n * DAY) for n in range(1, 6)]
    for n in range(1, 6):
        make_subscriber(session, f"r{n}@example.org", policing, watermark=T0 - n * DAY
                        - timedelta(hours=1))
    session.commit()
    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    carried = _carried(session, digest.run_id)
    for n in range(1, 6):
        assert carried[f"r{n}@example.org"] == sorted(i.id for i in items[:n])
