"""axe-core's WCAG 2.1 AA rules (and its best practices) in headless Chromium, on the
subscriber pages as uvicorn serves them and on the demo digest as the SMTP server got it:
no violation expected. axe-core is the copy bundled in the axe-playwright-python package
(test extra): nothing is downloaded at test time. Each page's findings, if any, are written
to test-output/axe/ with the elements and the rule's help link."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select

from digest import db
from digest.models import Subscriber
from digest.subscribers import upsert_subscriber
from digest.tokens import links_for
from tests.conftest import ROOT
from tests.system.test_browser import LAUNCH_ARGS, served  # noqa: F401 (fixture)
from tests.system.test_email_quality import demo_digest, html_of  # noqa: F401 (fixture)

OUT = ROOT / "test-output" / "axe"
# WCAG 2.0 and 2.1, levels A and AA, and axe's best practices (landmarks, one h1, regions).
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                       "wcag21aa", "best-practice"]},
               "resultTypes": ["violations"]}

pytestmark = pytest.mark.browser


def _findings(results: dict) -> list[str]:
    return [f"{v['id']} ({v['impact']}): {v['help']} -- "
            + "; ".join(" ".join(n["target"]) for n in v["nodes"]) for v in results["violations"]]


def _audit(page, name: str) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=AXE_OPTIONS).response
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results["violations"], indent=2),
                                      encoding="utf-8")
    return _findings(results)


@pytest.fixture
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def _active_reader(settings) -> int:
    with db.session_scope(settings.database_url) as session:
        upsert_subscriber(session, "axe.reader@example.org", smtputf8=False)
    with db.session_scope(settings.database_url) as session:
        sub = session.scalars(select(Subscriber).where(
            Subscriber.email == "axe.reader@example.org")).one()
        sub.status = "active"
        return sub.id


def test_subscriber_pages_have_no_axe_violations(browser, served):
    base, settings = served
    links = links_for(_active_reader(settings), settings)
    pages = {
        "subscribe": f"{base}/subscribe",
        "preferences": links["manage_url"],
        "unsubscribe-confirm": links["unsubscribe_url"],
        "link-problem": f"{base}/preferences/not-a-token",
        "feed-not-found": f"{base}/feed/not-a-token.atom",
    }
    # The pages' own stylesheet under CSP: nothing axe needs is blocked (it runs over CDP).
    page = browser.new_context(viewport={"width": 1024, "height": 800}).new_page()
    found = {}
    for name, url in pages.items():
        page.goto(url)
        found[name] = _audit(page, name)
    # The page after the button, and the subscribe form's answer to bad input.
    page.goto(links["unsubscribe_url"])
    page.get_by_role("button", name=re.compile("Unsubscribe", re.I)).first.click()
    page.wait_for_load_state()
    found["unsubscribed"] = _audit(page, "unsubscribed")
    page.goto(f"{base}/subscribe")
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_load_state()
    found["subscribe-errors"] = _audit(page, "subscribe-errors")
    assert found == {name: [] for name in found}


def test_demo_digest_has_no_axe_violations(browser, demo_digest):
    OUT.mkdir(parents=True, exist_ok=True)
    html_file = OUT / "demo-digest.html"
    html_file.write_text(html_of(demo_digest), encoding="utf-8")
    page = browser.new_context(viewport={"width": 600, "height": 900}).new_page()
    page.goto(html_file.as_uri())
    assert _audit(page, "demo-digest") == []


@pytest.fixture
def admin_served(monkeypatch, sqlite_settings, smtp_sink, request):
    """``served`` with an admin sign-in (set before the app reads its settings)."""
    from digest.web.admin import hash_password

    monkeypatch.setenv("DIGEST_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("DIGEST_ADMIN_PASSWORD_HASH", hash_password(ADMIN_PASSWORD))
    return request.getfixturevalue("served")


ADMIN_PASSWORD = "axe admin password"


def _sources_in_every_health(settings) -> None:
    """A failing, a stale, a paused and a new source: every badge the page can show."""
    from datetime import timedelta

    from digest.ingest import registry
    from digest.models import utcnow

    now = utcnow()
    with db.session_scope(settings.database_url) as session:
        for n, (failing_hours, paused) in enumerate([(2, False), (48, False), (0, True),
                                                     (None, False)]):
            source = registry.add_source(session, f"https://93.184.215.14/feed-{n}.xml",
                                         settings=settings)
            source.paused = paused
            if failing_hours:
                source.last_attempt_at = now
                source.failing_since = now - timedelta(hours=failing_hours)
                source.consecutive_failures = source.failures = 5
                source.last_success_at = now - timedelta(hours=failing_hours + 1)
                source.last_error = "HTTP 503 Service Unavailable: down for maintenance"
                source.last_status = 503


def test_admin_sources_page_has_no_axe_violations_in_its_content(browser, admin_served):
    """The Sources page's own content (sqladmin's frame around it is sqladmin's): health
    badges whose words carry the meaning, the table's headers and caption, every button
    and form field named."""
    base, settings = admin_served
    _sources_in_every_health(settings)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/admin/login")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(ADMIN_PASSWORD)
    page.locator("button[type=submit]").click()
    page.wait_for_load_state()
    page.goto(f"{base}/admin/sources")
    assert page.get_by_text("Stale: failing too long").count() == 1
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, context={"include": [[".page-body"]]},
                        options=AXE_OPTIONS).response
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=OUT / "admin-sources.png", full_page=True)
    (OUT / "admin-sources.json").write_text(json.dumps(results["violations"], indent=2),
                                            encoding="utf-8")
    assert _findings(results) == []
