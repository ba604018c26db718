"""The real stack as production runs it: a weekly digest for N subscribers, end to end.

    python bench/stack.py [--subscribers 10000,100000] [--items 200]
                          [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                          [--concurrency CORES] [--ceiling-connections 4]

For each subscriber count it creates its own database on the PostgreSQL server (dropped at
the end), its own Redis (a spare port, nothing saved) and Postfix's ``smtp-sink`` on a spare
port; fills the database like ``bench/pipeline.py`` (the same seeded taxonomy, items in the
last week, subscribers with 1-2 filters); starts one Celery prefork worker with
concurrency = cores on that Redis; and runs ``digest send weekly --now`` as an operator does.
It measures:

- planning + enqueue: the wall time of that command (it returns once every batch is queued);
- sending: from the first delivery a worker claims to the last ``sent_at``;
- end to end: from the command's start to the last ``sent_at``;
- the ceiling: the same built messages (a sample of this run's deliveries, built by the same
  ``MessageFactory``) sent by plain smtplib over 4 connections to the same sink, in the
  same run, so the ratios compare like with like on this machine;
- CPU seconds per stage and process (the command, the worker, PostgreSQL, Redis, the sink),
  the worker's peak RSS (VmHWM of each process), and the sink's message count, which must
  equal the rows marked ``sent``.

The sink must be Postfix's ``smtp-sink`` (Debian: ``apt-get install postfix``; its daemon
need not run): a Python sink such as aiosmtpd spends more CPU than the sender and would
make the figure a measure of the sink. The script refuses to run without it.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import SEED, generate  # the same data as bench/pipeline.py
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from digest.models import Delivery, DeliveryStatus

SINK_CANDIDATES = ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
CEILING_SAMPLE = 4000  # built messages kept for the ceiling (each is sent several times)
TICK = os.sysconf("SC_CLK_TCK")


class StackError(Exception):
    pass


def progress(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"{what} did not listen on port {port} within {timeout:.0f} s")


# --- /proc readings ---------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, *, reaped_children: bool = True) -> float:
    """utime + stime of a process, plus what its reaped children used (cutime + cstime)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


def tree_cpu(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in descendants(pid))


def peak_rss_mb(pids: list[int]) -> float:
    peak = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak / 1024


class PostgresCpu:
    """CPU of the PostgreSQL backends serving one database, sampled every half second.

    The server is shared (other clients' backends are not counted): a backend is ours when
    its title names our database. A backend's CPU is kept at its last reading, so one that
    exits between readings (the command's, when it ends) loses at most half a second."""

    def __init__(self, database: str):
        self.marker = f" {database} ".encode()
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PostgresCpu:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> float:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if (entry / "comm").read_bytes().strip() != b"postgres":
                    continue
                if self.marker in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    pid = int(entry.name)
                    self.seen[pid] = cpu_seconds(pid, reaped_children=False)
        return self.total()

    def total(self) -> float:
        return sum(self.seen.values())


# --- the parts --------------------------------------------------------------------------------

