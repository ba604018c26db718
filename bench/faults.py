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
- mailed after unsubscribing: accepted after the reader's unsubscribe committed;
- wrongly failed or suppressed: failed, cancelled or suppressed while neither an unknown user,
  nor unsubscribed, nor (under the SIZE fault) over the announced size;
- operator action: what an operator would have had to do (rerun ``digest send``, restart a
  worker with no supervisor, a run not final within the bound).

A round is judged only once every row is final (or ``--final-wait`` has run out: "not final
after X s") and the server has fsynced its record; every "lost" is checked against a second
reading of the record before it is printed. bench/README.md lists the fault kinds.

Exit status 1 on any lost, non-final, mailed-after-unsubscribing, wrongly failed or
suppressed delivery, or a round that needed an operator.

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
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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

OLD_FAULTS = ("kill-worker", "restart-redis", "restart-postgres", "second-beat", "unsubscribe",
              "mail-from-5xx")
# Issue 15's kinds; "-at-send" ones start before `digest send` runs and last through it.
NEW_FAULTS = ("stall-data", "late-250", "reset-after-250", "size", "sigstop-pool",
              "sigstop-worker", "pg-slots", "pg-slots-at-send", "pg-readonly", "disk-full",
              "disk-full-at-send", "redis-oom", "partition", "clock-behind", "clock-ahead")
FAULTS = OLD_FAULTS + NEW_FAULTS
AT_SEND = ("pg-slots-at-send", "disk-full-at-send")
SIZE_LIMIT = 30 * 1024  # the SIZE the server announces in the size kind
LONG_READERS = 3  # readers whose digests are ~55 KB (the size kind's over-size messages)
LONG_THEME = "Long reads"
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
    kind: str = ""
    planned: int = 0
    sent: int = 0
    failed_511: int = 0
    lost: int = 0
    lost_first: int = 0  # the first reading of the record, before the lost were re-checked
    duplicates: int = 0
    non_final: int = 0
    after_unsub: int = 0
    wrong: int = 0  # wrongly failed, cancelled or suppressed
    operator: int = 0  # things an operator had to do
    oversize: int = 0  # deliveries over the announced SIZE (size kind), failed rightly
    restarts: int = 0  # worker restarts by the campaign's supervisor
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def judge(rows: list[tuple], accepted: dict[int, list[float]], *, unknown_user,
          unsubscribed: dict[int, float], oversize: set[int], suppressed: set[str],
          row: Row) -> list[int]:
    """Count one round's deliveries against the server's record into ``row``.

    ``rows``: (delivery id, subscriber id, email, status, note or reply, subscriber status);
    ``accepted``: delivery id -> times the server said 250; ``unknown_user(email)``: the
    server's fixed 5.1.1 addresses; ``unsubscribed``: subscriber id -> when the campaign's
    unsubscribe committed; ``oversize``: subscriber ids whose digest is over the announced
    SIZE (may fail); ``suppressed``: suppressed addresses. Returns the lost delivery ids."""
    lost_ids: list[int] = []
    lost_reasons: Counter = Counter()
    wrong_reasons: Counter = Counter()
    odd: Counter = Counter()
    for did, sub_id, email, status, reply, sub_status in rows:
        if status == "skipped":
            continue
        row.planned += 1
        row.sent += status == "sent"
        unknown = unknown_user(email)
        left = sub_id in unsubscribed
        row.failed_511 += status == "failed" and unknown
        row.non_final += status in NON_FINAL
        got = accepted.get(did, [])
        row.duplicates += max(0, len(got) - 1)
        if status == "sent" and not got:
            odd["recorded sent, never accepted"] += 1
        if got and status != "sent":
            odd[f"accepted, recorded {status}"] += 1
        if left:
            row.after_unsub += any(t > unsubscribed[sub_id] for t in got)
        big = sub_id in oversize
        row.oversize += big
        excused = unknown or left or big
        if not excused and (status in ("failed", "cancelled") or email.lower() in suppressed
                            or sub_status not in ("active", "unsubscribed")):
            row.wrong += 1
            what = status if status in ("failed", "cancelled") else f"reader {sub_status}"
            wrong_reasons[f"{what}: {(reply or '')[:80]}"] += 1
        expected = sub_status == "active" and not unknown and not big
        if expected and status in FINAL and not got:
            row.lost += 1
            lost_ids.append(did)
            lost_reasons[f"{status}: {(reply or '')[:90]}"] += 1
    for reason, n in lost_reasons.most_common(3):
        row.notes.append(f"lost {n}: {reason}")
    for reason, n in wrong_reasons.most_common(3):
        row.notes.append(f"wrongly {reason} ({n})")
    for what, n in odd.items():
        row.notes.append(f"{what}: {n}")
    return lost_ids


def accepted_by_delivery(events: list[dict]) -> dict[int, list[float]]:
    accepted: dict[int, list[float]] = defaultdict(list)
    for e in events:
        if e["event"] == "accepted" and e.get("delivery") is not None:
            accepted[int(e["delivery"])].append(e["t"])
    return accepted


def summarise(rows: list[Row]) -> list[str]:
    """The campaign's table per fault kind, as lines."""
    by_kind: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_kind[r.kind].append(r)
    head = (f"  {'kind':<18} {'rounds':>6} {'readers':>7} {'lost':>5} {'dups':>5} "
            f"{'dups/fault':>10} {'nonfin':>6} {'unsub':>5} {'wrong':>5} {'operator':>8}")
    lines = [head]
    for kind, rs in by_kind.items():
        dups = sum(r.duplicates for r in rs)
        lines.append(
            f"  {kind:<18} {len(rs):>6} {sum(r.planned for r in rs):>7} "
            f"{sum(r.lost for r in rs):>5} {dups:>5} "
            f"{' / '.join(str(r.duplicates) for r in rs):>10} "
            f"{sum(r.non_final for r in rs):>6} {sum(r.after_unsub for r in rs):>5} "
            f"{sum(r.wrong for r in rs):>5} {sum(r.operator for r in rs):>8}")
    return lines


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
        self.long_reader_ids: set[int] = set()
        self.proxy_port = 0
        self.pg_mount: Path | None = None  # the tmpfs the cluster lives on (disk kinds)
        self.clock_file = self.tmp / "worker2-clock-offset"
        self.smtp_answers: queue.Queue[str] = queue.Queue()
        self.restarts = 0  # by the supervisor
        self.next_restart: dict[int, float] = {}
        self.worker_deaths: list[str] = []
        self.base = datetime.now(UTC)
        self.beat_note = ""
        self.engine = None
        self.settings: Settings  # this process's, from the parts' DIGEST_* (start_parts)

    # --- parts -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        out = log.open("ab")
        env = kwargs.pop("env", None) or self.env or None
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
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

    def mount_pg_fs(self) -> None:
        """The disk kinds: the cluster lives on a small tmpfs of its own, so a ballast file
        fills a real filesystem (ENOSPC) without touching the machine's disks."""
        if os.geteuid() != 0:
            raise CampaignError("the disk-full kinds mount a small tmpfs for the cluster and "
                                "need root; leave them out of --faults as an ordinary user")
        mount = self.tmp / "pgfs"
        mount.mkdir()
        size = f"size={self.args.pg_fs_mb}m"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CampaignError(f"cannot mount a tmpfs for the disk-full kinds: "
                                f"{proc.stderr.strip()}; leave them out of --faults")
        self.pg_mount = mount
        self.pg_dir = mount / "pg"

    def start_postgres(self) -> None:
        if any(k.startswith("disk-full") for k in self.args.kinds):
            self.mount_pg_fs()
        self.pg_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chmod(self.tmp, 0o755)
            shutil.chown(self.pg_dir, "postgres", "postgres")
            if self.pg_mount is not None:
                os.chmod(self.pg_mount, 0o755)
        proc = subprocess.run(self.as_pg_owner(
            [pg_bin("initdb"), "-D", str(self.pg_dir), "-U", "postgres", "-A", "trust", "-E",
             "UTF8", "--no-sync", "--wal-segsize=1"]), capture_output=True, text=True,
            timeout=120)
        if proc.returncode != 0:
            raise CampaignError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}")
        options = (f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_dir} "
                   "-c fsync=off -c max_connections=60 -c min_wal_size=8MB "
                   "-c max_wal_size=64MB")
        self.pg_log = self.tmp / "postgres.log"
        if os.geteuid() == 0:
            self.pg_log.touch()
            shutil.chown(self.pg_log, "postgres", "postgres")
        self.pg_ctl("start", "-o", options, "-l", str(self.pg_log))
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
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("ab"),
            text=True, start_new_session=True)
        self.children["smtp"] = proc
        line = proc.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            raise CampaignError(f"the faulty SMTP server did not start: {line.strip()!r}")

        def answers() -> None:
            for answer in proc.stdout:
                self.smtp_answers.put(answer.strip())

        threading.Thread(target=answers, daemon=True).start()
        return int(match.group(1))

    def smtp_command(self, line: str, timeout: float = 30) -> str:
        """One control line to the faulty server (digest.devtools.faultsmtp), its answer."""
        proc = self.children["smtp"]
        while not self.smtp_answers.empty():
            self.smtp_answers.get_nowait()
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        try:
            answer = self.smtp_answers.get(timeout=timeout)
        except queue.Empty:
            raise CampaignError(f"the faulty SMTP server did not answer {line!r} "
                                f"within {timeout:g} s") from None
        if answer.startswith("error"):
            raise CampaignError(f"the faulty SMTP server refused {line!r}: {answer}")
        return answer

    def flush_smtp(self) -> int:
        """The server's record fsynced; waits until the file holds every event it counts."""
        from digest.devtools.faultsmtp import read_events

        n = int(self.smtp_command("flush").split()[1])
        deadline = time.monotonic() + 10
        while len(read_events(self.record)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return n

    def start_proxy(self) -> int:
        """The TCP proxy the workers and the beat reach PostgreSQL through (partition kind)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "digest.devtools.tcpproxy", "--target",
             f"127.0.0.1:{self.pg_port}", "--port", "0"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=(self.tmp / "proxy.log").open("ab"), text=True, start_new_session=True)
        self.children["proxy"] = proc
        line = proc.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            raise CampaignError(f"the TCP proxy did not start: {line.strip()!r}")
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
                "--without-gossip", "--without-mingle"], env=self.worker_env(n))
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

    def worker_env(self, n: int) -> dict[str, str]:
        """Workers and beats reach PostgreSQL through the proxy; worker2's wall clock follows
        the clock file when a clock kind is in the campaign (bench/clockskew)."""
        env = dict(self.env)
        env["DIGEST_DATABASE_URL"] = self.db_url.replace(f":{self.pg_port}/",
                                                         f":{self.proxy_port}/")
        if n == 2 and any(k.startswith("clock-") for k in self.args.kinds):
            env["DIGEST_BENCH_CLOCK_FILE"] = str(self.clock_file)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT / "bench" / "clockskew"), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def start_beat(self, name: str) -> None:
        self.spawn(name, [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                          "-s", str(self.tmp / f"{name}-schedule"), "--loglevel=INFO"],
                   env=self.worker_env(0))

    def supervise(self, row: Row | None = None) -> None:
        """A worker that exited is started again, as compose's `restart:` or systemd's
        Restart= would; with --no-supervisor it stays down (an operator has to act)."""
        for n in (1, 2):
            name = f"worker{n}"
            proc = self.children.get(name)
            if proc is None or proc.poll() is None:
                continue
            if time.monotonic() < self.next_restart.get(n, 0):
                continue
            code = proc.returncode
            why = self.tail(self.tmp / f"{name}.log", 30)
            # The critical line (Celery's "Unrecoverable error: ...") if any, else the last.
            found = (re.search(r'"event": "([^"]{0,120})", "level": "critical"', why)
                     or re.search(r'"event": "([^"]{0,120})[^\n]*$', why))
            self.worker_deaths.append(f"{name} exited {code}: "
                                      f"{found.group(1) if found else why[-120:]}")
            if not self.args.supervisor:
                self.next_restart[n] = float("inf")  # noted once; an operator restarts it
                continue
            self.children.pop(name)
            self.restarts += 1
            if row is not None:
                row.restarts += 1
            try:
                self.start_workers(n)
            except CampaignError:
                # Died again while starting (the fault still lasts): try again in 5 s,
                # as systemd's RestartSec=5 would.
                self.next_restart[n] = time.monotonic() + 5

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
        self.proxy_port = self.start_proxy()
        self.clock_file.write_text("0\n")
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
            "DIGEST_SEND_RATE": str(a.send_rate),
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
            said = (proc.stderr or proc.stdout).strip()
            # The exception's own line, wherever it is (SQL parameters can be long), or the end.
            errors = re.findall(r"^(?:\S+\.)?(\w+(?:Error|Exception): [^\n]{0,160})", said, re.M)
            raise CampaignError(f"digest {' '.join(args)} exited {proc.returncode}: "
                                f"{errors[-1] if errors else said[-500:]}")
        return proc.stdout

    def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        for name in list(self.children):
            self.stop_child(name, grace=5)
        if self.pg_started:
            with contextlib.suppress(CampaignError, subprocess.TimeoutExpired, OSError):
                self.pg_ctl("stop", "-m", "immediate")
        if self.pg_mount is not None:
            if self.args.keep:  # the cluster outlives its tmpfs, for inspection
                with contextlib.suppress(OSError, shutil.Error):
                    (self.pg_mount / "ballast").unlink(missing_ok=True)
                    shutil.copytree(self.pg_dir, self.tmp / "pg", symlinks=True)
            subprocess.run(["umount", "-l", str(self.pg_mount)], capture_output=True)
        if self.args.keep:
            print(f"kept: {self.tmp} (every part's log, smtp-events.jsonl)")
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
        # Twenty long items only the long readers want: their digests are ~55 KB.
        words = " ".join(f"word{j}" for j in range(400))
        items += [{"guid": f"faults-{round_no}-long-{i}",
                   "title": f"Round {round_no}, long read {i}: " + words[:230],
                   "summary": words, "published_at": (when - timedelta(hours=2)).isoformat(),
                   "content_type": "News", "themes": [LONG_THEME]} for i in range(20)]
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
            lines = ["email,frequency,timezone,weekday,hour,themes,status"]
            if not self.long_reader_ids:
                lines += [f"longread{k}@example.org,weekly,UTC,0,{hour},{LONG_THEME},active"
                          for k in range(LONG_READERS)]
                report = import_csv(session, "\n".join(lines) + "\n",
                                    smtputf8=self.settings.smtputf8)
                if report.errors:
                    raise CampaignError(f"subscriber import refused rows: {report.errors[:3]}")
                session.flush()
                self.long_reader_ids = set(session.scalars(
                    select(Subscriber.id).where(Subscriber.email.like("longread%"))).all())
                lines = lines[:1]
            active = session.scalar(select(func.count()).where(Subscriber.status == "active"))
            missing = self.args.subscribers - active
            if missing <= 0:
                return
            for _ in range(missing):
                i = self.subscribers_made
                self.subscribers_made += 1
                # Every theme but the long reads, not an empty filter (which is "everything"):
                # only the long readers get the ~55 KB digests of the size kind.
                themes = ("|".join(THEMES) if i % 3 == 0 else THEMES[i % 4] if i % 3 == 1
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

    def wait_final(self, run_id: int, deadline: float, row: Row | None = None) -> bool:
        """True once every row of the run is final; False at the deadline."""
        while time.monotonic() < deadline:
            self.supervise(row)
            if not any(self.statuses(run_id)[s] for s in NON_FINAL):
                return True
            time.sleep(0.5)
        return False

    def hold(self, seconds: float, undo, what: str) -> str:
        """Undo the fault after ``seconds`` in a thread; the round waits for it to end."""
        def later() -> None:
            time.sleep(seconds)
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - said in the round's notes
                self.undo_error = f"undoing ({what}): {exc}"

        self.undo_error = ""
        self.fault_thread = threading.Thread(target=later, daemon=True)
        self.fault_thread.start()
        return f"{what} for {seconds:.0f} s"

    def pick_pool(self) -> tuple[str, int] | None:
        pools = {w: proc_children(self.children[w].pid) for w in ("worker1", "worker2")
                 if w in self.children}
        pid = self.busiest([c for cs in pools.values() for c in cs])
        if pid is None:
            return None
        return next(w for w, cs in pools.items() if pid in cs), pid

    def admin(self, **kwargs):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.pg_port, user="postgres",
                               dbname="postgres", autocommit=True, **kwargs)

    def inject_new(self, fault: str, run_id: int | None) -> str:
        a = self.args
        d = a.duration
        if fault == "stall-data":
            self.smtp_command(f"stall-data {d:g}")
            return self.hold(d, lambda: None, "the server stops reading mid-DATA")
        if fault == "late-250":
            self.smtp_command(f"late-250 {d:g} 60 120")
            return self.hold(d, lambda: None, "the 250 to the final dot 60-120 s late")
        if fault == "reset-after-250":
            self.smtp_command(f"reset-after-250 {d:g}")
            return self.hold(d, lambda: None, "a reset right after each 250")
        if fault in ("sigstop-pool", "sigstop-worker"):
            seconds = self.rng.uniform(60, 75)
            picked = self.pick_pool()
            if picked is None:
                raise CampaignError("no pool process to stop")
            name, pid = picked
            if fault == "sigstop-pool":
                os.kill(pid, signal.SIGSTOP)

                def resume() -> None:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        raise CampaignError("the stopped pool process was gone before SIGCONT "
                                            "(its worker killed it: see the worker's log, "
                                            "e.g. a hard time limit)") from None

                return self.hold(seconds, resume, f"SIGSTOP {name}'s pool process, then SIGCONT,")
            group = self.children[name].pid
            os.killpg(group, signal.SIGSTOP)
            return self.hold(seconds, lambda: os.killpg(group, signal.SIGCONT),
                             f"SIGSTOP {name} (all), then SIGCONT,")
        if fault.startswith("pg-slots"):
            import psycopg

            hogs = []
            while len(hogs) < 500:
                try:
                    hogs.append(self.admin(application_name="faults-hog"))
                except psycopg.OperationalError:
                    break

            def free() -> None:
                for conn in hogs:
                    with contextlib.suppress(Exception):
                        conn.close()

            return self.hold(d, free, f"every PostgreSQL connection slot taken ({len(hogs)} "
                                      "held)")
        if fault == "pg-readonly":
            with self.admin() as conn:
                conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                conn.execute("SELECT pg_reload_conf()")

            def writable() -> None:
                with self.admin(options="-c default_transaction_read_only=off") as conn:
                    conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                    conn.execute("SELECT pg_reload_conf()")

            return self.hold(d, writable, "PostgreSQL read-only (ALTER SYSTEM, reload)")
        if fault.startswith("disk-full"):
            assert self.pg_mount is not None
            ballast = self.pg_mount / "ballast"
            st = os.statvfs(self.pg_mount)
            free = st.f_bavail * st.f_frsize
            subprocess.run(["fallocate", "-l", str(free), str(ballast)], check=False)
            with contextlib.suppress(OSError), ballast.open("ab") as f:  # the last blocks
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            left = os.statvfs(self.pg_mount).f_bavail * st.f_frsize
            return self.hold(d, lambda: ballast.unlink(missing_ok=True),
                             f"the cluster's filesystem full ({left} bytes left)")
        if fault == "redis-oom":
            import redis

            client = redis.Redis(port=self.redis_port)
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", used)

            def room() -> None:
                redis.Redis(port=self.redis_port).config_set("maxmemory", 0)

            return self.hold(d, room, f"Redis out of memory (maxmemory {used} B)")
        if fault == "partition":
            seconds = self.rng.uniform(30, 60)
            proxy = self.children["proxy"].pid
            os.kill(proxy, signal.SIGUSR1)
            return self.hold(seconds, lambda: os.kill(proxy, signal.SIGUSR2),
                             "workers and PostgreSQL partitioned (the proxy frozen)")
        if fault in ("clock-ahead", "clock-behind"):
            offset = 300 if fault == "clock-ahead" else -300
            self.clock_file.write_text(f"{offset}\n")
            return self.hold(d, lambda: self.clock_file.write_text("0\n"),
                             f"worker2's clock {offset:+d} s")
        raise CampaignError(f"unknown fault {fault!r}")

    def inject(self, fault: str, run_id: int) -> str:
        if fault in NEW_FAULTS:
            return self.inject_new(fault, run_id)
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
            self.pg_ctl("restart", "-m", "fast", "-l", str(self.pg_log))
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

    def send(self, when: datetime, row: Row) -> int | None:
        """`digest send weekly --now` as an operator runs it: the run's id, or None when the
        command failed (said in the row's notes)."""
        try:
            out = self.digest_cli("send", "weekly", "--now", "--as-of", when.isoformat())
        except (CampaignError, subprocess.TimeoutExpired) as exc:
            said = str(exc)
            errors = re.findall(r"\b(\w+(?:Error|Exception)\)?:? [^\n]{0,140})", said)
            row.notes.append("digest send failed: " + (errors[-1] if errors
                                                       else " ".join(said.split())[-200:]))
            return None
        match = re.search(r"run #(\d+)", out)
        if not match:
            raise CampaignError(f"digest send weekly planned no run: {out.strip()}")
        return int(match.group(1))

    def newest_run(self, after: int) -> tuple[int, str] | None:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            found = conn.execute(text("SELECT id, status FROM digest_runs WHERE id > :a "
                                      "ORDER BY id DESC LIMIT 1"), {"a": after}).first()
        return (found[0], found[1]) if found else None

    def last_run_id(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text("SELECT COALESCE(max(id), 0) FROM digest_runs")).scalar()

    def run_round(self, round_no: int, fault: str) -> Row:
        a = self.args
        row = Row(round_no, fault, fault)
        started = time.monotonic()
        since = time.time()
        deadline = started + a.timeout
        when = self.base + timedelta(days=7 * (round_no - 1))
        self.fault_thread: threading.Thread | None = None
        self.undo_error = ""
        self.worker_deaths = []
        self.ingest(round_no, when)
        self.top_up_subscribers()
        before = self.last_run_id()
        if fault == "size":
            self.smtp_command(f"size {SIZE_LIMIT}")
        if fault in AT_SEND:
            row.fault = f"{fault}: {self.inject_new(fault, None)}, while digest send plans"
        run_id = self.send(when, row)
        if fault in AT_SEND:
            if self.fault_thread is not None:
                self.fault_thread.join()
            if run_id is None:
                # Does a run resume by itself? The sweep takes on a run left planning for
                # max(30 s, a sweep): give it that and a few beats before acting.
                found = self.newest_run(before)
                waited_until = time.monotonic() + max(30, a.beat_seconds) + 8 * a.beat_seconds
                while (found is not None and found[1] == "planning"
                       and time.monotonic() < waited_until):
                    time.sleep(a.beat_seconds)
                    found = self.newest_run(before)
                if found is None or found[1] == "planning":
                    row.operator += 1
                    state = "no run" if found is None else f"run #{found[0]} still planning"
                    row.notes.append(f"after the fault: {state}; operator reruns digest send")
                    run_id = self.send(when, row)
                else:
                    run_id = found[0]
                    row.notes.append(f"run #{run_id} went on by itself ({found[1]})")
        elif run_id is None:
            row.operator += 1
            run_id = self.send(when, row)
        if run_id is None:
            row.operator += 1
            row.notes.append("no run to judge: digest send failed twice")
            row.seconds = time.monotonic() - started
            return row
        if fault == "mail-from-5xx":
            # Opened as the send starts: the batches are queued and the workers take them.
            os.kill(self.children["smtp"].pid, signal.SIGUSR1)
            row.fault = f"mail-from-5xx: {a.mail_from_seconds:g} s of 554 5.7.1 at MAIL FROM"
        elif fault == "size":
            row.fault = (f"size: the server announces SIZE {SIZE_LIMIT}; {LONG_READERS} readers' "
                         "digests are larger")
        elif fault not in AT_SEND:
            # Unsubscribing is while digests are pending: early in the send.
            low, high = (0.0, 0.2) if fault == "unsubscribe" else (0.05, 0.6)
            at = self.rng.uniform(low, high)
            self.wait_progress(run_id, at, deadline)
            done = self.statuses(run_id)
            share = (sum(done[s] for s in FINAL) - done["skipped"]) / max(
                1, sum(done.values()) - done["skipped"])
            row.fault = f"{fault}: {self.inject(fault, run_id)} at {share:.0%} done"
        if self.fault_thread is not None:
            while self.fault_thread.is_alive():
                self.supervise(row)
                self.fault_thread.join(0.5)
            if self.undo_error:
                row.notes.append(self.undo_error)
        final = self.wait_final(run_id, deadline + a.final_wait, row)
        self.stop_child("beat2")
        if fault == "size":
            self.smtp_command("size 0")
        row.seconds = time.monotonic() - started
        if not final:
            row.operator += 1
            counts = self.statuses(run_id)
            row.notes.append(f"not final after {row.seconds:.0f} s: " + ", ".join(
                f"{counts[s]} {s}" for s in NON_FINAL if counts[s]))
        if self.worker_deaths:
            row.notes.append(f"{len(self.worker_deaths)} worker exit(s): {self.worker_deaths[0]}")
        if row.restarts:
            row.notes.append(f"the supervisor restarted a worker {row.restarts} time(s)")
        self.count(row, run_id, since)  # what the bound saw, before any operator acts
        if self.worker_deaths and not a.supervisor:
            row.operator += 1
            row.notes.append("an operator restarted the dead worker(s) after the round")
            for name in ("worker1", "worker2"):
                proc = self.children.get(name)
                if proc is not None and proc.poll() is not None:
                    self.children.pop(name)
                    self.next_restart.pop(int(name[-1]), None)
                    self.start_workers(int(name[-1]))
        if fault == "size":
            self.size_note(row, run_id)
        return row

    def size_note(self, row: Row, run_id: int) -> None:
        """How the over-size digests ended, and how large they were."""
        from sqlalchemy import text

        from digest.devtools.faultsmtp import read_events

        with self.engine.connect() as conn:
            ended = conn.execute(text(
                "SELECT status, COALESCE(note, smtp_reply) FROM deliveries "
                "WHERE run_id = :r AND subscriber_id = ANY(:ids)"),
                {"r": run_id, "ids": list(self.long_reader_ids)}).all()
        sizes = [e.get("size", 0) for e in read_events(self.record)
                 if e["event"] == "accepted" and str(e.get("rcpt", "")).startswith("longread")]
        row.notes.append("over-size digests: " + "; ".join(
            f"{status} ({(note or '')[:70]})" for status, note in ended)
            + (f"; their size when accepted before: {max(sizes)} B" if sizes else ""))

    def deliveries(self, run_id: int) -> list[tuple]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                # Our note says why a row ended as it did; else the server's reply.
                "SELECT d.id, d.subscriber_id, d.email, d.status, "
                "COALESCE(d.note, d.smtp_reply), s.status "
                "FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                "WHERE d.run_id = :r"), {"r": run_id}).all()]

    def suppressed(self) -> set[str]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return {e.lower() for (e,) in conn.execute(text("SELECT email FROM suppressions"))}

    def count(self, row: Row, run_id: int, since: float) -> None:
        """Judge the round: the server's record flushed first, and every lost re-checked
        against a second reading of it before it is printed."""
        from digest.devtools.faultsmtp import FaultPlan, read_events

        plan = FaultPlan(self.args.seed, self.args.temp_share, self.args.drop_share,
                         self.args.unknown_share)
        oversize = self.long_reader_ids if row.kind == "size" else set()
        self.flush_smtp()
        rows = self.deliveries(run_id)
        events = read_events(self.record)
        lost = judge(rows, accepted_by_delivery(events), unknown_user=plan.unknown_user,
                     unsubscribed=self.unsubscribed, oversize=oversize,
                     suppressed=self.suppressed(), row=row)
        row.lost_first = row.lost
        if not lost:
            return
        # Re-read both sides: is each lost one really not in the server's record?
        time.sleep(1)
        self.flush_smtp()
        events = read_events(self.record)
        again = Row(row.round, row.fault, row.kind)
        rows = self.deliveries(run_id)
        judge(rows, accepted_by_delivery(events), unknown_user=plan.unknown_user,
              unsubscribed=self.unsubscribed, oversize=oversize, suppressed=self.suppressed(),
              row=again)
        by_rcpt: dict[str, list[dict]] = defaultdict(list)
        for e in events:
            if e["event"] == "accepted" and e["t"] >= since:
                for rcpt in str(e.get("rcpt") or "").split(","):
                    by_rcpt[rcpt.lower()].append(e)
        emails = {r[0]: r[2] for r in rows}
        by_address = sum(1 for did in lost if by_rcpt.get(str(emails.get(did, "")).lower()))
        if again.lost != row.lost:
            row.notes.append(f"lost: {row.lost} at the first reading of the record, "
                             f"{again.lost} at the second: the second is counted")
            row.notes = [n for n in row.notes if not n.startswith("lost ")] + [
                n for n in again.notes if n.startswith("lost ")]
            row.lost = again.lost
        if by_address:
            row.notes.append(f"lost but the server accepted a message to that address this "
                             f"round (other or no X-Digest-Delivery): {by_address}")

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
    p.add_argument("--send-rate", type=float, default=0,
                   help="DIGEST_SEND_RATE of the parts (messages a second, 0: unlimited); a "
                        "slower send lets a fault land well inside it at small sizes")
    p.add_argument("--duration", type=float, default=45,
                   help="seconds a held fault lasts (stall-data, late-250 and reset-after-250 "
                        "windows, pg-slots, pg-readonly, disk-full, redis-oom, clock-*); "
                        "sigstop-* last 60-75 s and partition 30-60 s")
    p.add_argument("--final-wait", type=float, default=600,
                   help="a round is judged only when every row is final: wait at most this "
                        "long after --timeout, then report it as not final")
    p.add_argument("--keep", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the temp dir (every part's log, the server's record, the "
                        "cluster) for inspection (default); --no-keep removes it")
    p.add_argument("--supervisor", action=argparse.BooleanOptionalAction, default=True,
                   help="restart a worker that exited, as compose's restart policy or "
                        "systemd would (default); --no-supervisor leaves it to an operator")
    p.add_argument("--pg-fs-mb", type=int, default=384,
                   help="size of the tmpfs the cluster lives on with the disk-full kinds")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        p.error(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(FAULTS)}")
    if args.rounds < 1 or args.subscribers < 1:
        p.error("--rounds and --subscribers must be at least 1")
    if args.duration <= 0 or args.final_wait < 0:
        p.error("--duration must be above 0 seconds and --final-wait at least 0")
    args.kinds = kinds
    return args


def _stop(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    limit = args.max_seconds or args.rounds * (args.timeout + args.final_wait) + 300

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
        print(f"  judging:  a round is judged once every row is final (at most --timeout "
              f"{args.timeout:g} s + --final-wait {args.final_wait:g} s) and the server's "
              f"record is fsynced; lost re-checked against a second reading")
        restart = ("restarted by a supervisor when they exit" if args.supervisor
                   else "no supervisor: an exited worker needs an operator")
        print(f"  workers:  {restart}; held faults last {args.duration:g} s")
        head = (f"  {'round':>5}  {'planned':>7} {'sent':>6} {'5.1.1':>5} {'lost':>5} "
                f"{'dups':>5} {'nonfin':>6} {'unsub':>5} {'wrong':>5} {'oper':>4} {'secs':>6}"
                "  fault")
        print(head, flush=True)
        for n in range(1, args.rounds + 1):
            row = campaign.run_round(n, args.kinds[(n - 1) % len(args.kinds)])
            rows.append(row)
            print(f"  {row.round:>5}  {row.planned:>7} {row.sent:>6} {row.failed_511:>5} "
                  f"{row.lost:>5} {row.duplicates:>5} {row.non_final:>6} {row.after_unsub:>5} "
                  f"{row.wrong:>5} {row.operator:>4} {row.seconds:>6.1f}  {row.fault}",
                  flush=True)
            for note in row.notes:
                print(f"  {'':>5}  {note}", flush=True)
        total = Row(0, "")
        for r in rows:
            for name in ("planned", "sent", "failed_511", "lost", "duplicates", "non_final",
                         "after_unsub", "wrong", "operator", "seconds"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
        print(f"  {'total':>5}  {total.planned:>7} {total.sent:>6} {total.failed_511:>5} "
              f"{total.lost:>5} {total.duplicates:>5} {total.non_final:>6} "
              f"{total.after_unsub:>5} {total.wrong:>5} {total.operator:>4} "
              f"{total.seconds:>6.1f}")
        print("  per fault kind (dups/fault: the duplicates of each round's one injected fault):")
        for line in summarise(rows):
            print(line)
        from digest.devtools.faultsmtp import read_events

        events = read_events(campaign.record)
        faults = Counter(e["event"] for e in events)
        print("  smtp server: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
        print(campaign.duplicate_window(events))
        bad = (total.lost or total.non_final or total.after_unsub or total.wrong
               or total.operator)
        print("  result: " + ("FAILED: deliveries lost, left non-final, mailed after "
                              "unsubscribing, wrongly failed or suppressed, or an operator "
                              "had to act" if bad else "no loss"))
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
