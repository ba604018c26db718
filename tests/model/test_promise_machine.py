"""The real system against the reference model (promise.py), with random sequences of what
people do, on SQLite and PostgreSQL.

Every step goes through the project's own entry points: the CLI (Typer's CliRunner on
``digest.cli.app``), the JSON API and the subscriber pages (FastAPI's TestClient on
``create_app``), the in-process queue (no broker), and the beat's periodic work (the digest
functions the tasks of ``workers/tasks.py`` call). The clock is time-machine's. Every message
the local SMTP server (MailSink) receives is parsed (reader, kind, the items it links) and
compared with what the model says each reader must, may or must not get; a message refused
by the server is read back from the API (what it carried) and compared the same way.

``DIGEST_MODEL_EXAMPLES=N`` runs N examples (random seed); without it CI's bounded,
derandomized run. A failure prints the shrunk steps: see tests/model/README.md to replay them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from typer.testing import CliRunner

from digest import db as digest_db
from tests.bounce_reports import HARD_5_1_1, sample
from tests.conftest import _truncate_pg
from tests.model import promise as P

# Operations left out while a known defect is being fixed elsewhere (names of the rules
# below). Empty: the machine runs every operation.
KNOWN_BROKEN: set[str] = set()

EMAILS = ["ann@example.org", "bob@example.net", "cy@example.com", "dee@example.org"]
THEMES = ["Policing", "Elections", "Gender equality"]
LOCATIONS = [*P.REGIONS, "South-Eastern Europe", "Eastern Europe"]
TYPES = ["News", "Press release"]
ZONES = ["UTC", "Europe/Vienna", "America/New_York", "Asia/Kathmandu"]
FREQUENCIES = ["weekly", "daily", "immediate"]
# Days around daylight-saving changes: US spring (9 Mar), EU spring (30 Mar), EU autumn
# (26 Oct), US autumn (2 Nov) 2025. Minutes stay away from whole hours: the rules leave the
# exact boundary of a slot, a catch-up range and a send-by deadline open.
STARTS = [datetime(2025, 3, 7, 5, 30, tzinfo=UTC), datetime(2025, 3, 28, 21, 30, tzinfo=UTC),
          datetime(2025, 10, 24, 22, 30, tzinfo=UTC), datetime(2025, 10, 31, 3, 30, tzinfo=UTC)]
ITEM_URL = "https://newsroom.test/items/"
REFUSAL = "554 5.6.0 message refused"
TOKEN = "model-test-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "https://digest.example.org"


STEPS: Counter[str] = Counter()  # operations run, printed after the test (-s)
MAILS: Counter[str] = Counter()  # messages compared, by kind
SECONDS: Counter[str] = Counter()  # time spent per operation


class PromiseBroken(AssertionError):
    """The real system did something the delivery promise does not allow."""


# --- strategies -------------------------------------------------------------------------

emails = st.sampled_from(EMAILS)
a_filter = st.builds(
    P.Filter, st.frozensets(st.sampled_from(THEMES), max_size=2),
    st.frozensets(st.sampled_from(LOCATIONS), max_size=2),
    st.frozensets(st.sampled_from(TYPES), max_size=1))
a_real_filter = a_filter.filter(lambda f: f != P.Filter())
filters = st.lists(a_real_filter, max_size=2).map(tuple)
some_filters = st.lists(a_real_filter, min_size=1, max_size=2).map(tuple)


@dataclass(frozen=True)
class Prefs:
    frequency: str
    tz: str
    weekday: int
    hour: int


prefs = st.builds(Prefs, st.sampled_from(FREQUENCIES), st.sampled_from(ZONES),
                  st.integers(0, 6), st.sampled_from([0, 2, 7, 8, 13, 22]))
refusals = st.one_of(st.none(), emails)
CSV_COLUMNS = {"frequency": ["", *FREQUENCIES], "timezone": ["", *ZONES],
               "weekday": ["", *map(str, range(7))], "hour": ["", "0", "8", "13"],
               "status": ["", "active", "unsubscribed", "suppressed"]}


@dataclass(frozen=True)
class CsvFile:
    """A CSV import: its optional columns (email always), whether it has the filter
    columns, and per address its cells and its filters (one row per filter)."""
    columns: tuple[str, ...]
    with_filters: bool
    rows: tuple[tuple[str, tuple[str, ...], tuple[P.Filter, ...]], ...]


@st.composite
def csv_files(draw) -> CsvFile:
    columns = tuple(draw(st.lists(st.sampled_from(sorted(CSV_COLUMNS)), unique=True)))
    rows = tuple(
        (email, tuple(draw(st.sampled_from(CSV_COLUMNS[c])) for c in columns), draw(some_filters))
        for email in draw(st.lists(emails, min_size=1, max_size=3, unique=True)))
    return CsvFile(columns, draw(st.booleans()), rows)


csv_files = csv_files()


@dataclass(frozen=True)
class NewItem:
    themes: frozenset[str]
    locations: frozenset[str]
    ctype: str | None
    backfill: bool


new_items = st.lists(st.builds(
    NewItem, st.frozensets(st.sampled_from(THEMES), max_size=2),
    st.frozensets(st.sampled_from(LOCATIONS), max_size=1),
    st.one_of(st.none(), st.sampled_from(TYPES)), st.sampled_from([False, False, False, True])),
    min_size=1, max_size=3)


# --- reading what was mailed -----------------------------------------------------------

@dataclass
class Mailed:
    email: str
    kind: str
    items: set[str]
    delivery_id: int | None
    delivered: bool
    confirm_url: str | None = None


def item_keys(body: str) -> set[str]:
    return set(re.findall(re.escape(ITEM_URL) + r"(i\d+)", body))


class Harness:
    """The system under test: its settings, web app, CLI, mail server and clock."""

    def __init__(self, settings, sink, db_url: str, template: Path | None):
        from fastapi.testclient import TestClient

        from digest.cli import app as cli_app
        from digest.web.app import create_app

        self.settings, self.sink, self.db_url, self.template = settings, sink, db_url, template
        self.cli_app = cli_app
        self.runner = CliRunner()
        self.client = TestClient(create_app(settings), base_url=BASE)
        self.traveller = None
        self.clock = None

    # time
    def start_clock(self, when: datetime) -> None:
        self.stop_clock()
        self.traveller = time_machine.travel(when, tick=False)
        self.clock = self.traveller.start()

    def stop_clock(self) -> None:
        if self.traveller is not None:
            self.traveller.stop()
            self.traveller = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def move(self, delta: timedelta) -> datetime:
        target = self.now() + delta
        if not 15 <= target.minute <= 45:  # stay away from whole hours (see STARTS)
            target = target.replace(minute=30)
        self.clock.move_to(target)
        return target

    # the database
    def reset(self) -> None:
        if self.template is not None:
            digest_db.engine_for(self.db_url).dispose()
            shutil.copy(self.template, self.db_url.removeprefix("sqlite:///"))
        else:
            _truncate_pg(self.db_url)
        from digest import taxonomy
        with digest_db.session_scope(self.db_url) as session:
            taxonomy.resolve(session, "theme", THEMES, create=True)
            taxonomy.resolve(session, "location", LOCATIONS, create=True)
            taxonomy.resolve(session, "content_type", TYPES, create=True)

    def rows(self, sql: str, **params) -> list:
        with digest_db.engine_for(self.db_url).connect() as conn:
            return list(conn.execute(text(sql), params))

    def subscriber_id(self, email: str) -> int | None:
        found = self.rows("SELECT id FROM subscribers WHERE email = :e", e=email)
        return found[0][0] if found else None

    # the entry points
    def cli(self, *args: str):
        return self.runner.invoke(self.cli_app, list(args), catch_exceptions=True)

    def kind_of(self, delivery_id: int) -> str:
        row = self.rows("SELECT r.kind, r.params, r.slot_key FROM deliveries d JOIN digest_runs r "
                        "ON r.id = d.run_id WHERE d.id = :d", d=delivery_id)
        if not row:
            return "unknown"
        kind, params, key = row[0]
        params = json.loads(params) if isinstance(params, str) else (params or {})
        if key.startswith("resend-failed:"):
            return P.RESEND
        return {"weekly": P.DIGEST, "daily": P.DIGEST, "immediate": P.ALERT,
                "adhoc": P.ADHOC}.get(kind, kind)

    def read(self, message) -> Mailed:
        parsed = message.parsed()
        email = message.rcpt_tos[0].lower()
        body = parsed.get_body(("plain",))
        text_part = body.get_content() if body is not None else ""
        html = parsed.get_body(("html",))
        html_part = html.get_content() if html is not None else ""
        header = parsed.get("X-Digest-Delivery")
        if header is None:
            found = re.search(re.escape(BASE) + r"/confirm/(\S+)", text_part)
            return Mailed(email, P.CONFIRMATION, {"confirmation"}, None, True,
                          found.group(0) if found else None)
        delivery_id = int(header)
        return Mailed(email, self.kind_of(delivery_id), item_keys(text_part) | item_keys(html_part),
                      delivery_id, True)

    def failed_message(self, delivery_id: int, email: str) -> Mailed:
        answer = self.client.get(f"/api/v1/deliveries/{delivery_id}/message", headers=AUTH)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items = item_keys(body.get("text", "") + body.get("html", ""))
        return Mailed(email, self.kind_of(delivery_id), items, delivery_id, False)


# --- the machine ------------------------------------------------------------------------

class PromiseMachine(RuleBasedStateMachine):
    harness: Harness  # set by the test

    def __init__(self):
        super().__init__()
        self.model = P.Promise(P.Config())
        self.h = self.harness
        self.seen = 0  # messages of the sink read so far
        self.known_failed: set[int] = set()
        self.contents: dict[int, tuple[str, set[str]]] = {}  # delivery -> (email, items)
        self.last_delivery: dict[str, int] = {}  # email -> a list message they got
        self.confirm_links: dict[str, str] = {}
        self.item_count = 0

    @initialize(start=st.sampled_from(STARTS),
                readers=st.lists(st.tuples(emails, filters, prefs), max_size=3,
                                 unique_by=lambda r: r[0]))
    def begin(self, start, readers):
        """A new installation at ``start`` with a few readers the operator added."""
        self.h.reset()
        self.h.sink.clear()
        self.h.sink._scripts.clear()
        self.h.start_clock(start)
        self.seen = len(self.h.sink.messages)
        for email, chosen, p in readers:
            self.add(email, chosen, p, False)

    def teardown(self):
        self.h.stop_clock()

    # -- the step: model, system, comparison --

    def step(self, name: str, model_op, system_op, refuse: str | None = None):
        if name in KNOWN_BROKEN:
            return None
        now = self.h.move(timedelta(seconds=1))
        STEPS[name] += 1
        outcome = model_op(now)
        if refuse:
            self.h.sink.script(refuse, REFUSAL)
        began = time.perf_counter()
        result = system_op(now)
        SECONDS[name] += time.perf_counter() - began
        self.h.sink._scripts.clear()
        self.compare(name, outcome, self.collect())
        return result

    def collect(self) -> list[Mailed]:
        messages = self.h.sink.messages[self.seen:]
        self.seen += len(messages)
        got = [self.h.read(m) for m in messages]
        for m in got:
            if m.delivery_id is not None:
                self.contents[m.delivery_id] = (m.email, m.items)
                self.last_delivery[m.email] = m.delivery_id
            if m.confirm_url:
                self.confirm_links[m.email] = m.confirm_url
        for delivery_id, email in self.h.rows("SELECT id, email FROM deliveries "
                                              "WHERE status = 'failed'"):
            if delivery_id in self.known_failed:
                continue
            self.known_failed.add(delivery_id)
            if delivery_id in self.contents:
                continue  # delivered, then a bounce report failed it (B1)
            failed = self.h.failed_message(delivery_id, email)
            self.contents[delivery_id] = (email, failed.items)
            got.append(failed)
        return got

    def compare(self, name: str, outcome: P.Outcome, got: list[Mailed]) -> None:
        problems = []
        by_reader: dict[tuple[str, str], list[Mailed]] = {}
        for m in got:
            by_reader.setdefault((m.email, m.kind), []).append(m)
        for (email, kind), messages in by_reader.items():
            expect = outcome.get(email, {}).get(kind)
            reader = self.model.readers.get(email)
            if expect is None:
                carried = sorted(set().union(*(m.items for m in messages)) - {"confirmation"})
                problems.append(f"{email} got {len(messages)} {kind} message(s) carrying "
                                f"{carried}, which the promise does not allow here "
                                f"({self.why_not(email)}"
                                + "".join(f"; {self.why_item(email, k)}" for k in carried) + ")")
                continue
            union: set[str] = set()
            for m in messages:
                if not m.items:
                    problems.append(f"S4: {email} got an empty {kind}")
                extra = m.items - expect.must - expect.may
                if extra:
                    problems.append(f"{email}'s {kind} carries {sorted(extra)}, not allowed: "
                                    + "; ".join(self.why_item(email, k) for k in sorted(extra)))
                if union & m.items:
                    problems.append(f"N1: {email} got {sorted(union & m.items)} twice in one step")
                if reader is not None and not expect.repeat_ok and kind != P.CONFIRMATION:
                    again = m.items & reader.received
                    if again:
                        problems.append(f"N1: {email} got {sorted(again)} again in a {kind}")
                union |= m.items
            missing = expect.must - union
            if ("alert:everything" in KNOWN_BROKEN and kind == P.ALERT and reader is not None
                    and not reader.filters):
                missing = set()
            if missing:
                problems.append(f"{email} should have got {sorted(missing)} in a {kind}: "
                                + "; ".join(self.why_item(email, k) for k in sorted(missing)))
        for email, kinds in outcome.items():
            for kind, expect in kinds.items():
                reader = self.model.readers.get(email)
                if ("alert:everything" in KNOWN_BROKEN and kind == P.ALERT and reader is not None
                        and not reader.filters):
                    continue
                if expect.must and (email, kind) not in by_reader:
                    problems.append(f"{email} got no {kind}; the promise says it must carry "
                                    f"{sorted(expect.must)}")
        for m in got:
            MAILS[m.kind if m.delivered else f"{m.kind} (refused)"] += 1
            self.model.observe(m.email, m.kind, m.items, delivered=m.delivered)
        if problems:
            raise PromiseBroken(f"after {name}:\n  " + "\n  ".join(problems))

    def why_not(self, email: str) -> str:
        reader = self.model.readers.get(email)
        if reader is None:
            return "no such reader in the model (erased or never added)"
        bits = [f"status {reader.status}", f"frequency {reader.frequency}"]
        if email in self.model.suppressed:
            bits.append("on the suppression list (R2)")
        return ", ".join(bits)

    def why_item(self, email: str, key: str) -> str:
        reader = self.model.readers.get(email)
        item = self.model.items.get(key)
        if reader is None or item is None:
            return f"{key}: unknown"
        bits = [f"{key} ingested {item.ingested:%m-%d %H:%M}"]
        if not P.matches(item, reader.filters):
            bits.append("matches none of the reader's filters (M1)")
        if item.backfill:
            bits.append("archive backfill (M4)")
        if key in reader.received:
            bits.append("already received (N1)")
        if key in reader.claimed:
            bits.append("claimed by a failed message (N2)")
        bits.append(f"window from {reader.wm or 'look-back'}")
        return ", ".join(bits)

    # -- invariants read from the database --

    @invariant()
    def watermarks_never_ahead(self):
        if self.h.clock is None:
            return
        now = self.h.now()
        for email, mark in self.h.rows("SELECT email, watermark FROM subscribers "
                                       "WHERE watermark IS NOT NULL"):
            mark = mark if isinstance(mark, datetime) else datetime.fromisoformat(str(mark))
            mark = mark if mark.tzinfo else mark.replace(tzinfo=UTC)
            if mark > now + timedelta(seconds=1):
                raise PromiseBroken(f"C1: {email}'s watermark {mark} is past the present {now}")

    @invariant()
    def suppressed_status_has_a_row(self):
        rows = self.h.rows("SELECT s.email FROM subscribers s WHERE s.status = 'suppressed' AND "
                           "NOT EXISTS (SELECT 1 FROM suppressions p WHERE p.email = s.email)")
        if rows:
            raise PromiseBroken(f"R3: status suppressed without a suppression row: {rows}")

    # -- the reader's acts --

    @rule(email=emails, everything=st.booleans(), ticked=filters, p=prefs,
          then_confirm=st.booleans())
    def subscribe(self, email, everything, ticked, p, then_confirm):
        chosen = P.form_filters(everything, ticked)
        if chosen is None:
            return  # nothing ticked and "Everything" not chosen: the form asks again
        if everything and ticked and "form:everything+ticked" in KNOWN_BROKEN:
            return

        def system(now):
            from digest.web.pages.csrf import make_csrf
            data = {"email": email, "csrf": make_csrf(self.h.settings, "subscribe"),
                    **form_fields(everything, ticked, p)}
            answer = self.h.client.post("/subscribe", data=data)
            assert answer.status_code == 200, answer.text[:500]

        self.step("subscribe", lambda now: self.model.subscribe(
            email, chosen, p.frequency, p.tz, p.weekday, p.hour, now), system)
        if then_confirm:
            self.confirm(email)

    @precondition(lambda self: bool(self.confirm_links))
    @rule(email=emails)
    def confirm(self, email):
        reader = self.model.readers.get(email)
        if email not in self.confirm_links or reader is None or reader.status != "pending":
            return  # R5 names confirming a fresh request; an old link is another question
        url = self.confirm_links[email]
        self.step("confirm", lambda now: self.model.confirm(email, now),
                  lambda now: self.h.client.get(url.removeprefix(BASE)))

    @rule(email=emails, everything=st.booleans(), ticked=filters, p=prefs)
    def change_preferences(self, email, everything, ticked, p):
        chosen = P.form_filters(everything, ticked)
        sid = self.h.subscriber_id(email)
        if chosen is None or sid is None:
            return
        if everything and ticked and "form:everything+ticked" in KNOWN_BROKEN:
            return

        def system(now):
            from digest.tokens import subscriber_token
            from digest.web.pages.csrf import make_csrf, subject_for
            token = subscriber_token("manage", sid, self.h.settings)
            data = {"csrf": make_csrf(self.h.settings, subject_for(sid)),
                    **form_fields(everything, ticked, p)}
            answer = self.h.client.post(f"/preferences/{token}", data=data,
                                        follow_redirects=False)
            assert answer.status_code == 303, answer.text[:500]

        self.step("change_preferences", lambda now: self.model.change_preferences(
            email, chosen, p.frequency, p.tz, p.weekday, p.hour, now), system)

    @rule(email=emails)
    def resubscribe(self, email):
        sid = self.h.subscriber_id(email)
        if sid is None:
            return

        def system(now):
            from digest.tokens import subscriber_token
            from digest.web.pages.csrf import make_csrf, subject_for
            token = subscriber_token("manage", sid, self.h.settings)
            self.h.client.post(f"/preferences/{token}", follow_redirects=False, data={
                "action": "resubscribe", "csrf": make_csrf(self.h.settings, subject_for(sid))})

        self.step("resubscribe", lambda now: self.model.resubscribe(email, now), system)

    @rule(email=emails, by_link=st.booleans())
    def unsubscribe(self, email, by_link):
        sid = self.h.subscriber_id(email)
        if sid is None:
            return

        def system(now):
            if by_link:  # RFC 8058 one-click POST
                from digest.tokens import subscriber_token
                token = subscriber_token("unsubscribe", sid, self.h.settings)
                self.h.client.post(f"/unsubscribe/{token}")
            else:
                self.h.cli("subscribers", "unsubscribe", email)

        self.step("unsubscribe", lambda now: self.model.unsubscribe(email, now), system)

    # -- the operator's acts on readers --

    @rule(email=emails, chosen=filters, p=prefs, explicit_active=st.booleans())
    def add(self, email, chosen, p, explicit_active):
        if explicit_active and "add:--status" in KNOWN_BROKEN:
            return
        args = ["subscribers", "add", email, "--frequency", p.frequency, "--timezone", p.tz,
                "--weekday", str(p.weekday), "--hour", str(p.hour)]
        for f in chosen:
            args += ["--filter", filter_text(f)]
        if explicit_active:
            args += ["--status", "active"]  # R5's explicit re-activation

        refused = self.model.add_refused(email, "active" if explicit_active else None)

        def system(now):
            result = self.h.cli(*args)
            if refused and result.exit_code == 0:
                raise PromiseBroken(f"R5: 'digest {' '.join(args)}' re-activated or changed a "
                                    f"reader who left (or a suppressed address) without "
                                    f"--status active")
            if not refused and result.exit_code != 0:
                raise PromiseBroken(f"R5: 'digest {' '.join(args)}' failed: {result.output}")

        self.step("add", lambda now: self.model.add(
            email, chosen, p.frequency, p.tz, p.weekday, p.hour, now,
            status="active" if explicit_active else None), system)

    @rule(email=emails, status=st.sampled_from(["active", "unsubscribed", "suppressed"]))
    def api_status(self, email, status):
        sid = self.h.subscriber_id(email)
        if sid is None:
            return
        self.step("api_status", lambda now: self.model.set_status(email, status, now),
                  lambda now: self.h.client.patch(f"/api/v1/subscribers/{sid}", headers=AUTH,
                                                  json={"status": status}))

    @rule(email=emails)
    def suppress(self, email):
        self.step("suppress", lambda now: self.model.suppress(email, now),
                  lambda now: self.h.cli("subscribers", "suppress", email))

    @rule(email=emails)
    def unsuppress(self, email):
        self.step("unsuppress", lambda now: self.model.unsuppress(email, now),
                  lambda now: self.h.cli("subscribers", "unsuppress", email))

    @rule(email=emails, by_api=st.booleans())
    def erase(self, email, by_api):
        sid = self.h.subscriber_id(email)
        if sid is None:
            return

        def system(now):
            if by_api:
                self.h.client.delete(f"/api/v1/subscribers/{sid}", headers=AUTH)
            else:
                self.h.cli("subscribers", "erase", email, "--yes")
            self.last_delivery.pop(email, None)
            self.confirm_links.pop(email, None)

        self.step("erase", lambda now: self.model.erase(email, now), system)

    @rule(csv=csv_files)
    def csv_import(self, csv):
        columns, with_filters = list(csv.columns), csv.with_filters
        header = ["email", *columns] + (["themes", "locations", "content_types"]
                                        if with_filters else [])
        rows = []
        for email, values, chosen in csv.rows:
            cells = {"email": email} | dict(zip(columns, values, strict=False))
            if "status" in cells and cells["status"] and "csv_import:status" in KNOWN_BROKEN:
                return
            if "csv_import:existing" in KNOWN_BROKEN and email in self.model.readers:
                return
            for f in (chosen if with_filters else (None,)):
                row = dict(cells)
                if f is not None:
                    row |= {"themes": "|".join(sorted(f.themes)),
                            "locations": "|".join(sorted(f.locations)),
                            "content_types": "|".join(sorted(f.types))}
                rows.append(row)
        body = ",".join(header) + "\n" + "".join(
            ",".join(row.get(c, "") for c in header) + "\n" for row in rows)

        def system(now):
            path = Path(self.h.settings.var_dir) / "import.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            self.h.cli("subscribers", "import", str(path))

        self.step("csv_import", lambda now: self.model.import_rows(rows, with_filters, now),
                  system)

    # -- items --

    @rule(fresh=new_items, edits=st.lists(st.tuples(st.integers(0, 50), a_filter), max_size=2),
          by_api=st.booleans())
    def ingest(self, fresh, edits, by_api):
        if not fresh and not (edits and self.model.items):
            return
        now_items = []
        payload = []
        for spec in fresh:
            self.item_count += 1
            key = f"i{self.item_count}"
            now_items.append((key, spec.themes, spec.locations, spec.ctype, spec.backfill))
        for index, f in edits:
            if self.model.items:
                known = sorted(self.model.items, key=lambda k: int(k[1:]))
                key = known[index % len(known)]
                now_items.append((key, f.themes, f.locations, next(iter(f.types), None), False))
        keys = [k for k, *_ in now_items]
        if len(set(keys)) != len(keys):
            return

        def model_op(now):
            items = []
            for key, themes, places, ctype, old in now_items:
                known = self.model.items.get(key)
                published = known.published if known else (
                    now - timedelta(days=40) if old else now - timedelta(hours=2))
                items.append(P.Item(key, themes, places, ctype, published, now, False))
                payload.append({"guid": key, "url": ITEM_URL + key, "title": f"Item {key}",
                                "published_at": published.isoformat(), "themes": sorted(themes),
                                "locations": sorted(places), **({"content_type": ctype}
                                                                if ctype else {})})
            return self.model.ingest(items, now)

        def system(now):
            if by_api:
                answer = self.h.client.post("/api/v1/items", headers=AUTH, json=payload)
                assert answer.status_code == 200, answer.text
            else:
                result = self.h.cli("ingest", "json", json.dumps(payload))
                assert result.exit_code == 0, result.output

        self.step("ingest", model_op, system)

    # Items arrive far more often than people change their minds: ingest is drawn 3 times as
    # often as any other rule.
    @rule(fresh=new_items, by_api=st.booleans())
    def publish(self, fresh, by_api):
        self.ingest(fresh, [], by_api)

    @rule(fresh=new_items, by_api=st.booleans())
    def publish_more(self, fresh, by_api):
        self.ingest(fresh, [], by_api)

    # -- the clock and the scheduler --

    @rule(hours=st.sampled_from([1, 2, 5, 11, 23, 25, 30, 47, 49, 71, 167]),
          minutes=st.integers(-14, 14), by_cli=st.booleans(), refuse=refusals)
    def tick(self, hours, minutes, by_cli, refuse):
        self.h.move(timedelta(hours=hours, minutes=minutes))
        held: dict = {}

        def model_op(now):
            outcome, slots = self.model.tick(now, alerts=not by_cli)
            held.update(slots)
            return outcome

        def system(now):
            if by_cli:
                for frequency in ("weekly", "daily"):
                    result = self.h.cli("send", frequency)
                    assert result.exit_code == 0, result.output
            else:
                beat_tick(self.h.settings)

        self.step("tick", model_op, system, refuse)
        self.check_held(held)

    def check_held(self, held: dict) -> None:
        """S3, O1: the held runs hold the digests of exactly the readers the model holds."""
        for (frequency, slot), readers in held.items():
            key = f"{frequency}:{slot:%Y-%m-%dT%H}"
            rows = self.h.rows("SELECT r.status, d.email, d.status FROM digest_runs r LEFT JOIN "
                               "deliveries d ON d.run_id = r.id WHERE r.slot_key = :k", k=key)
            pending = {email for _, email, status in rows if status == "pending"}
            must = {email for email in readers if self.model.readers[email].held.get(key)
                    and self.model.readers[email].held[key].must}
            if must - pending or pending - readers or (pending and rows[0][0] != "held"):
                raise PromiseBroken(f"S3/O1: slot {key} should hold {sorted(must)} (may "
                                    f"{sorted(readers)}); the system: {rows}")

    @rule(frequency=st.sampled_from(["weekly", "daily"]), refuse=refusals)
    def send_now(self, frequency, refuse):
        def system(now):
            result = self.h.cli("send", frequency, "--now")
            assert result.exit_code == 0, result.output

        self.step("send_now", lambda now: self.model.send_now(frequency, now), system, refuse)

    @rule(frequency=st.sampled_from(["weekly", "daily"]), hours=st.integers(1, 200),
          everyone=st.booleans())
    def send_as_of_future(self, frequency, hours, everyone):
        def system(now):
            when = (now + timedelta(hours=hours)).isoformat()
            result = self.h.cli("send", frequency, "--as-of", when, *(["--now"] if everyone
                                                                       else []))
            if result.exit_code == 0:
                raise PromiseBroken(f"C1: 'digest send {frequency} --as-of {when}' (the future)"
                                    f" was not refused: {result.output.strip()}")

        self.step("send_as_of_future", lambda now: self.model.refused_as_of(now), system)

    @rule(frequency=st.sampled_from(["weekly", "daily"]), everyone=st.booleans(),
          hours=st.integers(0, 200))
    def dry_run(self, frequency, everyone, hours):
        def system(now):
            when = (now + timedelta(hours=hours)).isoformat()
            self.h.cli("send", frequency, "--dry-run", "--as-of", when,
                       *(["--now"] if everyone else []))

        self.step("dry_run", lambda now: self.model.dry_run(now), system)

    # -- the operator's sends --

    @precondition(lambda self: bool(self.model.items))
    @rule(picks=st.lists(st.integers(1, 12), min_size=1, max_size=4, unique=True),
          frequencies=st.lists(st.sampled_from(FREQUENCIES), max_size=2, unique=True),
          key=st.one_of(st.none(), st.sampled_from(["again", "third"])), by_api=st.booleans(),
          also=st.booleans(), refuse=refusals)
    def adhoc(self, picks, frequencies, key, by_api, also, refuse):
        chosen = [f"i{n}" for n in picks if f"i{n}" in self.model.items]
        if not chosen:
            return
        also = also and by_api
        if "adhoc:also" in KNOWN_BROKEN and also:
            return
        h3 = "adhoc:h3" in KNOWN_BROKEN  # the model lets the ad-hoc items come again
        taken = self.model.adhoc_key_taken((frozenset(chosen), frozenset(frequencies), key))

        def system(now):
            ids = {k: i for i, k in self.h.rows("SELECT id, guid FROM items")}
            if by_api:
                body = {"item_ids": [ids[k] for k in chosen], "frequencies": frequencies}
                if key:
                    body["slot_key"] = f"adhoc:{key}"
                if also:
                    body["also_in_digests"] = True  # H3
                answer = self.h.client.post("/api/v1/runs", headers=AUTH, json=body)
                if taken and answer.status_code != 422:
                    raise PromiseBroken(f"H2: POST /api/v1/runs {body} reused a key for "
                                        f"another send: {answer.status_code}")
                if not taken and answer.status_code not in (200, 201):
                    raise PromiseBroken(f"H1/H3: POST /api/v1/runs {body}: {answer.text}")
            else:
                args = ["send", "adhoc"]
                for k in chosen:
                    args += ["--item", str(ids[k])]
                for frequency in frequencies:
                    args += ["--frequency", frequency]
                if key:
                    args += ["--key", key]
                result = self.h.cli(*args)
                if (result.exit_code != 0) != taken:
                    raise PromiseBroken(f"H2: 'digest {' '.join(args)}' (key taken: {taken}): "
                                        f"exit {result.exit_code}: {result.output}")

        self.step("adhoc", lambda now: self.model.adhoc(chosen, tuple(frequencies), key,
                                                        also or h3, now), system, refuse)
        if not (also or h3):
            self.next_digest_repeats_nothing()

    def next_digest_repeats_nothing(self) -> None:
        """N1, H3, seen from the other side: what ``digest preview`` says each reader's next
        message would carry holds nothing they already received (a send that forgot to claim
        its items shows here at once, before any digest goes)."""
        folder = Path(self.h.settings.var_dir) / "preview"
        for email, reader in self.model.readers.items():
            if not reader.received or not self.model.mailable(email):
                continue
            result = self.h.cli("preview", email, "--out", str(folder))
            if result.exit_code != 0:
                continue  # nothing to preview
            text_file = folder / f"{email.replace('@', '_at_')}.txt"
            again = item_keys(text_file.read_text(encoding="utf-8")) & reader.received
            if again:
                raise PromiseBroken(f"N1: {email}'s next message (digest preview) would carry "
                                    f"{sorted(again)}, which they already received")

    @precondition(lambda self: bool(self.last_delivery))
    @rule(email=emails)
    def hard_bounce(self, email):
        if email not in self.last_delivery:
            return
        delivery_id = self.last_delivery[email]
        run_id = self.h.rows("SELECT run_id FROM deliveries WHERE id = :d", d=delivery_id)
        if not run_id:
            return
        report = sample(HARD_5_1_1, **{
            "bounces+101@": f"bounces+{delivery_id}@", "gone@example.net": email,
            "X-Digest-Delivery: 101": f"X-Digest-Delivery: {delivery_id}",
            "<digest.7.101@": f"<digest.{run_id[0][0]}.{delivery_id}@"})

        def system(now):
            answer = self.h.client.post(
                "/api/v1/bounces", headers=AUTH | {"Content-Type": "message/rfc822"},
                content=report, params={"envelope_to": f"bounces+{delivery_id}@"
                                                        "newsroom.example.org"})
            assert answer.status_code == 200, answer.text

        self.step("hard_bounce",
                  lambda now: self.model.hard_bounce(email, now, report=delivery_id), system)

    @precondition(lambda self: bool(self.known_failed))
    @rule(pick=st.integers(0, 5), by_api=st.booleans())
    def resend_failed(self, pick, by_api):
        runs = sorted({r for r, in self.h.rows(
            "SELECT DISTINCT d.run_id FROM deliveries d JOIN digest_runs r ON r.id = d.run_id "
            "WHERE d.status = 'failed' AND r.status IN ('done', 'cancelled')")})
        if not runs:
            return
        run_id = runs[pick % len(runs)]
        failed = {}
        for delivery_id, email in self.h.rows("SELECT id, email FROM deliveries WHERE "
                                              "run_id = :r AND status = 'failed'", r=run_id):
            failed[email] = frozenset(self.contents.get(delivery_id, (email, set()))[1])

        def system(now):
            if by_api:
                self.h.client.post(f"/api/v1/runs/{run_id}/resend-failed", headers=AUTH)
            else:
                self.h.cli("runs", "resend-failed", str(run_id))

        self.step("resend_failed", lambda now: self.model.resend(run_id, failed, now), system)

    @rule(pick=st.integers(0, 5), release=st.booleans(), refuse=refusals)
    def decide_held(self, pick, release, refuse):
        held = self.h.rows("SELECT id, slot_key FROM digest_runs WHERE status = 'held'")
        if not held:
            return
        run_id, key = sorted(held)[pick % len(held)]
        if release:
            self.step("release", lambda now: self.model.release(key, now),
                      lambda now: self.h.cli("runs", "release", str(run_id)), refuse)
        else:
            self.step("cancel", lambda now: self.model.cancel(key, now),
                      lambda now: self.h.cli("runs", "cancel", str(run_id), "--yes"))


def beat_tick(settings) -> None:
    """The beat's periodic work, in-process: the functions workers/tasks.py's tick,
    plan_due_alerts, retry_deferred and sweep tasks call (and ``digest tick``)."""
    from digest.delivery import periodic as queue

    queue.send_due_slots(settings)
    queue.send_due_alerts(settings)
    queue.retry_deferred(settings)
    queue.sweep_lost_work(settings)


def form_fields(everything: bool, ticked: tuple[P.Filter, ...], p: Prefs) -> dict:
    fields: dict = {"mode": "everything" if everything else "chosen",
                    "filter_count": str(max(1, len(ticked))), "frequency": p.frequency,
                    "weekday": str(p.weekday), "hour": str(p.hour), "timezone": p.tz,
                    "group_by": "theme"}
    for i, f in enumerate(ticked):
        fields[f"f{i}-themes"] = sorted(f.themes)
        fields[f"f{i}-locations"] = sorted(f.locations)
        fields[f"f{i}-types"] = sorted(f.types)
    return fields


def filter_text(f: P.Filter) -> str:
    parts = [f"{name}={'|'.join(sorted(values))}" for name, values in
             (("themes", f.themes), ("locations", f.locations), ("types", f.types)) if values]
    return ";".join(parts)


# --- the test ---------------------------------------------------------------------------

def _examples() -> tuple[int, bool]:
    wanted = os.environ.get("DIGEST_MODEL_EXAMPLES")
    return (int(wanted), False) if wanted else (100, True)


@pytest.mark.timeout(3600)
def test_the_system_keeps_the_promise(promise_machine):
    examples, ci = _examples()
    run_state_machine_as_test(promise_machine, settings=hsettings(
        max_examples=examples, stateful_step_count=40, deadline=None, database=None,
        derandomize=ci, print_blob=False, report_multiple_bugs=False,
        phases=[Phase.generate, Phase.shrink] if not ci else [Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck)))
    print(f"\nmodel test: steps {dict(STEPS)}; messages {dict(MAILS)}; seconds "
          f"{ {k: round(v, 1) for k, v in SECONDS.items()} }")