@dataclass
class Parts:
    tmp: Path
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              stdout=None) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout or log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.children[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.children.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.children)[::-1]:
            self.stop(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.tmp / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def find_sink() -> str:
    for candidate in (shutil.which("smtp-sink"), *SINK_CANDIDATES):
        if candidate and Path(candidate).exists():
            return candidate
    raise StackError(
        "Postfix's smtp-sink is not installed. On Debian: 'apt-get install postfix' (the "
        "daemon need not run; choose 'No configuration'). This benchmark refuses a Python "
        "sink such as aiosmtpd: its own CPU would be most of what it measures.")


class Sink:
    """smtp-sink with its running counter (-c) on a file: 'sess=.. quit=.. mesg=N'."""

    def __init__(self, parts: Parts, path: str):
        self.port = free_port()
        self.out = parts.tmp / "sink.count"
        args = [path, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # it refuses to run as root without a user to become
        with self.out.open("wb") as counter:
            self.proc = parts.spawn("sink", [*args, f"127.0.0.1:{self.port}", "1024"],
                                    stdout=counter)
        wait_port(self.port, 10, "smtp-sink")

    def messages(self) -> int:
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes())
        return int(found[-1]) if found else 0

    def wait_for(self, count: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while self.messages() < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.messages()


@contextlib.contextmanager
def own_database(server_url: str):
    server = make_url(server_url)
    name = f"digest_stack_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def digest_argv() -> list[str]:
    exe = Path(sys.executable).with_name("digest")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "digest.cli"]


# --- the ceiling ------------------------------------------------------------------------------

def _ceiling_sender(port: int, messages: list[tuple[str, str, bytes]], rounds: int,
                    start, done) -> None:
    conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
    conn.ehlo()
    start.wait()
    for _ in range(rounds):
        for sender, recipient, data in messages:
            conn.sendmail(sender, [recipient], data)
    conn.quit()
    done.put(len(messages) * rounds)


def ceiling(port: int, messages: list[tuple[str, str, bytes]], connections: int,
            target_sends: int) -> tuple[int, float]:
    """The same built messages over ``connections`` smtplib connections (one process each,
    so no GIL is shared): messages sent and seconds."""
    rounds = max(1, round(target_sends / max(len(messages), 1)))
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(connections + 1), ctx.Queue()
    shares = [messages[i::connections] for i in range(connections)]
    procs = [ctx.Process(target=_ceiling_sender, args=(port, share, rounds, start, done))
             for share in shares]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    sent = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    return sent, elapsed


def build_sample(url: str, env: dict[str, str], limit: int) -> list[tuple[str, str, bytes]]:
    """This run's deliveries built again by the code the worker uses (not timed)."""
    from digest.delivery import load_batch
    from digest.mail import MessageFactory
    from digest.settings import Settings

    settings = Settings(**{k[len("DIGEST_"):].lower(): v for k, v in env.items()
                           if k.startswith("DIGEST_")})
    engine = create_engine(url)
    out = []
    with Session(engine) as session:
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id).limit(limit)))
        factory = MessageFactory(settings)
        for start in range(0, len(ids), 500):
            for delivery, items in load_batch(session, ids[start:start + 500]):
                _message_id, data = factory.build(delivery, delivery.run, items)
                out.append((factory.return_path(delivery.id), delivery.email, data))
    engine.dispose()
    return out


# --- one measurement --------------------------------------------------------------------------

@dataclass
class Figures:
    subscribers: int
    planned: int = 0
    sent: int = 0
    other: dict[str, int] = field(default_factory=dict)
    sink_received: int = 0
    planning_s: float = 0.0
    send_s: float = 0.0
    e2e_s: float = 0.0
    ceiling_sent: int = 0
    ceiling_s: float = 0.0
    avg_kb: float = 0.0
    avg_items: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    worker_rss_mb: float = 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_s if self.send_s else 0.0

    @property
    def e2e_rate(self) -> float:
        return self.sent / self.e2e_s if self.e2e_s else 0.0

    @property
    def ceiling_rate(self) -> float:
        return self.ceiling_sent / self.ceiling_s if self.ceiling_s else 0.0


