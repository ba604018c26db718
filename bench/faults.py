"""The fault campaign: weekly sends through real parts while they fail, then count what reached
the readers.

It starts parts of its own, so restarting them touches nothing else: a PostgreSQL cluster
(initdb in a temp dir, a spare port), a Redis without persistence, two Celery prefork workers
(``-c 1`` each) and one beat, and the faulty SMTP server ``digest.devtools.faultsmtp`` (451/421
and dropped connections at DATA for a share of transactions, 550 5.1.1 for a fixed share of
addresses, 5xx at MAIL FROM during a window). Each round ingests new items, runs
``digest send weekly --now --as-of DATE`` as an operator would, injects one fault at a random
moment of the send, waits until every delivery is final (or the round's timeout) and counts:

- lost: should have received (active at the end, not an unknown user) and never accepted;
- duplicates: a delivery the server accepted more than once (same Message-ID);
- non-final: still pending, sending or deferred when the round's time ran out;
- mailed after unsubscribing: accepted after the reader's unsubscribe committed.

Exit status 1 on any lost, non-final or mailed-after-unsubscribing delivery.

    python bench/faults.py                              # 20 rounds x 2000 subscribers
    python bench/faults.py --rounds 5 --subscribers 300 --faults kill-worker,restart-redis
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from digest.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAULTS = ("kill-worker", "restart-redis", "restart-postgres", "second-beat", "unsubscribe",
          "mail-from-5xx")
FINAL = ("sent", "failed", "cancelled", "skipped")
NON_FINAL = ("pending", "sending", "deferred")
THEMES = ("Policing", "Gender equality", "Elections", "Media freedom")

class CampaignError(Exception):
    """A part would not start or stop; the campaign cannot go on."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    """initdb / pg_ctl: from pg_config's bindir, the PATH, or Debian's versioned directories."""
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                check=True).stdout.strip()
        if (Path(bindir) / name).exists():
            return str(Path(bindir) / name)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise CampaignError(f"{name} not found: install PostgreSQL's server binaries")


def wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise CampaignError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def proc_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass
class Row:
    round: int
    fault: str
    planned: int = 0
    sent: int = 0
    failed_511: int = 0
    lost: int = 0
    duplicates: int = 0
    non_final: int = 0
    after_unsub: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Campaign:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="digest-faults-"))
        self.children: dict[str, subprocess.Popen] = {}
        self.logs: list[Path] = []
        self.pg_dir = self.tmp / "pg"
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.record = self.tmp / "smtp-events.jsonl"
        self.env: dict[str, str] = {}
        self.db_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/postgres"
        self.pg_started = False
        self.kills = 0
        self.subscribers_made = 0
        self.unsubscribed: dict[int, float] = {}  # subscriber id -> when it committed
        self.beat_note = ""
        self.engine = None
        self.settings: Settings  # this process's, from the parts' DIGEST_* (start_parts)

    # --- parts -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        out = log.open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env or None, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        out.close()
        self.children[name] = proc
        return proc

    def stop_child(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        proc = self.children.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def as_pg_owner(self, argv: list[str]) -> list[str]:
        """initdb and pg_ctl refuse to run as root: run them as the postgres user then."""
        if os.geteuid() != 0:
            return argv
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise CampaignError("running as root, and there is no 'postgres' user to own the "
                                "campaign's PostgreSQL cluster: run as an ordinary user") from None
        return ["runuser", "-u", "postgres", "--", *argv]

    def start_postgres(self) -> None:
        self.pg_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chmod(self.tmp, 0o755)
            shutil.chown(self.pg_dir, "postgres", "postgres")
        proc = subprocess.run(self.as_pg_owner(
            [pg_bin("initdb"), "-D", str(self.pg_dir), "-U", "postgres", "-A", "trust", "-E",
             "UTF8", "--no-sync"]), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise CampaignError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}")
        options = (f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_dir} "
                   "-c fsync=off -c max_connections=60")
        self.pg_ctl("start", "-o", options, "-l", str(self.pg_dir / "postgres.log"))
        self.pg_started = True

    def pg_ctl(self, *args: str) -> None:
        # Output to a file, not a pipe: the server pg_ctl starts would hold a pipe open.
        log = self.tmp / "pg_ctl.log"
        with log.open("ab") as out:
            start = out.tell()
            code = subprocess.run(self.as_pg_owner(
                [pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-w", "-t", "60", *args]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=150).returncode
        if code != 0:
            said = log.read_bytes()[start:].decode(errors="replace").strip()
            raise CampaignError(f"pg_ctl {args[0]} failed: {said[-500:]}")

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise CampaignError("redis-server not found: install Redis")
        self.spawn("redis", [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])
        wait_port(self.redis_port, 20, "Redis")

    def start_smtp(self) -> int:
        a = self.args
        log = self.tmp / "smtp.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "digest.devtools.faultsmtp", "--port", "0", "--record",
             str(self.record), "--seed", str(a.seed), "--temp-share", str(a.temp_share),
             "--drop-share", str(a.drop_share), "--unknown-share", str(a.unknown_share),
             "--mail-from-seconds", str(a.mail_from_seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True,
            start_new_session=True)
        self.children["smtp"] = proc
        line = proc.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            raise CampaignError(f"the faulty SMTP server did not start: {line.strip()!r}")
        return int(match.group(1))

    def start_workers(self, *numbers: int) -> None:
        """Start Celery workers (in parallel) and wait until each says it is ready."""
        offsets = {}
        for n in numbers:
            log = self.tmp / f"worker{n}.log"
            offsets[n] = log.stat().st_size if log.exists() else 0
            self.spawn(f"worker{n}", [
                sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                "digest", "-c", "1", "-P", "prefork", "-n", f"faults{n}@%h", "--loglevel=INFO",
                "--without-gossip", "--without-mingle"])
        deadline = time.monotonic() + 90
        waiting = set(numbers)
        while waiting and time.monotonic() < deadline:
            for n in list(waiting):
                log = self.tmp / f"worker{n}.log"
                with log.open("rb") as f:
                    f.seek(offsets[n])
                    if b" ready." in f.read():
                        waiting.discard(n)
                if n in waiting and self.children[f"worker{n}"].poll() is not None:
                    deadline = 0
            time.sleep(0.2)
        if waiting:
            n = min(waiting)
            raise CampaignError(f"Celery worker{n} did not become ready: "
                                f"{self.tail(self.tmp / f'worker{n}.log')}")

    def start_beat(self, name: str) -> None:
        self.spawn(name, [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                          "-s", str(self.tmp / f"{name}-schedule"), "--loglevel=INFO"])

    def tail(self, log: Path, lines: int = 15) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start_parts(self) -> None:
        from digest.settings import Settings

        a = self.args
        self.start_postgres()
        self.start_redis()
        smtp_port = self.start_smtp()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env.update({
            "DIGEST_DATABASE_URL": self.db_url,
            "DIGEST_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DIGEST_SMTP_HOST": "127.0.0.1", "DIGEST_SMTP_PORT": str(smtp_port),
            "DIGEST_SMTP_TIMEOUT": "10",
            "DIGEST_SECRET_KEY": secrets.token_urlsafe(32),
            "DIGEST_RETRY_BASE_SECONDS": str(a.retry_base_seconds),
            "DIGEST_LEASE_SECONDS": str(a.lease_seconds),
            "DIGEST_BATCH_SIZE": str(a.batch_size),
            "DIGEST_VAR_DIR": str(self.tmp / "var"),
            "PYTHONUNBUFFERED": "1",
        })
        # Short beat intervals and orphan age, so a round's lost work comes back in seconds.
        wanted = {"sweep_seconds": a.beat_seconds, "retry_sweep_seconds": a.beat_seconds,
                  "orphan_after_seconds": a.orphan_after_seconds}
        missing = [name for name in wanted if name not in Settings.model_fields]
        if missing:
            raise CampaignError(f"this version has no setting {', '.join(missing)}: the "
                                "campaign needs the sweep (DIGEST_SWEEP_SECONDS and friends)")
        env.update({f"DIGEST_{name.upper()}": str(v) for name, v in wanted.items()})
        self.beat_note = ", ".join(f"DIGEST_{name.upper()}={v}" for name, v in wanted.items())
        self.env = env
        # The parts get these as their environment; this process, as its Settings object.
        self.settings = Settings(**{k[len("DIGEST_"):].lower(): v for k, v in env.items()
                                    if k.startswith("DIGEST_")})
        self.digest_cli("db", "upgrade")
        self.start_workers(1, 2)
        self.start_beat("beat")
        from sqlalchemy import create_engine

        self.engine = create_engine(self.db_url, pool_pre_ping=True)

    def digest_cli(self, *args: str, timeout: float = 180) -> str:
        exe = Path(sys.executable).with_name("digest")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                                "from digest.cli import main; main()"]
        proc = subprocess.run([*argv, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise CampaignError(f"digest {' '.join(args)} exited {proc.returncode}: "
                                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc.stdout

    def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        for name in list(self.children):
            self.stop_child(name, grace=5)
        if self.pg_started:
            with contextlib.suppress(CampaignError, subprocess.TimeoutExpired, OSError):
                self.pg_ctl("stop", "-m", "immediate")
        if self.args.keep:
            print(f"kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- data --------------------------------------------------------------------------

    def ingest(self, round_no: int, when: datetime) -> None:
        from digest import ingest

        items = [{"guid": f"faults-{round_no}-{i}", "title": f"Round {round_no}: {theme}",
                  "summary": f"An item about {theme} for round {round_no}.",
                  "published_at": (when - timedelta(hours=2)).isoformat(),
                  "content_type": "News", "themes": [theme]}
                 for i, theme in enumerate(THEMES)]
        # ingested_at is the round's clock, so the weekly window (watermark, as-of] holds them.
        ingest.ingest_json(json.dumps(items), settings=self.settings,
                           now=when - timedelta(hours=1))

    def top_up_subscribers(self) -> None:
        """Active weekly subscribers back up to --subscribers (unsubscribes and bounces leave)."""
        from sqlalchemy import func, select

        from digest.db import session_scope
        from digest.models import Subscriber
        from digest.subscribers import import_csv

        # An hour far from now, so the beat's own tick never plans these subscribers' slot.
        hour = (datetime.now(UTC).hour + 12) % 24
        with session_scope(self.settings.database_url) as session:
            active = session.scalar(select(func.count()).where(Subscriber.status == "active"))
            missing = self.args.subscribers - active
            if missing <= 0:
                return
            lines = ["email,frequency,timezone,weekday,hour,themes,status"]
            for _ in range(missing):
                i = self.subscribers_made
                self.subscribers_made += 1
                themes = ("" if i % 3 == 0 else THEMES[i % 4] if i % 3 == 1
                          else f"{THEMES[i % 4]}|{THEMES[(i + 1) % 4]}")
                lines.append(f"reader{i}@example.org,weekly,UTC,0,{hour},{themes},active")
            report = import_csv(session, "\n".join(lines) + "\n",
                                smtputf8=self.settings.smtputf8)
            if report.errors:
                raise CampaignError(f"subscriber import refused rows: {report.errors[:3]}")

    # --- one round ---------------------------------------------------------------------

    def statuses(self, run_id: int) -> Counter:
        from sqlalchemy import text

        for _ in range(60):
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(text("SELECT status, count(*) FROM deliveries "
                                             "WHERE run_id = :r GROUP BY status"), {"r": run_id})
                    return Counter(dict(rows.all()))
            except Exception:  # PostgreSQL restarting: ask again
                time.sleep(1)
        raise CampaignError("cannot read the deliveries from PostgreSQL for a minute")

    def wait_progress(self, run_id: int, fraction: float, deadline: float) -> None:
        while time.monotonic() < deadline:
            counts = self.statuses(run_id)
            total = sum(counts.values()) - counts["skipped"]
            done = sum(counts[s] for s in FINAL) - counts["skipped"]
            if total == 0 or done >= fraction * total:
                return
            time.sleep(0.05)

    def wait_final(self, run_id: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not any(self.statuses(run_id)[s] for s in NON_FINAL):
                return
            time.sleep(0.5)

    def inject(self, fault: str, run_id: int) -> str:
        if fault == "kill-worker":
            self.kills += 1
            n = 1 + self.rng.randrange(2)
            name = f"worker{n}"
            main = self.children[name].pid
            pools = {w: proc_children(self.children[w].pid) for w in ("worker1", "worker2")}
            pid = self.busiest([c for cs in pools.values() for c in cs])
            if self.kills % 2 and pid is not None:
                # The pool process doing the work (the busiest one); Celery's main one stays.
                name = next(w for w, cs in pools.items() if pid in cs)
                os.kill(pid, signal.SIGKILL)
                return f"SIGKILL {name}'s pool process"
            if pid is not None:
                name = next(w for w, cs in pools.items() if pid in cs)
                n, main = int(name[-1]), self.children[name].pid
            os.killpg(main, signal.SIGKILL)  # the whole worker; a supervisor restarts it
            self.children.pop(name).wait(10)
            self.start_workers(n)
            return f"SIGKILL {name} (all), restarted"
        if fault == "restart-redis":
            self.stop_child("redis", signal.SIGKILL)
            time.sleep(0.5)
            self.start_redis()
            return "Redis killed and restarted (queue emptied)"
        if fault == "restart-postgres":
            self.pg_ctl("restart", "-m", "fast", "-l", str(self.pg_dir / "postgres.log"))
            return "pg_ctl restart -m fast"
        if fault == "second-beat":
            self.start_beat("beat2")
            return "a second beat until the round ends"
        if fault == "unsubscribe":
            return self.unsubscribe_pending(run_id)
        raise CampaignError(f"unknown fault {fault!r}")

    def busiest(self, pids: list[int]) -> int | None:
        before = {pid: cpu_ticks(pid) for pid in pids}
        time.sleep(0.2)
        gained = {pid: cpu_ticks(pid) - before[pid] for pid in pids}
        return max(gained, key=gained.get) if gained else None

    def unsubscribe_pending(self, run_id: int) -> str:
        """A share of this run's readers unsubscribe while their digest is still pending, as
        their link would (``digest.subscribers.unsubscribe``)."""
        from sqlalchemy import select

        from digest.db import session_scope
        from digest.models import Delivery, Subscriber
        from digest.subscribers import unsubscribe

        with session_scope(self.settings.database_url) as session:
            # Locked, so "pending" stays true until the unsubscribe has committed.
            pending = session.scalars(
                select(Delivery.subscriber_id).where(Delivery.run_id == run_id,
                                                     Delivery.status == "pending")
                .order_by(Delivery.id).with_for_update()).all()
            share = max(1, round(self.args.unsubscribe_share * self.args.subscribers))
            chosen = self.rng.sample(list(pending), min(share, len(pending)))
            for sub_id in chosen:
                unsubscribe(session, session.get(Subscriber, sub_id))
        moment = time.time()
        for sub_id in chosen:
            self.unsubscribed[sub_id] = moment
        return f"{len(chosen)} of {len(pending)} pending readers unsubscribed"

    def run_round(self, round_no: int, fault: str) -> Row:
        from digest.devtools.faultsmtp import read_events

        a = self.args
        row = Row(round_no, fault)
        started = time.monotonic()
        deadline = started + a.timeout
        when = self.base + timedelta(days=7 * (round_no - 1))
        self.ingest(round_no, when)
        self.top_up_subscribers()
        out = self.digest_cli("send", "weekly", "--now", "--as-of", when.isoformat())
        match = re.search(r"run #(\d+)", out)
        if not match:
            raise CampaignError(f"digest send weekly planned no run: {out.strip()}")
        run_id = int(match.group(1))
        if fault == "mail-from-5xx":
            # Opened as the send starts: the batches are queued and the workers take them.
            os.kill(self.children["smtp"].pid, signal.SIGUSR1)
            row.fault = f"mail-from-5xx: {a.mail_from_seconds:g} s of 554 5.7.1 at MAIL FROM"
        if fault != "mail-from-5xx":
            # Unsubscribing is while digests are pending: early in the send.
            low, high = (0.0, 0.2) if fault == "unsubscribe" else (0.05, 0.6)
            at = self.rng.uniform(low, high)
            self.wait_progress(run_id, at, deadline)
            done = self.statuses(run_id)
            share = (sum(done[s] for s in FINAL) - done["skipped"]) / max(
                1, sum(done.values()) - done["skipped"])
            row.fault = f"{fault}: {self.inject(fault, run_id)} at {share:.0%} done"
        self.wait_final(run_id, deadline)
        self.stop_child("beat2")
        row.seconds = time.monotonic() - started
        self.count(row, run_id, read_events(self.record))
        return row

    def count(self, row: Row, run_id: int, events: list[dict]) -> None:
        from sqlalchemy import text

        from digest.devtools.faultsmtp import FaultPlan

        plan = FaultPlan(self.args.seed, self.args.temp_share, self.args.drop_share,
                         self.args.unknown_share)
        accepted: dict[int, list[float]] = defaultdict(list)
        for e in events:
            if e["event"] == "accepted" and e.get("delivery") is not None:
                accepted[int(e["delivery"])].append(e["t"])
        with self.engine.connect() as conn:
            rows = conn.execute(text(
                # Our note says why a row ended as it did; else the server's reply.
                "SELECT d.id, d.subscriber_id, d.email, d.status, "
                "COALESCE(d.note, d.smtp_reply), s.status "
                "FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                "WHERE d.run_id = :r"), {"r": run_id}).all()
        lost_reasons: Counter = Counter()
        odd: Counter = Counter()
        for did, sub_id, email, status, reply, sub_status in rows:
            if status == "skipped":
                continue
            row.planned += 1
            row.sent += status == "sent"
            unknown = plan.unknown_user(email)
            row.failed_511 += status == "failed" and unknown
            row.non_final += status in NON_FINAL
            got = accepted.get(did, [])
            row.duplicates += max(0, len(got) - 1)
            if status == "sent" and not got:
                odd["recorded sent, never accepted"] += 1
            if got and status != "sent":
                odd[f"accepted, recorded {status}"] += 1
            if sub_id in self.unsubscribed:
                row.after_unsub += any(t > self.unsubscribed[sub_id] for t in got)
            expected = sub_status == "active" and not unknown
            if expected and status in FINAL and not got:
                row.lost += 1
                lost_reasons[f"{status}: {(reply or '')[:90]}"] += 1
        for reason, n in lost_reasons.most_common(3):
            row.notes.append(f"lost {n}: {reason}")
        for what, n in odd.items():
            row.notes.append(f"{what}: {n}")

    # --- the window between the server's 250 and the write of 'sent' ----------------

    def duplicate_window(self, events: list[dict]) -> str:
        """How long an accepted message waits until its row says 'sent'.

        Outcomes are written in groups (``DIGEST_RECORD_EVERY`` / ``DIGEST_RECORD_MS``), so
        the window is the server's 250 to the group's write (``updated_at``, stamped by the
        write), plus that write's commit; a worker killed inside it resends those messages."""
        from sqlalchemy import text

        first: dict[int, float] = {}
        by_peer: dict[int, list[float]] = defaultdict(list)
        for e in events:
            if e["event"] == "accepted" and e.get("delivery") is not None:
                first.setdefault(int(e["delivery"]), e["t"])
                by_peer[e["peer"]].append(e["t"])
        with self.engine.connect() as conn:
            sent = conn.execute(text("SELECT id, updated_at FROM deliveries "
                                     "WHERE status = 'sent'")).all()
            probe = sent[0][0] if sent else None
            commits = []
            for _ in range(200 if probe else 0):
                t0 = time.perf_counter()
                conn.execute(text("UPDATE deliveries SET updated_at = updated_at WHERE id = :i"),
                             {"i": probe})
                conn.commit()
                commits.append(time.perf_counter() - t0)
        # Rows written again later (a bounce, a sweep) are not this window: drop > 60 s.
        waits = [(at.replace(tzinfo=UTC).timestamp() - first[did])
                 for did, at in sent if did in first and at]
        waits = [w for w in waits if -1 < w < 60]
        cycle = [b - a for ts in by_peer.values() for a, b in itertools.pairwise(ts) if b - a < 5]
        w50, c50, m50 = pct(waits, 0.5) * 1000, pct(commits, 0.5) * 1000, pct(cycle, 0.5) * 1000
        in_window = (w50 + c50) / m50 if m50 else float("nan")
        return (f"  duplicate window: server's 250 -> its group's write p50 {w50:.1f} ms, "
                f"p99 {pct(waits, 0.99) * 1000:.1f} ms, max {max(waits, default=0) * 1000:.1f} ms;"
                f" + the commit p50 {c50:.2f} ms\n"
                f"                    one message's whole cycle on a connection p50 {m50:.2f} ms:"
                f" a kill while sending resends ~{in_window:.1f} messages per killed process")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Digest fault campaign (see the README).")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--subscribers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma list, cycled over the rounds; kinds: {', '.join(FAULTS)}")
    p.add_argument("--timeout", type=float, default=240, help="seconds per round")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop the whole campaign after this long (default: rounds x timeout + 300)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lease-seconds", type=int, default=20)
    p.add_argument("--retry-base-seconds", type=int, default=1)
    p.add_argument("--beat-seconds", type=int, default=3,
                   help="interval of the beat's sweep and retry tasks")
    p.add_argument("--orphan-after-seconds", type=int, default=15,
                   help="a pending row untouched this long is enqueued again by the sweep")
    p.add_argument("--temp-share", type=float, default=0.05, help="451/421 at DATA")
    p.add_argument("--drop-share", type=float, default=0.03, help="connection dropped at DATA")
    p.add_argument("--unknown-share", type=float, default=0.02, help="550 5.1.1 addresses")
    p.add_argument("--mail-from-seconds", type=float, default=3.0)
    p.add_argument("--unsubscribe-share", type=float, default=0.05)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        p.error(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(FAULTS)}")
    if args.rounds < 1 or args.subscribers < 1:
        p.error("--rounds and --subscribers must be at least 1")
    args.kinds = kinds
    return args


