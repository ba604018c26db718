"""End-to-end cost of a weekly digest: select, render, send, and all of it together.

    python bench/pipeline.py [--subscribers 10000] [--items 200] [--database-url URL]
                             [--processes P] [--smtp sink|none] [--max-seconds 900]
                             [--profile DIR]

Builds a fresh database (a SQLite file in a temp dir by default; with a PostgreSQL URL it
creates its own database on that server and drops it at the end), fills it set-based with
a seeded, newsroom-like taxonomy, M items ingested in the last week and N subscribers with
1-2 random filters, then measures each stage of one ``weekly`` run for everyone:

- baseline: one SELECT per subscriber (``preview_items``) on a sample, extrapolated;
- select:   ``plan_scheduled_run`` (deliveries + the ledger, set-based);
- load:     the ORM load ``send_deliveries`` does (deliveries, subscribers, items);
- render:   ``MessageFactory.build`` (Jinja + text part + MIME) for every planned message;
- send:     the pre-built messages over SMTP, one connection per batch, to a MailSink
            (aiosmtpd) running in its own process so it does not take the sender's GIL;
- together: ``send_deliveries`` over the planned ids in batches (claim, load, render, send,
            record), in this process; then the run is put back to pending and sent again by
            P worker processes sharing the batches (as Celery prefork workers would).

Every figure in the table is measured in the same run. Progress goes to stderr, the table
to stdout. ``--max-seconds`` bounds the whole run: a step still running then is stopped,
named, and the table shows what was measured before it.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import make_url

from digest import db
from digest.delivery import SendResult, SMTPTransport, batches, load_batch, send_deliveries
from digest.mail import MessageFactory
from digest.models import (
    ContentType,
    Delivery,
    DeliveryStatus,
    DigestRun,
    Item,
    Location,
    RunStatus,
    Subscriber,
    SubscriberFilter,
    Theme,
    filter_content_types,
    filter_locations,
    filter_themes,
    item_locations,
    item_themes,
)
from digest.render import get_renderer
from digest.selection import delivery_contents, plan_scheduled_run, preview_items
from digest.settings import Settings
from digest.taxonomy import slugify

SEED = 20251013
BASELINE_SAMPLE = 500
KEEP_MESSAGES = 4000  # pre-built messages kept for the send step (reused in turn past that)

THEMES = [
    "Policing", "Human rights", "Elections", "Gender equality", "Media freedom",
    "Rule of law", "Democratization", "Conflict prevention and resolution", "Youth",
    "Combating human trafficking", "Border management", "Arms control", "Cyber/ICT security",
    "Countering terrorism", "Environmental activities", "Economic activities",
    "Good governance", "Minority rights", "Roma and Sinti", "Tolerance and non-discrimination",
]
REGIONS = {
    "South-Eastern Europe": [
        "OSCE Presence in Albania", "OSCE Mission to Bosnia and Herzegovina",
        "OSCE Mission in Kosovo", "OSCE Mission to Montenegro", "OSCE Mission to Serbia",
        "OSCE Mission to Skopje",
    ],
    "Eastern Europe": ["OSCE Mission to Moldova", "OSCE Support Programme for Ukraine",
                       "OSCE Project Co-ordinator in Ukraine"],
    "South Caucasus": ["OSCE Programme Office in Yerevan", "OSCE Project Co-ordinator in Baku",
                       "OSCE Office in Baku"],
    "Central Asia": [
        "OSCE Centre in Ashgabat", "OSCE Programme Office in Astana",
        "OSCE Programme Office in Bishkek", "OSCE Programme Office in Dushanbe",
        "OSCE Project Co-ordinator in Uzbekistan",
    ],
    "OSCE Secretariat": ["Transnational Threats Department", "Conflict Prevention Centre",
                         "Gender Issues Programme", "Office of the Secretary General"],
    "OSCE Institutions": [
        "Office for Democratic Institutions and Human Rights",
        "High Commissioner on National Minorities", "Representative on Freedom of the Media",
        "OSCE Parliamentary Assembly",
    ],
}
CONTENT_TYPES = [("News", 0.7), ("Press release", 0.3)]
ACTIONS = ["supports", "hosts", "concludes", "launches", "trains officials on", "opens a forum on",
           "publishes a report on", "welcomes progress on"]
SUMMARY = ("Participants from {place} and neighbouring municipalities discussed {theme} with "
           "experts, civil society and local institutions. The {n}-day event focused on practical "
           "steps, shared experience from the region and how to measure results over the next "
           "year. \u201cCo-operation across institutions is what makes progress last,\u201d said "
           "the Head of {place}, thanking the {theme} team and the donors who made it possible.")
ZONES = ["UTC", "Europe/Vienna", "Europe/Belgrade", "Europe/Kyiv", "Asia/Almaty",
         "America/New_York"]

SINK_CODE = r"""
import sys
from digest.devtools import MailSink

