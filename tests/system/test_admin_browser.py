"""An operator's walk through the admin's own pages in real headless Chromium (Debian's
package, driven by Playwright), against the app served by uvicorn with a real Celery worker
on Redis sending to the real local SMTP server: add a subscriber (a refused form first),
import a CSV with a bad line and export it, then an ad-hoc send: dry run with the forecast,
one reader's message, confirm, and the progress page refreshing until the run is done.
Screenshots go to test-output/browser/admin-*.png."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sqlalchemy import select

from digest import db
from digest.models import Delivery, Subscriber, utcnow
from digest.settings import get_settings, reset_settings_cache
from digest.web.admin import hash_password
from tests.conftest import REDIS_URL, ROOT
from tests.factories import Taxo, make_item
from tests.helpers import free_port
from tests.system.test_browser import LAUNCH_ARGS, SHOTS

PASSWORD = "admin walk password"
pytestmark = pytest.mark.browser


@pytest.fixture
def served_with_worker(sqlite_settings, smtp_sink, monkeypatch, tmp_path):
    """The app on uvicorn and one Celery worker, both on the test's SQLite file and a Redis
    queue of their own."""
    import uvicorn

    from digest.web import create_app
    from workers.celery_app import configure

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    queue = f"digest-admin-{uuid.uuid4().hex[:8]}"
    for key, value in {"DIGEST_PUBLIC_BASE_URL": base, "DIGEST_BROKER_URL": REDIS_URL,
                       "DIGEST_RESULT_BACKEND": REDIS_URL, "DIGEST_TASK_QUEUE": queue,
                       "DIGEST_ADMIN_USERNAME": "admin",
                       "DIGEST_ADMIN_PASSWORD_HASH": hash_password(PASSWORD)}.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    settings = get_settings()
    configure()
    with db._sessionmaker(settings.database_url)() as session:
        Taxo(session)
        session.commit()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
         "-c", "1", "-P", "solo", "-l", "INFO", "--without-gossip", "--without-mingle",
         "-n", f"{queue}@%h"],
        cwd=ROOT, env=os.environ.copy(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started or "ready." not in log.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"server or worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield base, settings
    finally:
        server.should_exit = True
        thread.join(10)
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        reset_settings_cache()
        configure()


def _subscriber(settings, email: str) -> Subscriber | None:
    with db._sessionmaker(settings.database_url)() as session:
        sub = session.scalars(select(Subscriber).where(Subscriber.email == email)).one_or_none()
        if sub is not None:
            _ = [(f.themes, f.locations) for f in sub.filters]
        return sub


def test_an_operator_adds_imports_exports_and_makes_an_adhoc_send_in_the_admin(
        chromium, served_with_worker, smtp_sink, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, settings = served_with_worker
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900},
                                       accept_downloads=True).new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{base}/admin/login")
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_role("link", name="Ad-hoc send")).to_be_visible()

            # 1. Add a subscriber: an unknown theme is refused in the form, typed text kept.
            page.goto(f"{base}/admin/subscriber-tools/add")
            page.get_by_label("Email address").fill("walk@example.org")
            page.get_by_label("Filters, one a line").fill("themes=Astrology")
            page.get_by_label("Frequency").select_option("weekly")
            page.get_by_role("button", name="Add subscriber").click()
            expect(page.get_by_role("alert")).to_contain_text("Astrology")
            expect(page.get_by_label("Email address")).to_have_value("walk@example.org")
            page.screenshot(path=SHOTS / "admin-01-add-refused.png", full_page=True)
            assert _subscriber(settings, "walk@example.org") is None
            page.get_by_label("Filters, one a line").fill("themes=Policing")
            page.get_by_role("button", name="Add subscriber").click()
            expect(page.get_by_text("walk@example.org").first).to_be_visible()
            assert "/admin/subscriber/details/" in page.url
            sub = _subscriber(settings, "walk@example.org")
            assert [[t.name for t in f.themes] for f in sub.filters] == [["Policing"]]

            # 2. Import a CSV with one bad line; the report names it; export downloads all.
            upload = tmp_path / "people.csv"
            upload.write_text("email,frequency,themes\r\nana@example.org,daily,Policing\r\n"
                              "not-an-address,weekly,\r\n", encoding="utf-8")
            page.goto(f"{base}/admin/subscriber-tools/csv")
            page.get_by_label("CSV file (UTF-8)").set_input_files(upload)
            page.get_by_role("button", name="Import").click()
            report = page.get_by_role("status")
            expect(report).to_contain_text("1 added, 0 updated, 1 rejected")
            expect(page.locator("#import-errors td").first).to_have_text("3")
            page.screenshot(path=SHOTS / "admin-02-csv-report.png", full_page=True)
            with page.expect_download() as download:
                page.get_by_role("link", name="Export every subscriber as CSV").click()
            exported = download.value.path().read_text(encoding="utf-8")
            assert "ana@example.org,daily" in exported and "walk@example.org" in exported

            # 3. Ad-hoc send of one item to weekly and daily readers: a dry run first.
            item_id = _make_item(settings)
            page.goto(f"{base}/admin/send")
            page.get_by_label("Item ids").fill(f"{item_id}")
            page.get_by_role("button", name="Dry run").click()
            expect(page.get_by_role("heading", name="nothing sent yet")).to_be_visible()
            expect(page.locator("#recipients")).to_have_text("2")
            expect(page.locator("#forecast")).to_contain_text("average size")
            expect(page.locator("#preview-subject")).to_be_visible()
            page.get_by_label("The message this reader would get").select_option(
                label="walk@example.org (1 items)")
            page.get_by_role("button", name="Show").click()
            expect(page.locator("#preview-text")).to_contain_text("Border police training")
            page.screenshot(path=SHOTS / "admin-03-dry-run.png", full_page=True)
            assert smtp_sink.messages == []

            # 4. Confirm: the worker sends; the progress page refreshes until it is done.
            page.get_by_role("button", name="Send to 2 recipients").click()
            expect(page.locator("#run-summary")).to_contain_text("none left to send",
                                                                 timeout=30_000)
            expect(page.locator('[data-status="sent"]')).to_have_text("2")
            page.screenshot(path=SHOTS / "admin-04-run-done.png", full_page=True)
        finally:
            browser.close()
    received = smtp_sink.wait_for(2, timeout=15)
    assert sorted(m.rcpt_tos[0] for m in received) == ["ana@example.org", "walk@example.org"]
    with db._sessionmaker(settings.database_url)() as session:
        statuses = session.scalars(select(Delivery.status).where(Delivery.status == "sent"))
        assert len(list(statuses)) == 2


def _make_item(settings) -> int:
    from digest.models import Theme

    with db._sessionmaker(settings.database_url)() as session:
        policing = session.scalars(select(Theme).where(Theme.slug == "policing")).one()
        item = make_item(session, "Border police training", themes=[policing],
                         ingested_at=utcnow())
        session.commit()
        return item.id