def _stop(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    limit = args.max_seconds or args.rounds * args.timeout + 300

    def _too_long(_signum, _frame):
        raise CampaignError(f"the campaign ran past --max-seconds {limit:.0f}")

    signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(int(limit))
    campaign = Campaign(args)
    rows: list[Row] = []
    try:
        t0 = time.monotonic()
        campaign.start_parts()
        now = datetime.now(UTC)
        # Rounds a week apart, the last one a week ago: a real send may not be planned as of
        # a moment ahead of the present (rule C1, digest.selection.clock).
        campaign.base = (now - timedelta(days=7 * args.rounds)).replace(
            minute=0, second=0, microsecond=0)
        print("Digest fault campaign")
        print(f"  machine:  os.cpu_count()={os.cpu_count()}, Python {sys.version.split()[0]}")
        print(f"  sizes:    {args.rounds} rounds x {args.subscribers} weekly subscribers, "
              f"batch {args.batch_size}, seed {args.seed}, faults {','.join(args.kinds)}")
        print(f"  parts:    PostgreSQL (own cluster), Redis (no persistence), 2 Celery prefork "
              f"workers (-c 1), 1 beat, faulty SMTP; started in {time.monotonic() - t0:.1f} s")
        print(f"  smtp:     {args.temp_share:.0%} 451/421 and {args.drop_share:.0%} dropped at "
              f"DATA per attempt, {args.unknown_share:.0%} of addresses 550 5.1.1")
        print(f"  timing:   lease {args.lease_seconds} s, retry base {args.retry_base_seconds} s, "
              f"round timeout {args.timeout:g} s; beat: {campaign.beat_note}")
        head = (f"  {'round':>5}  {'planned':>7} {'sent':>6} {'5.1.1':>5} {'lost':>5} "
                f"{'dups':>5} {'nonfin':>6} {'unsub':>5} {'secs':>6}  fault")
        print(head, flush=True)
        for n in range(1, args.rounds + 1):
            row = campaign.run_round(n, args.kinds[(n - 1) % len(args.kinds)])
            rows.append(row)
            print(f"  {row.round:>5}  {row.planned:>7} {row.sent:>6} {row.failed_511:>5} "
                  f"{row.lost:>5} {row.duplicates:>5} {row.non_final:>6} {row.after_unsub:>5} "
                  f"{row.seconds:>6.1f}  {row.fault}", flush=True)
            for note in row.notes:
                print(f"  {'':>5}  {note}", flush=True)
        total = Row(0, "")
        for r in rows:
            for name in ("planned", "sent", "failed_511", "lost", "duplicates", "non_final",
                         "after_unsub", "seconds"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
        print(f"  {'total':>5}  {total.planned:>7} {total.sent:>6} {total.failed_511:>5} "
              f"{total.lost:>5} {total.duplicates:>5} {total.non_final:>6} "
              f"{total.after_unsub:>5} {total.seconds:>6.1f}")
        from digest.devtools.faultsmtp import read_events

        events = read_events(campaign.record)
        faults = Counter(e["event"] for e in events)
        print("  smtp server: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
        print(campaign.duplicate_window(events))
        bad = total.lost or total.non_final or total.after_unsub
        print("  result: " + ("FAILED: deliveries lost, left non-final or mailed after "
                              "unsubscribing" if bad else "no loss"))
        return 1 if bad else 0
    except (CampaignError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        for log in campaign.logs[-4:]:
            print(f"--- {log.name}\n{campaign.tail(log, 8)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        campaign.cleanup()


if __name__ == "__main__":
    sys.exit(main())
