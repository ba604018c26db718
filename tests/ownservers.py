"""Servers of a test's own on the spare ports 7200-7299, for faults the machine's own servers
must never see: a redis-server it may fill up or freeze, a PostgreSQL it may stop or freeze.
Each is stopped by its own pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

SPARE_PORTS = range(7200, 7300)


def spare_port() -> int:
    """A port of the spare range nothing listens on at the moment of asking."""
    for port in SPARE_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 7200-7299")


class OwnRedis:
    """A redis-server without persistence that the test may fill (``maxmemory``) or freeze."""

    def __init__(self, directory: Path):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed; this test needs one of its own")
        self.directory = directory
        self.port = spare_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> OwnRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory),
             "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def fill_memory(self) -> None:
        """Every write refused from now on: used memory over ``maxmemory``, as when full."""
        self.client().config_set("maxmemory", "1")

    def free_memory(self) -> None:
        self.client().config_set("maxmemory", "0")

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        self.stop()  # nothing kept on disk


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temporary directory)."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.fail("PostgreSQL's initdb is not installed; this test needs a cluster of "
                        "its own")
        self.bindir = bindir
        # Not under pytest's tmp_path: as root, the cluster runs as postgres, who may not
        # enter root's private temporary folders.
        self.directory = Path(tempfile.mkdtemp(prefix="digest-own-pg-"))
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.data = self.directory / "pgdata"
        self.port = spare_port()
        self.pid: int | None = None
        subprocess.run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "--no-sync"], check=True, capture_output=True,
                       **_as_postgres_user())

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> OwnPostgres:
        subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                        str(self.directory / "pg.log"), "-o",
                        f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off", "start"], check=True, capture_output=True,
                       **_as_postgres_user())
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: a partition, as the clients see it."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)

    def _pids(self) -> list[int]:
        assert self.pid is not None
        children = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True,
                                  text=True).stdout.split()
        return [self.pid, *map(int, children)]

    def stop(self) -> None:
        if self.pid is not None:
            self.thaw()
            subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "stop"], capture_output=True, **_as_postgres_user())
            self.pid = None

    def remove(self) -> None:
        """Stopped, and its files deleted."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


def _as_postgres_user() -> dict:
    """initdb refuses to run as root: run it (and pg_ctl) as the postgres user then."""
    if os.geteuid() != 0:
        return {}
    import pwd

    user = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return {"preexec_fn": demote}