class CountingSink(MailSink):
    # Counts and drops: 10,000 digests kept in memory would only measure the sink's RAM.
    def _store(self, mail_from, rcpt_tos, data, **details):
        with self._lock:
            self._received += 1
            self.received_bytes = getattr(self, "received_bytes", 0) + len(data)
            return self._received

sink = CountingSink().start()
print(sink.port, flush=True)
for _ in sys.stdin:
    with sink._lock:
        print(sink._received, getattr(sink, "received_bytes", 0), flush=True)
sink.stop()
"""


# --- bounded run time ---------------------------------------------------------------------------

class Stopped(Exception):
    """The run went past --max-seconds (or was interrupted) during ``step``."""


class Watchdog:
    """Interrupts the main thread when the budget is spent; SQLite statements are aborted too."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = threading.Event()
        self.step = "setup"
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._main = threading.main_thread().ident

    def start(self) -> Watchdog:
        self._timer.start()
        return self

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired.set()
        progress(f"time budget of {self.seconds:.0f} s spent during step '{self.step}': stopping")
        signal.pthread_kill(self._main, signal.SIGINT)

    def sqlite_progress_handler(self) -> int:
        return 1 if self.fired.is_set() else 0  # non-zero aborts the running statement


T_START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f} s] {message}", file=sys.stderr, flush=True)


# --- database -----------------------------------------------------------------------------------

@contextmanager
def bench_database(url: str | None, tmpdir: Path):
    """A database of our own: a new SQLite file, or a new database on a PostgreSQL server."""
    if url is None or url.startswith("sqlite"):
        if url is not None and url not in ("sqlite://", "sqlite:///:memory:"):
            path = make_url(url).database
            if path and Path(path).exists():
                raise SystemExit(f"{path} exists: give a new file (it is deleted afterwards) "
                                 "or leave --database-url out for a temp file")
        own = url or f"sqlite:///{tmpdir / 'bench.db'}"
        try:
            yield own
        finally:
            db.engine_for(own).dispose()
            path = make_url(own).database
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    if not url.startswith("postgresql"):
        raise SystemExit("--database-url must be sqlite:///... or postgresql+psycopg://..., "
                         f"not {url}")
    server = make_url(url)
    name = f"digest_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    own = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield own
    finally:
        db.engine_for(own).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        progress(f"dropped database {name}")


