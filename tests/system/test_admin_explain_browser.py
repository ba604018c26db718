"""The admin's explain pages in real headless Chromium (Debian's package, driven by Playwright),
against the app served by uvicorn on SQLite: an operator logs in, opens a reader, explains an
item the reader's weekly digest carried (sent to the real local SMTP server), then follows the
delivery's "Explain its items" and asks about an item none of the reader's filters matches.
Screenshots go to test-output/browser/explain-*.png."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from digest import db
from digest.delivery import send_deliveries
from digest.models import utcnow
from digest.selection import plan_scheduled_run
from digest.settings import get_settings, reset_settings_cache
from digest.web.admin import hash_password
from tests.factories import Taxo, make_item, make_subscriber
from tests.helpers import free_port
from tests.system.test_browser import LAUNCH_ARGS, SHOTS

PASSWORD = "explain walk password"
pytestmark = pytest.mark.browser


@pytest.fixture
def served(sqlite_settings, smtp_sink, monkeypatch):
    """The app on uvicorn (no broker: nothing here is queued), and a reader whose weekly
    digest carrying one item was sent; another item matches none of the reader's filters."""
    import uvicorn

    from digest.web import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    for key, value in {"DIGEST_PUBLIC_BASE_URL": base, "DIGEST_ADMIN_USERNAME": "admin",
                       "DIGEST_ADMIN_PASSWORD_HASH": hash_password(PASSWORD)}.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    settings = get_settings()
    with db._sessionmaker(settings.database_url)() as session:
        t = Taxo(session)
        ann = make_subscriber(session, "ann@example.org", {"themes": [t.policing]})
        carried = make_item(session, "Police reform", themes=[t.policing],
                            ingested_at=utcnow() - timedelta(hours=1))
        unmatched = make_item(session, "Elections observed", themes=[t.elections],
                              ingested_at=utcnow() - timedelta(hours=1))
        session.commit()
        run = plan_scheduled_run(session, "weekly", everyone=True, settings=settings)
        session.commit()
        ids = {"ann": ann.id, "carried": carried.id, "unmatched": unmatched.id}
    (delivery_id,) = run.pending_ids
    assert send_deliveries([delivery_id], settings=settings).sent == 1
    smtp_sink.wait_for(1)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield base, {**ids, "delivery": delivery_id}
    finally:
        server.should_exit = True
        thread.join(10)
        reset_settings_cache()


def test_an_operator_explains_a_sent_item_and_an_unmatched_one_in_the_admin(chromium, served):
    from playwright.sync_api import expect, sync_playwright

    base, ids = served
    carried, unmatched, delivery = ids["carried"], ids["unmatched"], ids["delivery"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{base}/admin/login")
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_role("link", name="Ad-hoc send")).to_be_visible()

            # 1. The reader's page: "Explain an item", the item by id: sent, and by which delivery.
            page.goto(f"{base}/admin/subscriber/details/{ids['ann']}")
            page.get_by_role("link", name="Explain an item").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(
                "Why an item did or did not reach ann@example.org")
            page.get_by_label("Item (id, URL or guid)").fill(str(carried))
            page.get_by_role("button", name="Explain").click()
            expect(page.get_by_role("heading", name="Verdict: sent")).to_be_visible()
            summary = page.locator("main > p").first
            expect(summary).to_contain_text(
                f"Item {carried} ('Police reform') for ann@example.org: sent, in delivery "
                f"{delivery} at ")
            reasons = page.locator("main ul li")
            expect(reasons.filter(has_text="Filter 1 (")).to_contain_text(
                "theme: wants Policing; the item has Policing: matched by Policing")
            expect(reasons.filter(has_text=f"Delivery {delivery} (")).to_contain_text(
                "to ann@example.org) carries it: sent at ")
            expect(reasons.filter(has_text=f"Delivery {delivery} (")).to_contain_text(
                "after 1 attempt(s)")
            expect(reasons.filter(has_text="It is yours already")).to_contain_text(
                f"carried by delivery {delivery}, which claimed it for you: no scheduled digest "
                "or alert will "
                "carry it again.")
            expect(page.locator("td.ok").first).to_contain_text("matched")
            page.screenshot(path=SHOTS / "explain-01-sent.png", full_page=True)

            # 2. The delivery's "Explain its items" lists what it carried, each linked.
            page.goto(f"{base}/admin/delivery/details/{delivery}")
            page.get_by_role("link", name="Explain its items").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(
                f"Explain delivery {delivery}")
            expect(page.locator("main > p").first).to_contain_text(
                f"Delivery {delivery} to ann@example.org: sent.")
            expect(page.get_by_role("link", name="Elections observed")).to_have_count(0)
            page.get_by_role("link", name="Police reform").click()
            expect(page.get_by_role("heading", name="Verdict: sent")).to_be_visible()

            # 3. From there, an item no filter matches: not sent, facet by facet.
            page.get_by_label("Item (id, URL or guid)").fill(str(unmatched))
            page.get_by_role("button", name="Explain").click()
            expect(page.get_by_role("heading", name="Verdict: no_match")).to_be_visible()
            expect(page.locator("main > p").first).to_have_text(
                f"Item {unmatched} ('Elections observed') for ann@example.org: not sent, none "
                "of the reader's filters matches it.")
            expect(page.locator("main ul li.no").filter(has_text="Filter 1 (")).to_contain_text(
                "theme: wants Policing; the item has Elections: no match")
            expect(page.locator("td.no").first).to_have_text("no match")
            page.screenshot(path=SHOTS / "explain-02-no-match.png", full_page=True)

            # 4. An unknown item is refused with the reason, the typed text kept.
            page.get_by_label("Item (id, URL or guid)").fill("https://elsewhere.example/x")
            page.get_by_role("button", name="Explain").click()
            expect(page.get_by_role("alert")).to_contain_text("no item with URL or guid")
            expect(page.get_by_label("Item (id, URL or guid)")).to_have_value(
                "https://elsewhere.example/x")
        finally:
            browser.close()
