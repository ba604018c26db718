"""The real stack as production runs it: a weekly digest for N subscribers, end to end.

    python bench/stack.py [--subscribers 10000,100000] [--items 200]
                          [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                          [--concurrency CORES] [--ceiling-connections 4]
                          [--planning-workers 2] [--profiles K] [--no-dkim] [--plan-only]
                          [--json]

For each subscriber count it creates its own database on the PostgreSQL server (dropped at
the end), its own Redis (a spare port, nothing saved) and Postfix's ``smtp-sink`` on a spare
port; fills the database like ``bench/pipeline.py`` (the same seeded taxonomy, items in the
last week, subscribers with 1-2 filters); starts one Celery prefork worker with
concurrency = cores on that Redis; and runs ``digest send weekly --now`` as an operator does.
It measures:

- planning + enqueue: the wall time of that command (it returns once every batch is queued),
  and per reader (µs/reader, to compare counts);
- the planner's peak RSS: ``ru_maxrss`` of the command, reported by a small wrapper process
  (``getrusage(RUSAGE_CHILDREN)`` once the command has exited);
- bytes per delivery: ``pg_total_relation_size`` (table, indexes, TOAST) of every table of the
  schema, taken after ``VACUUM ANALYZE`` of the filled database and again when the command
  exits, the growth divided by the deliveries planned, with the tables that grew (no table is
  named in advance: whatever planning writes is counted). With a worker the second reading
  also holds what the worker had written by then (the share of rows already claimed is
  shown); ``--plan-only`` gives planning's alone; a third reading after the run gives planning
  and sending together;
- sending: from the first delivery a worker claims to the last ``sent_at``;
- the send window from the rows: the first ``sent_at`` to the last, and its rate as a share of
  the ceiling;
- end to end: from the command's start to the last ``sent_at``;
- the ceiling: the same built messages (a sample of this run's deliveries, built by the same
  ``MessageFactory`` with the same settings, so DKIM-signed when the run is) sent by plain
  smtplib over 4 connections to the same sink, in the same run, so the ratios compare like
  with like on this machine;
- CPU seconds per stage and process (the command, the worker, PostgreSQL, Redis, the sink),
  the worker's peak RSS (VmHWM of each process), worker CPU per message, and the sink's
  message count, which must equal the rows marked ``sent``.

DKIM is on by default, as in production: a 2048-bit RSA key made for the run in its temp
directory, given to the worker by ``DIGEST_DKIM_SELECTOR`` / ``DIGEST_DKIM_PRIVATE_KEY_PATH``
/ ``DIGEST_DKIM_DOMAIN``; ``--no-dkim`` measures without it.

``--plan-only`` starts no worker: the command plans and enqueues into the run's own Redis,
which nobody consumes, so a million readers can be measured where sending them would not fit
the machine's time. The database is filled by COPY (the same seeded rows as
``bench/pipeline.py``). ``--json`` prints, as the last line, one JSON object with every figure
per subscriber count. The load average is printed at the start and the end: the machine may
be shared.

The sink must be Postfix's ``smtp-sink`` (Debian: ``apt-get install postfix``; its daemon
need not run): a Python sink such as aiosmtpd spends more CPU than the sender and would
make the figure a measure of the sink. The script refuses to run without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
CLAIMED = "('sending', 'sent', 'deferred', 'failed')"  # statuses only a worker gives
DKIM_SELECTOR = "bench"
DKIM_DOMAIN = "digest.example.org"
# Runs the command and writes its peak RSS (kB, the largest reaped descendant) to argv[1].
RSS_WRAPPER = ("import resource, subprocess, sys\n"
               "rc = subprocess.call(sys.argv[2:])\n"
               "with open(sys.argv[1], 'w') as out:\n"
               "    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
               "sys.exit(rc)\n")


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


def make_dkim_key(tmp: Path) -> Path:
    """A fresh 2048-bit RSA key (unencrypted PKCS#8 PEM) for this run only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o644)  # the worker may not run as this user
    return path


def relation_sizes(engine) -> dict[str, int]:
    """Bytes of every table of the schema: heap, indexes, TOAST (pg_total_relation_size)."""
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname = current_schema()")).all())


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Tables that grew, biggest first."""
    grew = {t: after[t] - before.get(t, 0) for t in after if after[t] > before.get(t, 0)}
    return dict(sorted(grew.items(), key=lambda kv: -kv[1]))


def vacuum_analyze(engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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
    contents: int = 0  # distinct (items, time zone, grouping) among the rows with items
    cpu: dict[str, float] = field(default_factory=dict)
    worker_rss_mb: float = 0.0
    plan_only: bool = False
    dkim: bool = True
    signed_share: float = 0.0  # of the ceiling's sample, messages starting DKIM-Signature
    window_s: float = 0.0  # first sent_at to last sent_at
    planner_rss_mb: float = 0.0
    claimed_at_exit: int = 0  # rows a worker had taken when the command exited
    skipped: int = 0  # rows planned skipped (empty digests)
    grew_at_exit: dict[str, int] = field(default_factory=dict)  # bytes per table
    grew_after_run: dict[str, int] = field(default_factory=dict)
    fill_s: float = 0.0
    plan_stopped: bool = False  # --plan-timeout: the command was stopped half-way
    plan_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, rows), plan-only
    polled_rss_mb: float = 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_s if self.send_s else 0.0

    @property
    def window_rate(self) -> float:
        return self.sent / self.window_s if self.window_s else 0.0

    @property
    def plan_us_per_reader(self) -> float:
        readers = self.planned if self.plan_stopped else self.subscribers
        return 1e6 * self.planning_s / readers if readers else 0.0

    def plan_rates(self) -> tuple[float, float] | None:
        """Readers planned per second over the first and the last quarter of the rows (from
        the plan-only samples), to show whether planning slows down as the run grows."""
        samples = [(0.0, 0), *self.plan_samples]
        if len(samples) < 4 or not samples[-1][1]:
            return None
        total = samples[-1][1]
        q1 = next(x for x in samples if x[1] >= total / 4)
        q3 = next(x for x in samples if x[1] >= 3 * total / 4)
        first = q1[1] / q1[0] if q1[0] else 0.0
        last = ((samples[-1][1] - q3[1]) / (samples[-1][0] - q3[0])
                if samples[-1][0] > q3[0] else 0.0)
        return first, last

    @property
    def bytes_per_delivery(self) -> float:
        return sum(self.grew_at_exit.values()) / self.planned if self.planned else 0.0

    @property
    def bytes_per_delivery_after_run(self) -> float:
        return sum(self.grew_after_run.values()) / self.planned if self.planned else 0.0

    def as_json(self) -> dict:
        ceiling = self.ceiling_rate
        return {
            "subscribers": self.subscribers, "plan_only": self.plan_only, "dkim": self.dkim,
            "planned": self.planned, "skipped": self.skipped, "sent": self.sent,
            "other": self.other,
            "sink_received": self.sink_received, "fill_s": round(self.fill_s, 2),
            "planning_enqueue_s": round(self.planning_s, 3),
            "planning_stopped_at_timeout": self.plan_stopped,
            "planning_rates_first_last_quarter": self.plan_rates(),
            "planning_samples_s_rows": self.plan_samples or None,
            "planning_us_per_reader": round(self.plan_us_per_reader, 1),
            "planner_peak_rss_mb": round(self.planner_rss_mb, 1),
            "bytes_per_delivery": round(self.bytes_per_delivery, 1),
            "bytes_grown_by_table": self.grew_at_exit,
            "claimed_when_command_exited": self.claimed_at_exit,
            "bytes_per_delivery_after_run": (round(self.bytes_per_delivery_after_run, 1)
                                             if not self.plan_only else None),
            "bytes_grown_by_table_after_run": self.grew_after_run or None,
            "distinct_contents": self.contents,
            "items_per_message": round(float(self.avg_items or 0), 2),
            "message_kb": round(self.avg_kb, 2), "signed_share": round(self.signed_share, 4),
            "send_s": round(self.send_s, 2), "send_msg_s": round(self.send_rate, 1),
            "window_s": round(self.window_s, 2), "window_msg_s": round(self.window_rate, 1),
            "e2e_s": round(self.e2e_s, 2), "e2e_msg_s": round(self.e2e_rate, 1),
            "ceiling_msg_s": round(ceiling, 1), "ceiling_sent": self.ceiling_sent,
            "ceiling_s": round(self.ceiling_s, 2),
            "send_over_ceiling": round(self.send_rate / ceiling, 4) if ceiling else None,
            "window_over_ceiling": round(self.window_rate / ceiling, 4) if ceiling else None,
            "e2e_over_ceiling": round(self.e2e_rate / ceiling, 4) if ceiling else None,
            "worker_peak_rss_mb": round(self.worker_rss_mb, 1),
            "worker_cpu_ms_per_msg": (round(1000 * self.cpu.get("worker, whole run", 0)
                                            / self.sent, 3) if self.sent else None),
            "cpu_s": {k: round(v, 2) for k, v in self.cpu.items()},
        }

    @property
    def e2e_rate(self) -> float:
        return self.sent / self.e2e_s if self.e2e_s else 0.0

    @property
    def ceiling_rate(self) -> float:
        return self.ceiling_sent / self.ceiling_s if self.ceiling_s else 0.0


def measure(args, n: int, sink_path: str) -> Figures:
    fig = Figures(n, plan_only=args.plan_only, dkim=not args.no_dkim)
    tmp = Path(tempfile.mkdtemp(prefix="digest-stack-"))
    tmp.chmod(0o755)
    parts = Parts(tmp)
    try:
        with own_database(args.database_url) as url:
            redis_port = free_port()
            parts.spawn("redis", [shutil.which("redis-server") or "redis-server", "--port",
                                  str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)])
            wait_port(redis_port, 20, "Redis")
            sink = None if args.plan_only else Sink(parts, sink_path)
            env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
            env.update({
                "DIGEST_DATABASE_URL": url,
                "DIGEST_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                "DIGEST_SMTP_HOST": "127.0.0.1",
                "DIGEST_SMTP_PORT": str(sink.port if sink else free_port()),
                "DIGEST_SECRET_KEY": secrets.token_urlsafe(32),
                "DIGEST_PUBLIC_BASE_URL": "https://digest.example.org",
                "DIGEST_VAR_DIR": str(tmp / "var"),
                "PYTHONUNBUFFERED": "1",
            })
            if fig.dkim:
                env.update({"DIGEST_DKIM_SELECTOR": DKIM_SELECTOR,
                            "DIGEST_DKIM_PRIVATE_KEY_PATH": str(make_dkim_key(tmp)),
                            "DIGEST_DKIM_DOMAIN": DKIM_DOMAIN})
            if args.batch_size:
                env["DIGEST_BATCH_SIZE"] = str(args.batch_size)
            # Without a worker nobody else plans: the command plans every chunk (ADR 0032).
            env["DIGEST_PLANNING_WORKERS"] = str(1 if args.plan_only else args.planning_workers)
            run = subprocess.run([*digest_argv(), "db", "upgrade", "--no-seed"], cwd=ROOT,
                                 env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise StackError(f"digest db upgrade failed: {run.stderr.strip()[-400:]}")
            progress(f"{n:,} subscribers: filling the database (COPY)")
            engine = create_engine(url)
            import random

            t_fill = time.perf_counter()
            with Session(engine) as session:
                generate(session, n, args.items, datetime.now(UTC), random.Random(SEED),
                         copy=True, profiles=args.profiles)
            vacuum_analyze(engine)
            fig.fill_s = time.perf_counter() - t_fill
            progress(f"filled in {fig.fill_s:.1f} s")
            sizes0 = relation_sizes(engine)

            worker = None
            if not args.plan_only:
                worker = parts.spawn("worker", [
                    sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                    "digest", "-c", str(args.concurrency), "-P", "prefork", "-n",
                    f"stack{os.getpid()}@%h", "--loglevel=WARNING", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"], env=env)
                _wait_ready(parts, worker, env)
                progress("worker ready; running 'digest send weekly --now'")
            else:
                progress("no worker (--plan-only); running 'digest send weekly --now'")

            pg = PostgresCpu(make_url(url).database or "")
            pg.__enter__()
            pg0, redis0 = pg.total(), cpu_seconds(parts.children["redis"].pid)
            sink0 = cpu_seconds(sink.proc.pid) if sink else 0.0
            worker0 = tree_cpu(worker.pid) if worker else 0.0
            rss_file = tmp / "planner.maxrss"
            usage0 = os.times()
            t0 = time.time()
            cli = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, str(rss_file),
                                    *digest_argv(), "send", "weekly", "--now"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
            parts.children["command"] = cli  # stopped with the rest if the run is
            if worker:
                first_claim = _watch_first_claim(engine, cli)
            else:
                first_claim = None
                _watch_planning(engine, cli, t0, args.plan_timeout, fig)
            if fig.plan_stopped:
                t_planned = time.time()
                parts.stop("command")
                out = ""
                progress(f"--plan-timeout: stopped the command after {t_planned - t0:.0f} s")
            else:
                out = cli.communicate()[0]
                t_planned = time.time()
                parts.children.pop("command", None)
            if cli.returncode != 0 and not fig.plan_stopped:
                raise StackError(f"digest send weekly --now exited {cli.returncode}: "
                                 f"{out.strip()[-600:]}")
            usage1 = os.times()
            sizes1 = relation_sizes(engine)
            fig.planning_s = t_planned - t0
            if fig.plan_stopped and fig.plan_samples:  # to the last chunk seen committed
                fig.planning_s = fig.plan_samples[-1][0]
            with contextlib.suppress(OSError, ValueError):
                fig.planner_rss_mb = int(rss_file.read_text()) / 1024
            if not fig.planner_rss_mb:  # stopped: the wrapper wrote nothing; VmHWM as polled
                fig.planner_rss_mb = fig.polled_rss_mb
            pg_plan = pg.sample() - pg0
            command_cpu = ((usage1.children_user + usage1.children_system)
                           - (usage0.children_user + usage0.children_system))
            if not fig.plan_stopped:  # a stopped command's CPU is not reaped: not known
                fig.cpu["until queued: the command"] = command_cpu
            fig.cpu["until queued: PostgreSQL"] = pg_plan
            with engine.connect() as conn:
                fig.planned = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()
                fig.claimed_at_exit = conn.execute(text(
                    f"SELECT count(*) FROM deliveries WHERE status IN {CLAIMED}")).scalar_one()
                fig.skipped = conn.execute(
                    select(func.count()).select_from(Delivery)
                    .where(Delivery.status == DeliveryStatus.skipped)).scalar_one()
                fig.avg_items = conn.execute(select(func.avg(Delivery.item_count))).scalar_one()
                # Distinct contents: the same items for readers of one time zone and grouping
                # (what the renderer's content cache can share, ADR 0028).
                fig.contents = conn.execute(text(
                    "SELECT count(DISTINCT (d.item_ids, s.timezone, s.group_by)) FROM deliveries"
                    " d JOIN subscribers s ON s.id = d.subscriber_id WHERE d.item_count > 0"
                )).scalar_one()
            fig.grew_at_exit = growth(sizes0, sizes1)
            progress(f"planned {fig.planned:,} and queued in {fig.planning_s:.1f} s "
                     f"({fig.plan_us_per_reader:.0f} µs/reader), planner peak RSS "
                     f"{fig.planner_rss_mb:.0f} MB, {fig.bytes_per_delivery:.0f} bytes/delivery")
            if worker is None:
                pg.__exit__()
                engine.dispose()
                return fig

            worker_plan = tree_cpu(worker.pid) - worker0
            fig.cpu["until queued: worker"] = worker_plan
            progress("waiting for the worker")
            _wait_done(engine, fig.planned, args.timeout)
            if first_claim is None:
                first_claim = t_planned  # claimed only after the command returned
            with engine.connect() as conn:
                counts = dict(conn.execute(select(Delivery.status, func.count())
                                           .group_by(Delivery.status)).all())
                first_sent, last_sent = conn.execute(
                    select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))).one()
            fig.sent = counts.pop(DeliveryStatus.sent, 0)
            fig.other = {str(k): v for k, v in counts.items()}
            last = last_sent.timestamp() if last_sent else time.time()
            fig.send_s = last - first_claim
            fig.e2e_s = last - t0
            if first_sent and last_sent:
                fig.window_s = (last_sent - first_sent).total_seconds()
            worker_all = tree_cpu(worker.pid) - worker0
            fig.cpu["after queued: worker"] = worker_all - worker_plan
            pg.__exit__()
            fig.cpu["after queued: PostgreSQL"] = pg.sample() - pg0 - pg_plan
            fig.cpu["worker, whole run"] = worker_all
            fig.cpu["Redis, whole run"] = cpu_seconds(parts.children["redis"].pid) - redis0
            assert sink is not None
            fig.cpu["smtp-sink, whole run"] = cpu_seconds(sink.proc.pid) - sink0
            fig.worker_rss_mb = peak_rss_mb([worker.pid, *descendants(worker.pid)])
            fig.sink_received = sink.wait_for(fig.sent)
            parts.stop("worker")
            fig.grew_after_run = growth(sizes0, relation_sizes(engine))

            progress("building the ceiling's sample of the same messages")
            sample = build_sample(url, env, CEILING_SAMPLE)
            fig.avg_kb = sum(len(d) for _, _, d in sample) / max(len(sample), 1) / 1024
            fig.signed_share = (sum(d.startswith(b"DKIM-Signature:") for _, _, d in sample)
                                / max(len(sample), 1))
            if fig.dkim and fig.signed_share < 1:
                raise StackError(f"only {fig.signed_share:.1%} of the ceiling's sample is signed")
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
    planning or queueing (polled every 50 ms). Rows planned ``skipped`` (empty digests) are
    not claims: planning writes them so."""
    with engine.connect() as conn:
        while cli.poll() is None:
            claimed = conn.execute(text(
                f"SELECT 1 FROM deliveries WHERE status IN {CLAIMED} LIMIT 1")).first()
            conn.commit()
            if claimed:
                return time.time()
            time.sleep(0.05)
    return None


def _watch_planning(engine, cli: subprocess.Popen, t0: float, limit: float,
                    fig: Figures) -> None:
    """Without a worker: rows planned every 2 s (the planning curve), the command's VmHWM as
    polled, and a stop after ``limit`` seconds (0: none) with ``fig.plan_stopped`` set."""
    with engine.connect() as conn:
        while cli.poll() is None:
            rows = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
            conn.commit()
            elapsed = time.time() - t0
            if not fig.plan_samples or rows != fig.plan_samples[-1][1]:
                fig.plan_samples.append((round(elapsed, 1), rows))
            fig.polled_rss_mb = max(fig.polled_rss_mb, peak_rss_mb(descendants(cli.pid)))
            if limit and elapsed > limit:
                fig.plan_stopped = True
                return
            time.sleep(2)


def _wait_done(engine, planned: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            # EXISTS on the partial index of unsent rows: a count of a 100,000-row run, four
            # times a second, was 3 % of a core of PostgreSQL's CPU charged to the run.
            if not conn.execute(text(
                    "SELECT EXISTS (SELECT 1 FROM deliveries "
                    "WHERE status IN ('pending', 'sending'))")
                    ).scalar_one():
                conn.commit()
                return
            conn.commit()
            time.sleep(0.25)
        waiting = conn.execute(text(
            "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')")
        ).scalar_one()
    raise StackError(f"{waiting} of {planned} deliveries still pending or sending after "
                     f"{timeout:.0f} s")


# --- report -----------------------------------------------------------------------------------

def _kb(n: float) -> str:
    return f"{n / 1024:,.0f} KB" if abs(n) < 10 * 1024 * 1024 else f"{n / 1048576:,.1f} MB"


def _grew(grew: dict[str, int], planned: int, top: int = 4) -> str:
    total = sum(grew.values())
    if not total:
        return "-"
    parts = [f"{t} {v / max(planned, 1):,.0f} ({v / total:.0%})"
             for t, v in list(grew.items())[:top]]
    rest = len(grew) - top
    return ", ".join(parts) + (f", {rest} more" if rest > 0 else "")


def report(figures: list[Figures], args, loads: tuple[str, str]) -> None:
    cores = os.cpu_count()
    mode = "--plan-only: no worker, nothing sent, one planner" if args.plan_only else (
        f"Celery prefork concurrency {args.concurrency}, {args.planning_workers} planner(s)")
    print(f"\n## bench/stack.py: {platform.python_implementation()} {platform.python_version()}, "
          f"{cores} cores, {args.items} items, {mode}, DKIM "
          f"{'off' if args.no_dkim else 'on (2048-bit RSA)'}, PostgreSQL, Redis"
          f"{'' if args.plan_only else ', Postfix smtp-sink'}"
          f"{f', readers from {args.profiles} profiles' if args.profiles else ''}\n")
    print(f"load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}\n")
    head = ["figure", *[f"{f.subscribers:,} subscribers" for f in figures]]
    rows = [
        ("database filled (COPY) + VACUUM ANALYZE", lambda f: f"{f.fill_s:.1f} s"),
        ("delivery rows planned" + (" (of which skipped, empty)" if args.plan_only
                                    else " / sent / other"),
         lambda f: f"{f.planned:,}" + (f" ({f.skipped:,})" if f.plan_only else f" / {f.sent:,} / "
         + (", ".join(f"{k} {v}" for k, v in f.other.items()) or "0"))),
    ]
    if not args.plan_only:
        rows += [
            ("messages received by the sink", lambda f: f"{f.sink_received:,}"
             + ("" if f.sink_received == f.sent else " (NOT EQUAL to sent)")),
            ("items per message; message size",
             lambda f: f"{float(f.avg_items or 0):.1f}; {f.avg_kb:.1f} KB"
             + (f" ({f.signed_share:.0%} DKIM-signed)" if f.dkim else "")),
        ]
    else:
        rows.append(("items per message", lambda f: f"{float(f.avg_items or 0):.1f}"))
    rows.append(("distinct (items, time zone, grouping) of the rows with items (a floor of "
                 "the renderer's contents, which add the reader's chosen names)",
                 lambda f: f"{f.contents:,} ({f.contents / max(f.planned - f.skipped, 1):.0%} "
                           "of them)"))
    rows += [
        ("planning + enqueue", lambda f: f"{f.planning_s:.1f} s" + (
            f" (STOPPED at --plan-timeout: {f.planned:,} of {f.subscribers:,} readers planned)"
            if f.plan_stopped else "")),
        ("planning + enqueue per reader", lambda f: f"{f.plan_us_per_reader:,.0f} µs"),
        ("planner peak RSS (the command's ru_maxrss)", lambda f: f"{f.planner_rss_mb:.0f} MB"),
    ]
    if args.plan_only:
        rows.append(("readers planned per second, first vs last quarter of the rows",
                     lambda f: "{:,.0f} vs {:,.0f}".format(*f.plan_rates())
                     if f.plan_rates() else "-"))
    rows += [
        ("bytes per delivery row, all tables (table + indexes + TOAST) grown by the command"
         + ("" if args.plan_only else ", worker sending meanwhile"),
         lambda f: f"{f.bytes_per_delivery:,.0f} B ({_kb(sum(f.grew_at_exit.values()))})"
         + ("" if f.plan_only else
            f"; {f.claimed_at_exit:,} of {f.planned:,} rows claimed by then")),
        ("  of which, bytes per delivery (share)", lambda f: _grew(f.grew_at_exit, f.planned)),
    ]
    if not args.plan_only:
        rows += [
            ("bytes per delivery after the run (planning + sending)",
             lambda f: f"{f.bytes_per_delivery_after_run:,.0f} B "
                       f"({_kb(sum(f.grew_after_run.values()))})"),
            ("  of which, bytes per delivery (share)",
             lambda f: _grew(f.grew_after_run, f.planned)),
            ("sending (first claim to last sent)", lambda f: f"{f.send_s:.1f} s, "
             f"{f.send_rate:,.0f} msg/s"),
            ("send window from the rows (first to last sent_at)",
             lambda f: f"{f.window_s:.1f} s, {f.window_rate:,.0f} msg/s"),
            ("end to end (command start to last sent_at)",
             lambda f: f"{f.e2e_s:.1f} s, {f.e2e_rate:,.0f} msg/s"),
            (f"ceiling: smtplib, {args.ceiling_connections} connections, same messages and sink",
             lambda f: f"{f.ceiling_rate:,.0f} msg/s ({f.ceiling_sent:,} in {f.ceiling_s:.1f} s)"),
            ("send / ceiling", lambda f: f"{f.send_rate / f.ceiling_rate:.1%}"
             if f.ceiling_rate else "-"),
            ("send window / ceiling", lambda f: f"{f.window_rate / f.ceiling_rate:.1%}"
             if f.ceiling_rate else "-"),
            ("end to end / ceiling", lambda f: f"{f.e2e_rate / f.ceiling_rate:.1%}"
             if f.ceiling_rate else "-"),
            ("worker peak RSS (largest process)", lambda f: f"{f.worker_rss_mb:.0f} MB"),
        ]
    stages = list(dict.fromkeys(k for f in figures for k in f.cpu))
    rows += [(f"CPU, {stage}", (lambda s: lambda f: f"{f.cpu.get(s, 0):.1f} s")(stage))
             for stage in stages]
    if not args.plan_only:
        rows.append(("worker CPU per message",
                     lambda f: f"{1000 * f.cpu.get('worker, whole run', 0) / max(f.sent, 1):.2f}"
                               " ms"))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(f) for f in figures) + " |")
    if len(figures) >= 2:
        small, large = figures[0], figures[-1]
        print(f"\nplanning per reader, {large.subscribers:,} vs {small.subscribers:,}: "
              f"x{large.plan_us_per_reader / max(small.plan_us_per_reader, 1e-9):.2f}")
        if not args.plan_only:
            per_small = small.send_s / max(small.sent, 1)
            per_large = large.send_s / max(large.sent, 1)
            print(f"send time per message, {large.subscribers:,} vs {small.subscribers:,}: "
                  f"x{per_large / per_small:.2f}")
    if args.json:
        print(json.dumps({
            "python": platform.python_version(), "cores": cores, "items": args.items,
            "concurrency": None if args.plan_only else args.concurrency,
            "planning_workers": 1 if args.plan_only else args.planning_workers,
            "profiles": args.profiles,
            "ceiling_connections": args.ceiling_connections, "dkim": not args.no_dkim,
            "plan_only": args.plan_only, "load_start": loads[0], "load_end": loads[1],
            "by_subscribers": {str(f.subscribers): f.as_json() for f in figures},
        }, sort_keys=False))


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
    parser.add_argument("--profiles", type=int, default=0,
                        help="readers share the time zone, grouping and filters of this many "
                             "reader profiles (popular ones most: weights 1/rank); 0, the "
                             "default: each reader's drawn alone")
    parser.add_argument("--planning-workers", type=int, default=2,
                        help="DIGEST_PLANNING_WORKERS: planners of the run, the command and "
                             "this many less one plan_run tasks on the worker (1 with "
                             "--plan-only: no worker)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="DIGEST_BATCH_SIZE for the run (default: the project's)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the worker to finish one run")
    parser.add_argument("--no-dkim", action="store_true",
                        help="send unsigned (default: DKIM-signed with a key made for the run)")
    parser.add_argument("--plan-only", action="store_true",
                        help="no worker: plan and enqueue into a Redis nobody consumes, and "
                             "report planning alone (for counts too large to send)")
    parser.add_argument("--plan-timeout", type=float, default=0,
                        help="with --plan-only: stop the command after this many seconds and "
                             "report what was planned by then (0: wait for it)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with every figure as the last line")
    args = parser.parse_args(argv)

    def stopped(signum, _frame):  # the finally clauses drop the database and stop the parts
        raise StackError(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stopped)
    try:
        sink_path = "" if args.plan_only else find_sink()
        counts = [int(c.replace("_", "")) for c in args.subscribers.split(",") if c.strip()]
        load_start = load_average()
        progress(f"load average at the start: {load_start}")
        figures = []
        for n in counts:
            figures.append(measure(args, n, sink_path))
        load_end = load_average()
        report(figures, args, (load_start, load_end))
    except StackError as exc:
        print(f"bench/stack.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