class GivenSettings(Settings):
    """Settings from the values given only: the shell's DIGEST_* and .env (DKIM, batch
    size...) must not skew the figures."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_environment_sources):
        return (init_settings,)


def configure(url: str, smtp_port: int, tmpdir: Path) -> Settings:
    """The settings of every step, passed to the worker processes too."""
    return GivenSettings(
        database_url=url, broker_url="", smtp_host="127.0.0.1", smtp_port=smtp_port,
        secret_key=secrets.token_urlsafe(32), public_base_url="https://digest.example.org",
        var_dir=tmpdir / "var",
    )


# --- data ---------------------------------------------------------------------------------------

@dataclass
class Data:
    themes: int = 0
    places: int = 0
    regions: int = 0
    items: int = 0
    subscribers: int = 0
    filters: int = 0


def generate(session, n_subscribers: int, n_items: int, now: datetime, rng: random.Random,
             *, copy: bool = False, profiles: int = 0) -> Data:
    """Taxonomy, items and subscribers with explicit ids, inserted with executemany.

    With ``copy`` (PostgreSQL only) the rows go in by COPY, the subscribers' in chunks of
    ``COPY_CHUNK`` readers as they are drawn: the same rows from the same seed, fast and in
    bounded memory for a million readers."""
    copy = copy and session.get_bind().dialect.name == "postgresql"

    def add(table, rows):
        if rows and copy:
            _copy_rows(session, table, rows)
        elif rows:
            session.execute(insert(table), rows)

    add(Theme, [{"id": i, "slug": slugify(n), "name": n} for i, n in enumerate(THEMES, 1)])
    locations, regions, places = [], {}, {}
    for region, names in REGIONS.items():
        regions[region] = len(locations) + 1
        locations.append({"id": regions[region], "slug": slugify(region), "name": region,
                          "parent_id": None})
        for n in names:
            places[n] = len(locations) + 1
            locations.append({"id": places[n], "slug": slugify(n), "name": n,
                              "parent_id": regions[region]})
    add(Location, locations)
    add(ContentType, [{"id": i, "slug": slugify(n), "name": n}
                      for i, (n, _) in enumerate(CONTENT_TYPES, 1)])
    session.flush()

    theme_ids = list(range(1, len(THEMES) + 1))
    theme_weights = [1 / (rank ** 0.8) for rank in theme_ids]  # a few themes carry most news
    place_ids = list(places.values())
    parent = {row["id"]: row["parent_id"] for row in locations}
    siblings = {r: [p for p in place_ids if parent[p] == r] for r in regions.values()}
    ctype_ids, ctype_weights = [1, 2], [w for _, w in CONTENT_TYPES]
    place_names = {v: k for k, v in places.items()}

    items, it_rows, il_rows = [], [], []
    for i in range(1, n_items + 1):
        ingested = now - timedelta(seconds=rng.uniform(60, 6.5 * 86400))
        chosen_themes = _sample(rng, theme_ids, theme_weights, rng.choice((1, 2, 2, 3)))
        first = rng.choice(place_ids)
        chosen_places = [first]
        if rng.random() < 0.35:  # a second place, usually in the same region
            pool = siblings[parent[first]] if rng.random() < 0.7 else place_ids
            other = rng.choice(pool)
            if other != first:
                chosen_places.append(other)
        place, theme = place_names[first], THEMES[chosen_themes[0] - 1]
        items.append({
            "id": i, "guid": f"bench-item-{i}",
            "url": f"https://www.osce.org/newsroom/{600000 + i}",
            "title": f"{place} {rng.choice(ACTIONS)} {theme.lower()} in the region ({i})",
            "summary": SUMMARY.format(place=place, theme=theme.lower(), n=rng.randint(2, 5)),
            "published_at": ingested - timedelta(seconds=rng.uniform(0, 6 * 3600)),
            "ingested_at": ingested, "updated_at": ingested,
            "content_type_id": rng.choices(ctype_ids, ctype_weights)[0],
            "source": "bench", "is_backfill": False,
        })
        it_rows += [{"item_id": i, "theme_id": t} for t in chosen_themes]
        il_rows += [{"item_id": i, "location_id": p} for p in chosen_places]
    add(Item, items)
    add(item_themes, it_rows)
    add(item_locations, il_rows)

    subs, filters, ft, fl, fc = [], [], [], [], []
    n_filters = 0

    def flush() -> None:
        add(Subscriber, subs)
        add(SubscriberFilter, filters)
        add(filter_themes, ft)
        add(filter_locations, fl)
        add(filter_content_types, fc)
        for rows in (subs, filters, ft, fl, fc):
            rows.clear()

    region_ids = list(regions.values())

    def draw_filter(r: random.Random) -> tuple[list[int], list[int], bool]:
        """One filter: (theme ids, location ids, press releases only)."""
        shape = r.random()
        if shape < 0.45:  # themes only
            themes_, locs, types = r.randint(1, 3), 0, 0
        elif shape < 0.65:  # places or a region only
            themes_, locs, types = 0, r.randint(1, 2), 0
        elif shape < 0.9:  # themes in a place or region
            themes_, locs, types = r.randint(1, 2), 1, 0
        else:  # press releases on some themes
            themes_, locs, types = r.randint(1, 2), 0, 1
        chosen_themes = _sample(r, theme_ids, theme_weights, themes_)
        chosen_places: list[int] = []
        if locs:
            pool = region_ids if r.random() < 0.25 else place_ids
            chosen_places = r.sample(pool, locs)
        return chosen_themes, chosen_places, bool(types)

    # With ``profiles``: every reader takes the time zone, grouping and filters of one of
    # that many reader profiles, the popular ones most often (weights 1/rank), as readers of
    # one newsroom who mostly keep its defaults and pick its main sections would.
    shapes: list[tuple[str, str, list[tuple[list[int], list[int], bool]]]] = []
    if profiles:
        drawn = random.Random(rng.random())
        shapes = [(drawn.choice(ZONES), drawn.choice(("theme", "theme", "location")),
                   [draw_filter(drawn) for _ in range(drawn.choice((1, 1, 1, 2)))])
                  for _ in range(profiles)]
        shape_weights = [1 / rank for rank in range(1, profiles + 1)]
    for s in range(1, n_subscribers + 1):
        if copy and len(subs) >= COPY_CHUNK:
            flush()
        created = now - timedelta(days=rng.uniform(8, 400))
        subs.append({
            "id": s, "email": f"reader{s:07d}@example.org", "status": "active",
            "frequency": "weekly", "timezone": rng.choice(ZONES), "weekday": rng.randrange(7),
            "hour": rng.randrange(6, 10), "group_by": rng.choice(("theme", "theme", "location")),
            "watermark": None, "soft_bounces": 0, "created_at": created, "confirmed_at": created,
        })
        if shapes:
            zone, group_by, chosen = rng.choices(shapes, shape_weights)[0]
            subs[-1].update(timezone=zone, group_by=group_by)
        else:
            chosen = [draw_filter(rng) for _ in range(rng.choice((1, 1, 1, 2)))]
        for themes_of, places_of, press_only in chosen:
            n_filters += 1
            f = n_filters
            filters.append({"id": f, "subscriber_id": s})
            ft += [{"filter_id": f, "theme_id": t} for t in themes_of]
            fl += [{"filter_id": f, "location_id": p} for p in places_of]
            if press_only:
                fc.append({"filter_id": f, "content_type_id": 2})
    flush()
    if session.get_bind().dialect.name == "postgresql":
        # Explicit ids leave the sequences at 1; later inserts would collide.
        for table in ("themes", "locations", "content_types", "items", "subscribers",
                      "subscriber_filters"):
            session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                 f"(SELECT max(id) FROM {table}))"))
    session.commit()
    return Data(len(THEMES), len(places), len(regions), n_items, n_subscribers, n_filters)


COPY_CHUNK = 50_000


def _copy_rows(session, table, rows: list[dict]) -> None:
    """``rows`` (dicts of one shape) into ``table`` by COPY on the session's connection."""
    table = getattr(table, "__table__", table)
    columns = list(rows[0])
    raw = session.connection().connection.driver_connection
    names = ", ".join(f'"{c}"' for c in columns)
    with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as out:
        for row in rows:
            out.write_row([row[c] for c in columns])