def measure(args, n: int, sink_path: str) -> Figures:
    fig = Figures(n)
    tmp = Path(tempfile.mkdtemp(prefix="digest-stack-"))
    parts = Parts(tmp)
    try:
        with own_database(args.database_url) as url:
            redis_port = free_port()
            parts.spawn("redis", [shutil.which("redis-server") or "redis-server", "--port",
                                  str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)])
            wait_port(redis_port, 20, "Redis")
            sink = Sink(parts, sink_path)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
            env.update({
                "DIGEST_DATABASE_URL": url,
                "DIGEST_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                "DIGEST_SMTP_HOST": "127.0.0.1", "DIGEST_SMTP_PORT": str(sink.port),
                "DIGEST_SECRET_KEY": secrets.token_urlsafe(32),
                "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
                "DIGEST_VAR_DIR": str(tmp / "var"),
                "PYTHONUNBUFFERED": "1",
            })
            if args.batch_size:
                env["DIGEST_BATCH_SIZE"] = str(args.batch_size)
            run = subprocess.run([*digest_argv(), "db", "upgrade"], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise StackError(f"digest db upgrade failed: {run.stderr.strip()[-400:]}")
            progress(f"{n:,} subscribers: filling the database")
            engine = create_engine(url)
            import random

            with Session(engine) as session:
                generate(session, n, args.items, datetime.now(UTC), random.Random(SEED))
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))

            worker = parts.spawn("worker", [
                sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                "digest", "-c", str(args.concurrency), "-P", "prefork", "-n",
                f"stack{os.getpid()}@%h", "--loglevel=WARNING", "--without-gossip",
                "--without-mingle", "--without-heartbeat"], env=env)
            _wait_ready(parts, worker, env)
            progress("worker ready; running 'digest send weekly --now'")

            pg = PostgresCpu(make_url(url).database or "")
            pg.__enter__()
            pg0, redis0, sink0, worker0 = (pg.total(), cpu_seconds(
                parts.children["redis"].pid), cpu_seconds(sink.proc.pid), tree_cpu(worker.pid))
            usage0 = os.times()
            t0 = time.time()
            cli = subprocess.Popen([*digest_argv(), "send", "weekly", "--now"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            first_claim = _watch_first_claim(engine, cli)
            out = cli.communicate()[0]
            t_planned = time.time()
            if cli.returncode != 0:
                raise StackError(f"digest send weekly --now exited {cli.returncode}: "
                                 f"{out.strip()[-600:]}")
            usage1 = os.times()
            fig.planning_s = t_planned - t0
            pg_plan = pg.sample() - pg0
            worker_plan = tree_cpu(worker.pid) - worker0
            command_cpu = ((usage1.children_user + usage1.children_system)
                           - (usage0.children_user + usage0.children_system))
            fig.cpu["until queued: the command"] = command_cpu
            fig.cpu["until queued: PostgreSQL"] = pg_plan
            fig.cpu["until queued: worker"] = worker_plan
            progress(f"planned and queued in {fig.planning_s:.1f} s; waiting for the worker")

            with engine.connect() as conn:
                fig.planned = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()
            _wait_done(engine, fig.planned, args.timeout)
            if first_claim is None:
                first_claim = t_planned  # claimed only after the command returned
            with engine.connect() as conn:
                counts = dict(conn.execute(select(Delivery.status, func.count())
                                           .group_by(Delivery.status)).all())
                last_sent = conn.execute(select(func.max(Delivery.sent_at))).scalar_one()
                fig.avg_items = conn.execute(select(func.avg(Delivery.item_count))).scalar_one()
            fig.sent = counts.pop(DeliveryStatus.sent, 0)
            fig.other = {str(k): v for k, v in counts.items()}
            last = last_sent.replace(tzinfo=UTC).timestamp() if last_sent else time.time()
            fig.send_s = last - first_claim
            fig.e2e_s = last - t0
            worker_all = tree_cpu(worker.pid) - worker0
            fig.cpu["after queued: worker"] = worker_all - worker_plan
            pg.__exit__()
            fig.cpu["after queued: PostgreSQL"] = pg.sample() - pg0 - pg_plan
            fig.cpu["worker, whole run"] = worker_all
            fig.cpu["Redis, whole run"] = cpu_seconds(parts.children["redis"].pid) - redis0
            fig.cpu["smtp-sink, whole run"] = cpu_seconds(sink.proc.pid) - sink0
            fig.worker_rss_mb = peak_rss_mb([worker.pid, *descendants(worker.pid)])
            fig.sink_received = sink.wait_for(fig.sent)
            parts.stop("worker")

            progress("building the ceiling's sample of the same messages")
            sample = build_sample(url, env, CEILING_SAMPLE)
            fig.avg_kb = sum(len(d) for _, _, d in sample) / max(len(sample), 1) / 1024
            before = sink.messages()
            fig.ceiling_sent, fig.ceiling_s = ceiling(
                sink.port, sample, args.ceiling_connections, max(4 * len(sample), 20000))
            got = sink.wait_for(before + fig.ceiling_sent) - before
            if got != fig.ceiling_sent:
                raise StackError(f"the sink counted {got} of the ceiling's {fig.ceiling_sent}")
            engine.dispose()
    finally:
        parts.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return fig


def _wait_ready(parts: Parts, worker: subprocess.Popen, env: dict[str, str]) -> None:
    """Ready when ``celery inspect ping`` answers (the worker logs at WARNING)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise StackError(f"the Celery worker exited: {parts.log_tail('worker')}")
        ping = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.celery_app",
                               "inspect", "ping", "-t", "2"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if ping.returncode == 0 and "pong" in ping.stdout:
            return
        time.sleep(0.5)
    raise StackError(f"the Celery worker did not answer a ping: {parts.log_tail('worker')}")


def _watch_first_claim(engine, cli: subprocess.Popen) -> float | None:
    """The moment a worker first takes a row, if it does while the command is still
    planning or queueing (polled every 50 ms)."""
    with engine.connect() as conn:
        while cli.poll() is None:
            claimed = conn.execute(text(
                "SELECT 1 FROM deliveries WHERE status <> 'pending' LIMIT 1")).first()
            conn.commit()
            if claimed:
                return time.time()
            time.sleep(0.05)
    return None


def _wait_done(engine, planned: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text(
                "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')")
            ).scalar_one()
            conn.commit()
            if waiting == 0:
                return
            time.sleep(0.25)
    raise StackError(f"{waiting} of {planned} deliveries still pending or sending after "
                     f"{timeout:.0f} s")


# --- report -----------------------------------------------------------------------------------

def report(figures: list[Figures], args) -> None:
    cores = os.cpu_count()
    print(f"\n## bench/stack.py: {platform.python_implementation()} {platform.python_version()}, "
          f"{cores} cores, {args.items} items, Celery prefork concurrency {args.concurrency}, "
          f"PostgreSQL, Redis, Postfix smtp-sink\n")
    head = ["figure", *[f"{f.subscribers:,} subscribers" for f in figures]]
    rows = [
        ("messages planned / sent / other", lambda f: f"{f.planned:,} / {f.sent:,} / "
         + (", ".join(f"{k} {v}" for k, v in f.other.items()) or "0")),
        ("messages received by the sink", lambda f: f"{f.sink_received:,}"
         + ("" if f.sink_received == f.sent else " (NOT EQUAL to sent)")),
        ("items per message; message size", lambda f: f"{f.avg_items:.1f}; {f.avg_kb:.1f} KB"),
        ("planning + enqueue", lambda f: f"{f.planning_s:.1f} s"),
        ("sending (first claim to last sent)", lambda f: f"{f.send_s:.1f} s, "
         f"{f.send_rate:,.0f} msg/s"),
        ("end to end", lambda f: f"{f.e2e_s:.1f} s, {f.e2e_rate:,.0f} msg/s"),
        (f"ceiling: smtplib, {args.ceiling_connections} connections, same messages and sink",
         lambda f: f"{f.ceiling_rate:,.0f} msg/s ({f.ceiling_sent:,} in {f.ceiling_s:.1f} s)"),
        ("send / ceiling", lambda f: f"{f.send_rate / f.ceiling_rate:.1%}"
         if f.ceiling_rate else "-"),
        ("end to end / ceiling", lambda f: f"{f.e2e_rate / f.ceiling_rate:.1%}"
         if f.ceiling_rate else "-"),
        ("worker peak RSS (largest process)", lambda f: f"{f.worker_rss_mb:.0f} MB"),
    ]
    stages = list(dict.fromkeys(k for f in figures for k in f.cpu))
    rows += [(f"CPU, {stage}", (lambda s: lambda f: f"{f.cpu.get(s, 0):.1f} s")(stage))
             for stage in stages]
    rows.append(("worker CPU per message",
                 lambda f: f"{1000 * f.cpu.get('worker, whole run', 0) / max(f.sent, 1):.2f} ms"))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(f) for f in figures) + " |")
    if len(figures) >= 2:
        small, large = figures[0], figures[-1]
        per_small = small.send_s / max(small.sent, 1)
        per_large = large.send_s / max(large.sent, 1)
        print(f"\nsend time per message, {large.subscribers:,} vs {small.subscribers:,}: "
              f"x{per_large / per_small:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="10000,100000",
                        help="comma-separated subscriber counts, each measured on its own")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--database-url",
                        default=os.environ.get("BENCH_DATABASE_URL",
                                               "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help="a PostgreSQL server; the benchmark creates and drops its own "
                             "database there")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ceiling-connections", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="DIGEST_BATCH_SIZE for the run (default: the project's)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the worker to finish one run")
    args = parser.parse_args(argv)
    try:
        sink_path = find_sink()
        counts = [int(c.replace("_", "")) for c in args.subscribers.split(",") if c.strip()]
        figures = []
        for n in counts:
            figures.append(measure(args, n, sink_path))
        report(figures, args)
    except StackError as exc:
        print(f"bench/stack.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
