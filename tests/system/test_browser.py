"""A person's walk through the subscriber pages in real headless Chromium (Debian's package,
driven by Playwright; no browser download), against the app served by uvicorn, with the
confirmation email received by the real local SMTP server. The database is checked after
each step; screenshots of every page go to test-output/browser/."""

from __future__ import annotations

import re
import threading
import time

import pytest
from sqlalchemy import select

from digest import db
from digest.models import Subscriber
from digest.settings import get_settings, reset_settings_cache
from tests.conftest import ROOT
from tests.factories import Taxo
from tests.helpers import free_port

SHOTS = ROOT / "test-output" / "browser"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
EMAIL = "browser.walk@example.org"

# Without chromium the test skips locally and fails in CI (the `chromium` fixture).
pytestmark = pytest.mark.browser


@pytest.fixture
def served(sqlite_settings, smtp_sink, monkeypatch):
    """The app on a real uvicorn server on 127.0.0.1, links in emails pointing at it."""
    import uvicorn

    from digest.web import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DIGEST_PUBLIC_BASE_URL", base)
    reset_settings_cache()
    settings = get_settings()
    with db._sessionmaker(settings.database_url)() as session:
        Taxo(session)
        session.commit()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield base, settings
    server.should_exit = True
    thread.join(10)


def _subscriber(settings) -> Subscriber | None:
    with db._sessionmaker(settings.database_url)() as session:
        sub = session.scalars(select(Subscriber).where(Subscriber.email == EMAIL)).one_or_none()
        if sub is not None:
            _ = [(f.themes, f.locations, f.content_types) for f in sub.filters]  # load them
        return sub


def _filters(sub: Subscriber) -> list[tuple[list[str], list[str]]]:
    return [([t.name for t in f.themes], [loc.name for loc in f.locations]) for f in sub.filters]


def test_subscribe_confirm_change_preferences_on_a_phone_and_unsubscribe_in_one_click(
    chromium, served, smtp_sink
):
    from playwright.sync_api import expect, sync_playwright

    base, settings = served
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 375, "height": 812},
                device_scale_factor=1,
                is_mobile=True,
                has_touch=True,
            )
            page = context.new_page()
            page.set_default_timeout(15_000)

            # 1. Subscribe: only "Policing", weekly on Wednesday in Vienna.
            page.goto(f"{base}/subscribe")
            expect(page.get_by_role("heading", level=1)).to_contain_text("by email")
            page.keyboard.press("Tab")  # keyboard users reach the skip link first
            assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
            page.get_by_label("Email address").fill(EMAIL)
            page.get_by_label("Only what matches my filters below").check()
            expect(page.locator("#filter-0 details").first).to_have_attribute("open", "")
            page.locator("#filter-0").get_by_label("Policing", exact=True).check()
            page.get_by_label("Once a week").check()
            page.get_by_label("Day (weekly)").select_option(label="Wednesday")
            page.get_by_label("Your time zone").select_option("Europe/Vienna")
            _no_sideways_scroll(page)
            page.screenshot(path=SHOTS / "01-subscribe.png", full_page=True)
            page.get_by_role("button", name="Subscribe").click()
            expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
            page.screenshot(path=SHOTS / "02-check-your-inbox.png", full_page=True)
            sub = _subscriber(settings)
            assert sub.status == "pending" and sub.weekday == 2 and sub.timezone == "Europe/Vienna"
            assert _filters(sub) == [(["Policing"], [])]

            # 2. The confirmation email arrives at the real SMTP server; open its link.
            [message] = smtp_sink.wait_for(1, timeout=15)
            text = message.parsed().get_body(("plain",)).get_content()
            confirm_url = re.search(rf"{re.escape(base)}/confirm/\S+", text).group(0)
            unsubscribe_url = re.search(rf"{re.escape(base)}/unsubscribe/\S+", text).group(0)
            page.goto(confirm_url)
            expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
            page.screenshot(path=SHOTS / "03-confirmed.png", full_page=True)
            assert _subscriber(settings).status == "active"

            # 3. Preferences at 375 px: add "everything in South-Eastern Europe", daily.
            page.get_by_role("link", name="Change what you get").click()
            expect(page.get_by_role("heading", name="Your digest preferences")).to_be_visible()
            _no_sideways_scroll(page)
            added = page.locator("#filter-1")
            expect(added.locator("legend").first).to_have_text("Add another filter (optional)")
            added.locator("summary", has_text="Locations").click()
            added.get_by_label("Everything in South-Eastern Europe").check()
            page.get_by_label("Once a day").check()
            page.get_by_label("Time (daily and weekly)").select_option(label="07:00")
            page.screenshot(path=SHOTS / "04-preferences-editing.png", full_page=True)
            page.get_by_role("button", name="Save my preferences").click()
            expect(page.get_by_role("status")).to_contain_text("Your preferences are saved")
            _no_sideways_scroll(page)
            page.screenshot(path=SHOTS / "05-preferences-saved.png", full_page=True)
            sub = _subscriber(settings)
            assert (sub.frequency, sub.hour) == ("daily", 7)
            assert _filters(sub) == [(["Policing"], []), ([], ["South-Eastern Europe"])]

            # 4. The unsubscribe link from the email: opening it changes nothing...
            page.goto(unsubscribe_url)
            expect(page.get_by_role("button", name="Unsubscribe")).to_be_visible()
            page.screenshot(path=SHOTS / "06-unsubscribe-page.png", full_page=True)
            assert _subscriber(settings).status == "active"
            # ...the RFC 8058 one-click POST (what a mail provider sends) unsubscribes at once.
            response = context.request.post(
                unsubscribe_url, form={"List-Unsubscribe": "One-Click"}, max_redirects=0
            )
            assert response.status == 200
            assert _subscriber(settings).status == "unsubscribed"
            page.reload()
            expect(page.get_by_text("does not get the")).to_be_visible()
            page.screenshot(path=SHOTS / "07-unsubscribed.png", full_page=True)
        finally:
            browser.close()
    assert len(list(SHOTS.glob("0*.png"))) >= 7


def _no_sideways_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width} px wide on a 375 px screen"
