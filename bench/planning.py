"""How long planning takes: ``plan_scheduled_run`` for everyone weekly, on a fresh database.

    python bench/planning.py --database-url postgresql+psycopg://USER@HOST:5432/DB \
        [--subscribers 10000] [--items 200] [--chunk SUBSCRIBERS]

Fills its own database as ``bench/pipeline.py`` does (creates it on the server and drops it at
the end; SQLite in a temp dir without a URL), then times planning the ``--now`` run of every
weekly reader, committed, without sending: the planning half of ``digest send weekly --now``.
With chunked planning it also prints when the first chunk was committed (when workers could
start sending).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import analyze, bench_database, configure, generate, progress  # noqa: E402
from sqlalchemy import event, func, select  # noqa: E402
from sqlalchemy.orm import Session as OrmSession  # noqa: E402

from digest import db  # noqa: E402
from digest.models import Delivery  # noqa: E402
from digest.selection import plan_scheduled_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--chunk", type=int, default=None,
                        help="subscribers per chunk (default: the setting's default)")
    parser.add_argument("--statements", action="store_true",
                        help="print each chunk's time per statement (the first and last chunks)")
    args = parser.parse_args()
    now = datetime(2025, 10, 13, 8, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp, bench_database(args.database_url, Path(tmp)) as url:
        db.upgrade(url)
        settings = configure(url, 25, Path(tmp))
        if args.chunk is not None:
            settings = settings.model_copy(update={"planning_chunk_size": args.chunk})
        engine = db.engine_for(url)
        with OrmSession(engine) as session:
            generate(session, args.subscribers, args.items, now, random.Random(7))
            analyze(session)
        progress(f"filled: {args.subscribers} subscribers, {args.items} items")
        first: list[float] = []
        chunks: list[tuple[float, list[tuple[str, float]]]] = []
        statements: list[tuple[str, float]] = []
        if args.statements:
            time_statements(engine, statements)
        t0 = time.perf_counter()
        last = [t0]

        def chunk_committed(ids: list[int]) -> None:
            now = time.perf_counter()
            if not first:
                first.append(now - t0)
            chunks.append((now - last[0], statements[:]))
            statements.clear()
            last[0] = now

        with OrmSession(engine) as session:
            planned = plan_scheduled_run(session, "weekly", now=now, everyone=True,
                                         settings=settings, on_chunk=chunk_committed)
            session.commit()
            seconds = time.perf_counter() - t0
            pairs = session.scalar(select(func.coalesce(func.sum(Delivery.item_count), 0)))
        first_note = f"; first chunk committed after {first[0]:.2f} s" if first else ""
        print(f"{args.subscribers} subscribers, chunks of {settings.planning_chunk_size}: "
              f"planned {planned.planned} digests "
              f"({planned.skipped} skipped), {pairs} items carried, in {seconds:.2f} s"
              f"{first_note}")
        if chunks:
            times = [seconds for seconds, _ in chunks]
            print(f"{len(chunks)} chunks: first {times[0]:.2f} s, median "
                  f"{sorted(times)[len(times) // 2]:.2f} s, last {times[-1]:.2f} s")
        if args.statements:
            for n, (seconds, timed) in enumerate(chunks):
                if 2 <= n < len(chunks) - 2:
                    continue
                print(f"chunk {n + 1}: {seconds:.3f} s")
                for sql, took in timed:
                    print(f"  {took * 1000:8.1f} ms  {sql}")
    return 0


def time_statements(engine, into: list[tuple[str, float]]) -> None:
    """Append (the statement's start, seconds) for every statement the engine runs."""
    @event.listens_for(engine, "before_cursor_execute")
    def started(conn, cursor, statement, parameters, context, executemany):
        conn.info["statement_started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def finished(conn, cursor, statement, parameters, context, executemany):
        took = time.perf_counter() - conn.info.pop("statement_started")
        into.append((" ".join(statement.split())[:90], took))


if __name__ == "__main__":
    raise SystemExit(main())
