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
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session as OrmSession  # noqa: E402

from digest import db  # noqa: E402
from digest.models import SentItem  # noqa: E402
from digest.selection import plan_scheduled_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--chunk", type=int, default=None,
                        help="subscribers per chunk (default: the setting's default)")
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
        t0 = time.perf_counter()

        def chunk_committed(ids: list[int]) -> None:
            if not first:
                first.append(time.perf_counter() - t0)

        with OrmSession(engine) as session:
            planned = plan_scheduled_run(session, "weekly", now=now, everyone=True,
                                         settings=settings, on_chunk=chunk_committed)
            session.commit()
            seconds = time.perf_counter() - t0
            pairs = session.scalar(select(func.count()).select_from(SentItem))
        first_note = f"; first chunk committed after {first[0]:.2f} s" if first else ""
        print(f"{args.subscribers} subscribers, chunks of {settings.planning_chunk_size}: "
              f"planned {planned.planned} digests "
              f"({planned.skipped} skipped), {pairs} ledger rows, in {seconds:.2f} s"
              f"{first_note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
