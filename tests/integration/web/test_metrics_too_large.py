"""/metrics counts the deliveries failed for their size (issue 15): what tells an operator to
shorten digests or raise the SMTP server's limit. Real SMTP (aiosmtpd), SQLite and PostgreSQL."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from digest.delivery import send_deliveries
from digest.selection import plan_scheduled_run
from tests.factories import T0, Taxo, make_item, make_subscriber
from tests.integration.web.support import client, web_settings  # noqa: F401


def test_metrics_count_the_deliveries_failed_for_their_size_by_run_kind(
        client, session, smtp_sink, web_settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for name in ("big", "fine"):
        make_subscriber(session, f"{name}@example.org", {"themes": [t.policing]})
    session.commit()
    smtp_sink.script("big@example.org", "552 5.3.4 Message too big for system")
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=web_settings)
    session.commit()
    result = send_deliveries(run.pending_ids, settings=web_settings)
    assert (result.sent, result.failed) == (1, 1)

    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text)
               for s in family.samples}
    assert samples[("digest_deliveries_too_large", (("kind", "weekly"),))] == 1
