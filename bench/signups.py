"""Concurrent sign-ups: POST /subscribe at N at a time, some addresses posted twice at once.

    python bench/signups.py                      # SQLite file in a temp dir, the issue's size
    python bench/signups.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

The app runs on a real uvicorn server (a thread of this process), confirmations go to a local
SMTP server (MailSink). Each doubled address's two requests wait on one barrier, so they
really race between look-up and insert. Prints the answers by status code, the rows per
address, the time taken and the machine's core count. A PostgreSQL URL gets a database of
its own on that server, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a SQLite file in a temp dir")
    parser.add_argument("--addresses", type=int, default=1000)
    parser.add_argument("--doubled", type=int, default=200,
                        help="addresses posted twice at once (1,000 + 200 = 1,200 requests)")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    import httpx
    import uvicorn
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.engine import make_url

    from digest import db
    from digest.devtools import MailSink
    from digest.models import Subscriber
    from digest.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="digest-signups-"))
    admin = pg_name = None
    url = args.database_url or f"sqlite:///{tmp / 'digest.db'}"
    if url.startswith("postgresql"):
        pg_name = f"digest_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
        url = make_url(url).set(database=pg_name).render_as_string(hide_password=False)
    sink = MailSink(outbox=tmp / "outbox").start()
    try:
        port = free_port()
        given = {"database_url": url, "broker_url": "", "var_dir": tmp,
                 "smtp_host": sink.host, "smtp_port": sink.port,
                 "public_base_url": f"http://127.0.0.1:{port}"}
        settings = Settings(**given)
        if "secret_key" not in settings.model_fields_set:  # none in DIGEST_*: a random one
            settings = Settings(**given, secret_key=__import__("secrets").token_urlsafe(32))
        db.upgrade(url)

        from digest.web import create_app
        from digest.web.pages import make_csrf

        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)

        def form(email: str) -> dict:
            return {"csrf": make_csrf(settings, "subscribe"), "email": email,
                    "mode": "everything", "frequency": "weekly", "weekday": "0", "hour": "8",
                    "timezone": "UTC", "group_by": "theme"}

        addresses = [f"reader{n}@example.org" for n in range(args.addresses)]
        groups = [[a, a] if n < args.doubled else [a] for n, a in enumerate(addresses)]
        random.Random(1).shuffle(groups)
        local = threading.local()

        def post(email: str, barrier: threading.Barrier | None) -> int | str:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
            if barrier is not None:
                barrier.wait(timeout=60)
            try:
                return local.client.post("/subscribe", data=form(email)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            futures = []
            for group in groups:
                barrier = threading.Barrier(2) if len(group) == 2 else None
                futures += [pool.submit(post, a, barrier) for a in group]
            codes = Counter(f.result() for f in futures)
        elapsed = time.perf_counter() - started
        server.should_exit = True

        with db._sessionmaker(url)() as session:
            rows = Counter(session.scalars(select(Subscriber.email)))
        per_address = Counter(rows.get(a, 0) for a in addresses)
        print(f"database: {make_url(url).get_backend_name()}; cores: {os.cpu_count()}")
        print(f"requests: {sum(codes.values())} POST /subscribe, {args.concurrency} at a time, "
              f"{args.addresses} addresses, {args.doubled} posted twice at once; "
              f"{elapsed:.1f} s ({sum(codes.values()) / elapsed:.0f}/s)")
        print("answers: " + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(),
                                                                          key=str)))
        print("rows per address: " + ", ".join(f"{k} row(s): {n} addresses"
                                             for k, n in sorted(per_address.items())))
        ok = set(codes) <= {200, 429} and set(per_address) == {1}
        print("result: " + ("only 2xx/429, one row per address" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        sink.stop()
        db.engine_for(url).dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
