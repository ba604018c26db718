"""Reading the record at ten million deliveries: /metrics, `digest runs`, `digest deliveries`,
the admin's lists and the nightly prune, on ten weekly runs of N readers.

    python bench/records.py [--database-url postgresql+psycopg://USER@HOST:5432/DB]
        [--readers 1000000] [--repeat 7] [--json]

Creates a database of its own on the server (dropped at the end), upgrades it with the
project's migrations, and fills it with set-based SQL (generate_series, no planning): N
readers, ten weekly runs of N deliveries each (nine done: mostly sent, some skipped, failed,
cancelled; the newest still sending, with pending, sending, deferred rows), bounce reports for
half the failed ones. Then it times each reader of the record (p50/p95 of --repeat calls),
prints the plans of the metrics' queries (no Seq Scan on deliveries), and last the prune of
the oldest run. "before" rows time the queries those readers ran before migration 0012
(the grouped counts over ``deliveries``, sqladmin's full count), in the same database.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import GivenSettings, bench_database, configure  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from digest import db  # noqa: E402

DEFAULT_URL = os.environ.get("DIGEST_BENCH_PG_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RUNS = 10
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

# The queries /metrics ran before migration 0012 (digest/web/metrics.py at ac7648a).
BEFORE_METRICS = {
    "deliveries by kind and status": """
        SELECT digest_runs.kind, deliveries.status, count(*), count(deliveries.sent_at)
        FROM deliveries JOIN digest_runs ON digest_runs.id = deliveries.run_id
        GROUP BY digest_runs.kind, deliveries.status""",
    "too large": """
        SELECT digest_runs.kind, count(*) FROM deliveries
        JOIN digest_runs ON digest_runs.id = deliveries.run_id
        WHERE deliveries.status = 'failed' AND deliveries.note LIKE 'message too large:%%'
        GROUP BY digest_runs.kind""",
    "oldest unsent and due": """
        SELECT min(deliveries.created_at),
               min(coalesce(deliveries.next_attempt_at, deliveries.created_at)) FILTER (
                 WHERE deliveries.status = 'pending' OR (deliveries.status = 'deferred'
                       AND deliveries.next_attempt_at <= %(now)s))
        FROM deliveries JOIN digest_runs ON digest_runs.id = deliveries.run_id
        WHERE deliveries.status IN ('pending', 'sending', 'deferred')
          AND digest_runs.status = 'sending'""",
    "bounces by run kind and fault": """
        SELECT digest_runs.kind, bounces.kind, count(*) FROM bounces
        LEFT OUTER JOIN deliveries ON deliveries.id = bounces.delivery_id
        LEFT OUTER JOIN digest_runs ON digest_runs.id = deliveries.run_id
        GROUP BY digest_runs.kind, bounces.kind""",
}
# The throughput an ETA used before 0012 (`digest runs`, the admin's runs list, with a run
# sending): the last hour's sending, then the last finished runs', grouped over deliveries.
BEFORE_THROUGHPUT = """
    SELECT count(*), min(sent_at), max(sent_at) FROM deliveries
    WHERE status = 'sent' AND sent_at IS NOT NULL AND {where} GROUP BY run_id"""
# `digest deliveries --run 3` before: the run's rows by id, newest first.
BEFORE_RUN_LISTING = """SELECT * FROM deliveries WHERE run_id = 3 ORDER BY id DESC LIMIT 200"""
# The prune's pass over the log before: the count of old final rows kept and the keyset on
# id reading on to the end of the table (the ledger conditions left out: only slower).
BEFORE_PRUNE_PASS = {
    "count of the old final rows": """
        SELECT count(*) FROM deliveries WHERE status IN ('sent', 'failed', 'skipped',
            'cancelled', 'dry_run') AND created_at < %(cutoff)s
          AND EXISTS (SELECT 1 FROM digest_runs WHERE digest_runs.id = deliveries.run_id
                      AND digest_runs.status IN ('done', 'cancelled'))""",
    "keyset on id to the end": """
        SELECT id FROM deliveries WHERE status IN ('sent', 'failed', 'skipped',
            'cancelled', 'dry_run') AND created_at < %(cutoff)s
          AND EXISTS (SELECT 1 FROM digest_runs WHERE digest_runs.id = deliveries.run_id
                      AND digest_runs.status IN ('done', 'cancelled'))
          AND id > 0 ORDER BY id LIMIT 1000""",
}
# runs_progress before 0012: one grouped count over the listed runs' deliveries.
BEFORE_PROGRESS = """SELECT run_id, status, count(*) FROM deliveries
                     WHERE run_id IN ({ids}) GROUP BY run_id, status"""
# sqladmin's count of a list page, before the bounded count.
BEFORE_ADMIN_COUNT = "SELECT count(*) FROM (SELECT deliveries.id FROM deliveries) AS anon"


def fill(url: str, readers: int) -> dict[str, float]:
    """Readers, ten weekly runs of a delivery each, bounces: set-based, one statement a
    table (a run), committed; the seconds each part took."""
    engine = db.engine_for(url)
    took: dict[str, float] = {}
    with engine.begin() as conn:
        conn.exec_driver_sql("SET synchronous_commit = off")
        started = time.perf_counter()
        conn.execute(text("""
            INSERT INTO subscribers (id, email, status, frequency, timezone, weekday, hour,
                                     group_by, soft_bounces, created_at, confirmed_at)
            SELECT g, 'reader' || g || '@example.org',
                   CASE WHEN g % 50 = 0 THEN 'unsubscribed' WHEN g % 97 = 0 THEN 'suppressed'
                        ELSE 'active' END,
                   'weekly', 'UTC', 0, 8, 'theme', 0, :t0, :t0
            FROM generate_series(1, :n) AS g"""), {"n": readers, "t0": NOW - timedelta(days=400)})
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), "
                             "(SELECT max(id) FROM subscribers))")
        took["subscribers"] = time.perf_counter() - started
        for run in range(1, RUNS + 1):
            created = NOW - timedelta(weeks=RUNS - run, hours=1)
            sending = run == RUNS
            conn.execute(text("""
                INSERT INTO digest_runs (id, kind, slot_key, cutoff, status, params, dry_run,
                                         planned_count, skipped_count, created_at, finished_at)
                VALUES (:id, 'weekly', :slot, :created, :status, '{}', false, :n, 0,
                        :created, :finished)"""), {
                "id": run, "slot": f"weekly:{created:%Y-%m-%d}", "created": created,
                "status": "sending" if sending else "done", "n": readers,
                "finished": None if sending else created + timedelta(hours=3)})
            started = time.perf_counter()
            # Done runs: 96% sent, 1.5% skipped, 1.5% failed (a tenth of them over the size
            # limit), 1% cancelled. The sending run: the first 60% as a done run's, then 1%
            # sending, 2% deferred (half due), the rest pending.
            conn.execute(text("""
                INSERT INTO deliveries (run_id, subscriber_id, email, status, item_count,
                    attempts, next_attempt_at, created_at, updated_at, sent_at, note,
                    smtp_code, smtp_reply, message_id)
                SELECT :run, g, 'reader' || g || '@example.org', s.status, 12,
                       CASE WHEN s.status IN ('pending', 'skipped', 'cancelled') THEN 0 ELSE 1 END,
                       CASE WHEN s.status = 'deferred'
                            THEN :now + (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END)
                                 * interval '20 minutes' END,
                       :created, :created + interval '1 hour',
                       CASE WHEN s.status = 'sent' THEN :created + interval '1 hour' END,
                       CASE WHEN s.status = 'failed' AND g % 10 = 0
                              THEN 'message too large: 552 5.3.4 over the limit'
                            WHEN s.status = 'failed' THEN 'gave up after 3 attempts'
                            WHEN s.status = 'cancelled' THEN 'cancelled: reader left'
                            WHEN s.status = 'skipped' THEN 'nothing matched' END,
                       CASE WHEN s.status = 'sent' THEN 250 WHEN s.status = 'failed' THEN 550 END,
                       CASE WHEN s.status = 'sent' THEN '250 2.0.0 OK queued'
                            WHEN s.status = 'failed' THEN '550 5.1.1 no such user' END,
                       CASE WHEN s.status = 'sent' THEN '<' || :run || '.' || g || '@digest>' END
                FROM generate_series(1, :n) AS g,
                LATERAL (SELECT CASE
                    WHEN :sending AND g > :n * 0.63 THEN 'pending'
                    WHEN :sending AND g > :n * 0.61 THEN 'deferred'
                    WHEN :sending AND g > :n * 0.60 THEN 'sending'
                    WHEN g % 1000 < 960 THEN 'sent'
                    WHEN g % 1000 < 975 THEN 'skipped'
                    WHEN g % 1000 < 990 THEN 'failed'
                    ELSE 'cancelled' END AS status) AS s
                ORDER BY g"""), {"run": run, "n": readers, "created": created, "now": NOW,
                                 "sending": sending})
            took[f"deliveries run {run}"] = time.perf_counter() - started
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('digest_runs', 'id'), "
                             f"{RUNS})")
        started = time.perf_counter()
        conn.exec_driver_sql("""
            INSERT INTO bounces (delivery_id, email, status_code, kind, diagnostic, report_hash,
                                 created_at)
            SELECT id, email, '5.1.1', 'hard', 'no such user', md5(id::text), created_at
            FROM deliveries WHERE status = 'failed' AND id %% 2 = 0""")
        took["bounces"] = time.perf_counter() - started
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    took["vacuum analyze"] = time.perf_counter() - started
    return took


def timed(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    call()  # warm: connections, caches, the first plan
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return {"p50_ms": statistics.median(seconds) * 1000, "p95_ms": p95 * 1000}


def sql_call(url: str, statement: str, params: dict[str, Any] | None = None
             ) -> Callable[[], Any]:
    def call() -> Any:
        with db.engine_for(url).connect() as conn:
            return conn.exec_driver_sql(statement, params or {}).all()
    return call


def cli_call(args: list[str]) -> Callable[[], Any]:
    from typer.testing import CliRunner

    from digest.cli import app

    runner = CliRunner()

    def call() -> Any:
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        if result.exit_code != 0:
            raise RuntimeError(f"digest {' '.join(args)}: {result.output}{result.exception!r}")
        return result.output
    return call


def metrics_plans(url: str) -> list[tuple[str, str]]:
    """Each statement one scrape runs, with its plan (EXPLAIN, same parameters)."""
    from digest.web.metrics import _read_database

    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        seen.append((statement, parameters))

    from digest.web.metrics import _scrape_engine

    engine = _scrape_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        _read_database(url)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    plans = []
    with db.engine_for(url).connect() as conn:
        for statement, parameters in seen:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                "EXPLAIN " + statement, parameters or {}))
            plans.append((" ".join(statement.split()), plan))
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="a PostgreSQL server (a database of our own is created there)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--no-prune", action="store_true", help="skip the prune (last)")
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        raise SystemExit("bench/records.py measures PostgreSQL: --database-url postgresql+...")
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    figures: dict[str, Any] = {"readers": args.readers, "deliveries": args.readers * RUNS,
                               "cores": os.cpu_count(), "repeat": args.repeat, "rows": []}
    say(f"bench/records.py: {args.readers:,} readers, {RUNS} weekly runs "
        f"({args.readers * RUNS:,} deliveries), {os.cpu_count()} cores, "
        f"p50/p95 of {args.repeat} calls")
    with tempfile.TemporaryDirectory() as tmp, \
            bench_database(args.database_url, Path(tmp)) as url:
        started = time.perf_counter()
        db.upgrade(url)
        took = fill(url, args.readers)
        figures["fill_seconds"] = time.perf_counter() - started
        figures["fill"] = took
        say(f"filled in {figures['fill_seconds']:.0f} s "
            f"({', '.join(f'{k} {v:.1f} s' for k, v in took.items())})")
        settings = configure(url, 25, Path(tmp))
        os.environ["DIGEST_DATABASE_URL"] = url
        os.environ["DIGEST_VAR_DIR"] = str(Path(tmp) / "var")
        os.environ["DIGEST_BROKER_URL"] = ""
        from digest.settings import reset_settings_cache

        reset_settings_cache()
        rows: list[dict[str, Any]] = figures["rows"]

        def measure(name: str, when: str, call: Callable[[], Any], repeat: int = args.repeat
                    ) -> None:
            row = {"what": name, "when": when, **timed(call, repeat)}
            rows.append(row)
            say(f"  {name:<52} {when:<7} p50 {row['p50_ms']:9.1f} ms   "
                f"p95 {row['p95_ms']:9.1f} ms")

        from digest.web.metrics import _read_database

        for name, statement in BEFORE_METRICS.items():
            measure(f"/metrics: {name}", "before", sql_call(url, statement, {"now": NOW}))
        measure("/metrics: one scrape (_read_database)", "after", lambda: _read_database(url))
        ids = ", ".join(str(i) for i in range(1, RUNS + 1))
        measure("runs_progress of the 10 runs", "before",
                sql_call(url, BEFORE_PROGRESS.format(ids=ids)))
        from digest.delivery import runs_progress

        def progress() -> Any:
            with db.session_scope(url) as session:
                return runs_progress(session, list(range(1, RUNS + 1)))
        measure("runs_progress of the 10 runs", "after", progress)
        measure("ETA throughput: sent in the last hour", "before", sql_call(
            url, BEFORE_THROUGHPUT.format(where="sent_at >= %(since)s"),
            {"since": NOW - timedelta(hours=1)}))
        measure("ETA throughput: the last finished runs", "before", sql_call(
            url, BEFORE_THROUGHPUT.format(where=f"run_id IN ({ids})")))
        measure("digest runs", "after", cli_call(["runs"]))
        measure("digest deliveries", "after", cli_call(["deliveries"]))
        measure("digest deliveries --status failed", "after",
                cli_call(["deliveries", "--status", "failed"]))
        measure("digest deliveries --run 3 --status failed", "after",
                cli_call(["deliveries", "--run", "3", "--status", "failed"]))
        measure("digest deliveries --run 3: its query", "before",
                sql_call(url, BEFORE_RUN_LISTING))
        measure("digest deliveries --run 3", "after", cli_call(["deliveries", "--run", "3"]))
        measure("sqladmin's count of the deliveries list", "before",
                sql_call(url, BEFORE_ADMIN_COUNT))
        admin_rows(url, settings, measure)
        plans = metrics_plans(url)
        figures["metrics_plans"] = [{"sql": s, "plan": p} for s, p in plans]
        scans = [s for s, p in plans if re.search(r"Seq Scan on deliveries\b", p)]
        figures["seq_scans_on_deliveries"] = len(scans)
        say(f"\nEXPLAIN of the {len(plans)} statements of one scrape "
            f"(Seq Scan on deliveries: {len(scans)}):")
        for statement, plan in plans:
            say(f"-- {statement[:160]}")
            say("   " + plan.replace("\n", "\n   "))
        if not args.no_prune:
            prune_rows(url, settings, figures, say)
            cutoff = {"cutoff": NOW - timedelta(days=60)}
            for name, statement in BEFORE_PRUNE_PASS.items():
                measure(f"prune's pass, nothing old: {name}", "before",
                        sql_call(url, statement, cutoff), repeat=3)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    return 0


def admin_rows(url: str, settings: Any, measure: Callable[..., None]) -> None:
    from fastapi.testclient import TestClient

    from digest.web import create_app
    from digest.web.admin import hash_password

    password = "bench admin password"
    web = GivenSettings(**{**settings.model_dump(), "admin_username": "admin",
                           "admin_password_hash": hash_password(password),
                           "metrics_token": None})
    with TestClient(create_app(web), base_url="https://testserver") as client:
        login = client.post("/admin/login", data={"username": "admin", "password": password},
                            follow_redirects=False)
        if login.status_code != 302:
            raise RuntimeError(f"admin login: {login.status_code}")

        def page(path: str) -> Callable[[], Any]:
            def call() -> Any:
                answer = client.get(path)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: {answer.status_code}")
                return answer
            return call
        measure("GET /metrics (TestClient)", "after", page("/metrics"))
        measure("admin: deliveries list", "after", page("/admin/delivery/list"))
        measure("admin: deliveries list, status failed", "after",
                page("/admin/delivery/list?status=failed"))
        measure("admin: deliveries list, page 50", "after", page("/admin/delivery/list?page=50"))
        measure("admin: runs list", "after", page("/admin/digest-run/list"))
        measure("admin: subscribers list", "after", page("/admin/subscriber/list"))


def prune_rows(url: str, settings: Any, figures: dict[str, Any], say: Callable[..., None]
               ) -> None:
    """The prune of the oldest run (63 days old; retention 60 days), then a second prune with
    nothing left to delete (the nightly cost of a quiet night)."""
    from digest.delivery.retention import prune

    kept = GivenSettings(**{**settings.model_dump(), "retention_days": 60})
    for label in ("prune (the oldest run)", "prune again (nothing to delete)"):
        with db.session_scope(url) as session:
            started = time.perf_counter()
            report = prune(session, kept, now=NOW)
            seconds = time.perf_counter() - started
        row = {"what": label, "when": "after", "seconds": seconds, "deleted": report.deliveries,
               "batches": report.batches, "runs": report.runs}
        figures["rows"].append(row)
        say(f"  {label:<52} {seconds:7.1f} s: {report.deliveries:,} deliveries, "
            f"{report.runs} run(s), {report.batches} batches"
            + (f", {seconds / report.batches * 1000:.0f} ms a batch" if report.batches else ""))


if __name__ == "__main__":
    raise SystemExit(main())