def _sample(rng: random.Random, population: list[int], weights: list[float], k: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < k:
        value = rng.choices(population, weights)[0]
        if value not in chosen:
            chosen.append(value)
    return chosen


GENERATED_TABLES = ("themes", "locations", "content_types", "items", "item_themes",
                    "item_locations", "subscribers", "subscriber_filters", "filter_themes",
                    "filter_locations", "filter_content_types")


def analyze(session) -> None:
    """Statistics for the tables we filled, as a live database has them (the planner needs them).

    Only those: ANALYZE on the still empty ledger tells PostgreSQL it holds nothing, and the
    first plan then turns quadratic (bench/README.md), a trap reported there, not measured here.
    """
    for table in GENERATED_TABLES:
        session.execute(text(f"ANALYZE {table}"))
    session.commit()


# --- mail sink ----------------------------------------------------------------------------------

class SinkProcess:
    """MailSink in a child process; ``count()`` asks it how many messages it has taken."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", SINK_CODE], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the mail sink did not start (said {line!r})")
        self.port = int(line)

    def count(self) -> tuple[int, int]:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        received, size = self.proc.stdout.readline().split()
        return int(received), int(size)

    def cpu(self) -> float:
        """CPU seconds (user + system) the sink process has used so far (Linux /proc)."""
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NullTransport:
    """--smtp none: every message is accepted at once (measures everything but SMTP)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def send(self, mail_from: str, rcpt: str, data: bytes) -> SendResult:
        return SendResult(250, "2.0.0 discarded by the benchmark")


def _transport(smtp: str):
    return NullTransport() if smtp == "none" else None  # None: SMTP from the settings


# --- worker processes (together, P processes) ---------------------------------------------------

def _worker(jobs, results, barrier, smtp: str, settings: Settings) -> None:
    """One prefork-like worker: warm up (engine, renderer), then send batches until None."""
    try:
        with db.engine_for(settings.database_url).connect():
            pass
        get_renderer("digest", settings)
        barrier.wait()
        totals = {"pid": os.getpid(), "batches": 0, "claimed": 0, "sent": 0, "busy": 0.0}
        cpu0 = time.process_time()
        while (batch := jobs.get()) is not None:
            t0 = time.perf_counter()
            r = send_deliveries(batch, transport=_transport(smtp), settings=settings)
            totals["busy"] += time.perf_counter() - t0
            totals["batches"] += 1
            totals["claimed"] += r.claimed
            totals["sent"] += r.sent
        totals["cpu"] = time.process_time() - cpu0
        results.put(totals)
    except BaseException:  # noqa: BLE001 - reported by the parent, which stops the run
        results.put({"pid": os.getpid(), "error": traceback.format_exc()})


def send_in_processes(ids: list[int], batch_size: int, processes: int,
                      smtp: str, settings: Settings) -> tuple[float, list[dict]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no engine, pool or SQLite handle inherited through fork
    jobs, results = ctx.Queue(), ctx.Queue()
    barrier = ctx.Barrier(processes + 1)
    for batch in batches(ids, batch_size):
        jobs.put(batch)
    for _ in range(processes):
        jobs.put(None)
    workers = [ctx.Process(target=_worker, args=(jobs, results, barrier, smtp, settings),
                           daemon=True)
               for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=120)  # all warm: start the clock
        t0 = time.perf_counter()
        reports = [results.get() for _ in workers]
        seconds = time.perf_counter() - t0
        for w in workers:
            w.join(timeout=30)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError("a worker process failed:\n" + errors[0])
    return seconds, reports


# --- the run ------------------------------------------------------------------------------------

@dataclass
class Row:
    step: str
    count: int
    seconds: float
    unit: str = "msg/s"
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("inf")


@dataclass
class Report:
    facts: list[tuple[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batch_size: int | None = None  # known once the settings are


@contextmanager
def profiled(directory: Path | None, name: str):
    if directory is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        directory.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(directory / f"{name}.prof")
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime")
        print(f"--- profile of {name} (top by own time; {directory / (name + '.prof')}) ---",
              file=sys.stderr)
        stats.print_stats(12)


class Bench:
    """The steps of one run, in order; each appends its row to the report."""

    def __init__(self, args, report: Report, watchdog: Watchdog, settings: Settings,
                 sink: SinkProcess | None):
        self.args, self.report, self.watchdog = args, report, watchdog
        self.url, self.sink = settings.database_url, sink
        self.Session = db._sessionmaker(self.url)
        self.settings = settings
        self.batch_size = self.settings.batch_size
        self.now = datetime.now(UTC).replace(second=0, microsecond=0)
        self.rng = random.Random(SEED)
        self.previews: dict[int, set[int]] = {}
        self.pending: list[int] = []
        self.run_id = 0
        self.kept: list[tuple[str, str, bytes]] = []

    def step(self, name: str) -> None:
        self.watchdog.step = name

    def sink_cpu(self) -> float:
        return self.sink.cpu() if self.sink else 0.0

    def setup(self) -> None:
        engine = db.engine_for(self.url)
        kind = engine.dialect.name
        if kind == "sqlite":
            event.listen(engine, "connect", lambda conn, _record: conn.set_progress_handler(
                self.watchdog.sqlite_progress_handler, 100_000))
        db.upgrade(self.url)
        with engine.connect() as conn:
            version = conn.execute(text("SELECT sqlite_version()" if kind == "sqlite"
                                        else "SHOW server_version")).scalar()
        where = ("file in a temp dir" if kind == "sqlite"
                 else "a database of its own, dropped after")
        self.report.facts += [
            ("machine", f"os.cpu_count()={os.cpu_count()}, Python {platform.python_version()}"),
            ("database", f"{'SQLite' if kind == 'sqlite' else 'PostgreSQL'} {version} ({where})"),
        ]

    def generate(self) -> Data:
        self.step("data generation")
        t0 = time.perf_counter()
        with self.Session() as session:
            data = generate(session, self.args.subscribers, self.args.items, self.now, self.rng)
            analyze(session)
        seconds = time.perf_counter() - t0
        progress(f"generated {data.subscribers} subscribers ({data.filters} filters) and "
                 f"{data.items} items in {seconds:.1f} s")
        self.report.facts.append(("data", (
            f"N={data.subscribers} subscribers ({data.filters} filters), M={data.items} items "
            f"in the last week; {data.themes} themes, {data.places} places in {data.regions} "
            f"regions, 2 content types (seed {SEED}; generated in {seconds:.1f} s)")))
        return data

    def baseline(self, data: Data) -> Row:
        """One SELECT per subscriber; before planning, so it sees the same (empty) ledger."""
        self.step("baseline")
        n = min(BASELINE_SAMPLE, data.subscribers)
        with self.Session() as session:
            ids = sorted(self.rng.sample(range(1, data.subscribers + 1), n))
            sample = list(session.scalars(select(Subscriber).where(Subscriber.id.in_(ids))))
            t0 = time.perf_counter()
            with profiled(self.args.profile, "baseline"):
                for sub in sample:
                    items = preview_items(session, sub, as_of=self.now, settings=self.settings)
                    self.previews[sub.id] = {i.id for i in items}
            seconds = time.perf_counter() - t0
        row = Row(f"baseline: 1 query/subscriber ({n} sampled)", n, seconds, "subs/s")
        row.note = f"-> {data.subscribers / row.rate:.0f} s for all N (extrapolated)"
        self.report.rows.append(row)
        progress(f"baseline: {n} preview_items calls in {seconds:.2f} s")
        return row

    def select(self, data: Data, baseline: Row) -> None:
        self.step("select")
        with self.Session() as session:
            t0 = time.perf_counter()
            with profiled(self.args.profile, "select"):
                planned = plan_scheduled_run(session, "weekly", now=self.now, everyone=True,
                                             settings=self.settings)
                session.commit()
            seconds = time.perf_counter() - t0
            self.pending, self.run_id = planned.pending_ids, planned.run_id
            avg, low, high = session.execute(
                select(func.avg(Delivery.item_count), func.min(Delivery.item_count),
                       func.max(Delivery.item_count))
                .where(Delivery.run_id == self.run_id,
                       Delivery.status == DeliveryStatus.pending)).one()
            chosen: dict[int, set[int]] = {s: set() for s in self.previews}
            contents = delivery_contents(session, Delivery.__table__.c.run_id == self.run_id)
            for sub_id, item_id in session.execute(
                    select(Delivery.subscriber_id, contents.c.item_id)
                    .join(contents, contents.c.delivery_id == Delivery.id)
                    .where(Delivery.run_id == self.run_id,
                           Delivery.subscriber_id.in_(list(self.previews)))):
                chosen[sub_id].add(item_id)
        progress(f"select: planned {planned.planned} messages ({planned.skipped} skipped) "
                 f"in {seconds:.2f} s")
        if not self.pending:
            raise RuntimeError("the run planned no message: nothing to render or send")
        row = Row("select: plan_scheduled_run (set-based)", len(self.pending), seconds)
        row.note = (f"{data.subscribers / seconds:.0f} subs/s = "
                    f"x{data.subscribers / seconds / baseline.rate:.1f} the baseline")
        self.report.rows.append(row)
        agree = sum(1 for s, items in self.previews.items() if items == chosen[s])
        self.report.notes.append(
            f"baseline and set-based plan pick the same items for all {agree} sampled subscribers"
            if agree == len(self.previews) else
            f"MISMATCH: baseline and set-based plan agree on {agree} of {len(self.previews)} "
            "sampled subscribers only")
        self.report.facts.append(("planned", (
            f"{len(self.pending)} messages ({planned.skipped} empty, skipped); items/message avg "
            f"{float(avg):.1f}, min {low}, max {high} (a message shows at most "
            f"{self.settings.max_items_per_digest})")))

    def render(self) -> None:
        """Load as send_deliveries does, then MessageFactory.build; the two timed apart."""
        self.step("render")
        factory = MessageFactory(self.settings)
        get_renderer("digest", self.settings)  # built once per process, as in a worker
        load_s = build_s = 0.0
        total_bytes = 0
        with profiled(self.args.profile, "render"):
            for batch in batches(self.pending, self.batch_size):
                with self.Session() as session:
                    t0 = time.perf_counter()
                    deliveries = load_batch(session, batch)
                    t1 = time.perf_counter()
                    for d, items in deliveries:
                        _, data = factory.build(d, d.run, items)
                        total_bytes += len(data)
                        if len(self.kept) < KEEP_MESSAGES:
                            self.kept.append((factory.return_path(d.id), d.email, data))
                    build_s += time.perf_counter() - t1
                    load_s += t1 - t0
        n = len(self.pending)
        self.report.rows.append(Row("load: deliveries+items (ORM, per batch)", n, load_s))
        self.report.rows.append(Row("render: MessageFactory.build (+MIME)", n, build_s))
        self.report.facts.append(
            ("message", f"{total_bytes / n / 1024:.1f} KB on average (MIME, QP bodies)"))
        progress(f"render: {n} messages built in {build_s:.2f} s (load {load_s:.2f} s)")

    def send(self) -> None:
        """Pre-built messages over SMTP, a new connection per batch as send_deliveries opens."""
        self.step("send")
        n, kept = len(self.pending), self.kept
        before, _ = self.sink.count()
        cpu0, sink_cpu = time.process_time(), self.sink_cpu()
        t0 = time.perf_counter()
        with profiled(self.args.profile, "send"):
            for start in range(0, n, self.batch_size):
                with SMTPTransport(self.settings) as smtp:
                    for k in range(start, min(start + self.batch_size, n)):
                        smtp.send(*kept[k % len(kept)])
        seconds = time.perf_counter() - t0
        row = Row("send: SMTP to MailSink, pre-built", n, seconds)
        row.note = (f"1 connection per {self.batch_size}; CPU sender "
                    f"{time.process_time() - cpu0:.1f} s, sink {self.sink_cpu() - sink_cpu:.1f} s")
        received = self.sink.count()[0] - before
        if received != n:
            row.note += f"; SINK GOT {received}"
        if n > len(kept):
            row.note += f"; {len(kept)} distinct messages reused"
        self.report.rows.append(row)
        progress(f"send: {n} messages in {seconds:.2f} s")

    def together(self) -> Row:
        self.step("together, 1 process")
        before = self.sink.count()[0] if self.sink else 0
        cpu0, sink_cpu = time.process_time(), self.sink_cpu()
        sent = 0
        t0 = time.perf_counter()
        with profiled(self.args.profile, "together"):
            for batch in batches(self.pending, self.batch_size):
                sent += send_deliveries(batch, transport=_transport(self.args.smtp),
                                        settings=self.settings).sent
        seconds = time.perf_counter() - t0
        row = Row("together: send_deliveries, 1 process", sent, seconds)
        row.note = f"CPU this process {time.process_time() - cpu0:.1f} s" + (
            f", sink {self.sink_cpu() - sink_cpu:.1f} s" if self.sink else "")
        self.report.rows.append(row)
        self.check_sent(row, before)
        progress(f"together (1 process): {sent} sent in {seconds:.2f} s")
        return row

    def together_processes(self, one: Row) -> None:
        p = self.args.processes
        self.step("reset")
        reset_run(self.Session, self.run_id)  # the same messages once more
        self.step(f"together, {p} processes")
        before = self.sink.count()[0] if self.sink else 0
        sink_cpu = self.sink_cpu()
        seconds, reports = send_in_processes(self.pending, self.batch_size, p, self.args.smtp,
                                             self.settings)
        row = Row(f"together: send_deliveries, {p} process{'es' if p > 1 else ''}",
                  sum(r["sent"] for r in reports), seconds)
        row.note = (f"x{one.seconds / seconds:.2f} vs 1 process; batches "
                    f"{'/'.join(str(r['batches']) for r in reports)}; CPU workers "
                    f"{sum(r['cpu'] for r in reports):.1f} s" +
                    (f", sink {self.sink_cpu() - sink_cpu:.1f} s" if self.sink else ""))
        self.report.rows.append(row)
        self.check_sent(row, before)
        progress(f"together ({p} processes): {row.count} sent in {seconds:.2f} s")

    def check_sent(self, row: Row, sink_before: int) -> None:
        """Every planned message was sent (rows) and arrived (sink); else the row says so."""
        expected = len(self.pending)
        with self.Session() as session:
            sent_rows = session.scalar(select(func.count()).where(
                Delivery.run_id == self.run_id, Delivery.status == DeliveryStatus.sent))
        problems = []
        if row.count != expected or sent_rows != expected:
            problems.append(f"{sent_rows} of {expected} rows sent")
        received = self.sink.count()[0] - sink_before if self.sink else expected
        if received != expected:
            problems.append(f"sink got {received}")
        if problems:
            row.note += "; INCOMPLETE: " + ", ".join(problems)


def reset_run(Session, run_id: int) -> None:
    """Put a sent run back to pending, as if just planned (items and ledger stay)."""
    with Session() as session:
        session.execute(update(Delivery).where(Delivery.run_id == run_id,
                                               Delivery.status == DeliveryStatus.sent)
                        .values(status=DeliveryStatus.pending, attempts=0, lease_until=None,
                                next_attempt_at=None, smtp_code=None, smtp_reply=None,
                                note=None, message_id=None, sent_at=None))
        session.execute(update(DigestRun).where(DigestRun.id == run_id)
                        .values(status=RunStatus.sending, finished_at=None))
        session.commit()


def run(args, report: Report, watchdog: Watchdog, tmpdir: Path) -> None:
    sink = None
    with bench_database(args.database_url, tmpdir) as url:
        try:
            if args.smtp == "sink":
                sink = SinkProcess()
            settings = configure(url, sink.port if sink else 1, tmpdir)
            report.batch_size = settings.batch_size
            bench = Bench(args, report, watchdog, settings, sink)
            bench.setup()
            data = bench.generate()
            baseline = bench.baseline(data)
            bench.select(data, baseline)
            bench.render()
            if sink is not None:
                bench.send()
            one = bench.together()
            if args.processes >= 1:
                bench.together_processes(one)
            bench.step("cleanup")
        finally:
            if sink is not None:
                sink.stop()


def print_report(report: Report, args) -> None:
    print("Digest pipeline benchmark: one weekly run for everyone")
    for key, value in report.facts:
        print(f"  {key + ':':<9} {value}")
    smtp = ("MailSink (aiosmtpd) in its own process, counting only" if args.smtp == "sink"
            else "none (messages accepted without SMTP)")
    print(f"  {'smtp:':<9} {smtp}; batch_size={report.batch_size}")
    print(f"  {'step':<46} {'count':>7} {'seconds':>8} {'rate':>9}")
    for r in report.rows:
        print(f"  {r.step:<46} {r.count:>7} {r.seconds:>8.2f} {r.rate:>9.0f} {r.unit:<6} {r.note}")
    for note in report.notes:
        print(f"  note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--database-url", default=None,
                        help="default: a new SQLite file in a temp dir; a postgresql+psycopg:// "
                             "URL gets a database of its own on that server, dropped at the end")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="worker processes for the last step (0 skips it)")
    parser.add_argument("--smtp", choices=("sink", "none"), default="sink")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="stop (and clean up) a run that takes longer than this")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile file per single-process step into this folder")
    args = parser.parse_args()
    if args.subscribers < 1 or args.items < 1 or args.processes < 0:
        parser.error("--subscribers and --items must be at least 1, --processes at least 0")

    report = Report()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: clean up like Ctrl-C
    watchdog = Watchdog(args.max_seconds).start()
    status = 0
    with tempfile.TemporaryDirectory(prefix="digest-bench-") as tmp:
        try:
            run(args, report, watchdog, Path(tmp))
        except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - reported, then exit 2
            status = 2
            if watchdog.fired.is_set():
                why = f"took more than --max-seconds={args.max_seconds:.0f}"
            elif isinstance(exc, KeyboardInterrupt):
                why = "interrupted"
            else:
                traceback.print_exc()
                why = f"{type(exc).__name__}: {exc}"
            report.notes.append(f"STOPPED in step '{watchdog.step}': {why}; "
                                "the steps after it were not measured")
        finally:
            watchdog.cancel()
    print_report(report, args)
    return status


if __name__ == "__main__":
    sys.exit(main())
