"""A faulty SMTP server for the fault campaign (``bench/faults.py``) and for trying things out.

Built on aiosmtpd like the mail sink (``digest.devtools.mailsink``). Its faults are decided by a
hash of the seed and the message, so a rerun with the same seed behaves alike:

- RCPT TO: a fixed share of addresses (``unknown_share``) gets ``550 5.1.1`` on every attempt;
- DATA: each attempt of a message (the n-th time this server sees its Message-ID) gets
  ``451 4.3.0`` or ``421 4.3.2`` (and a closed connection) with probability ``temp_share``, or
  the connection dropped without a reply with probability ``drop_share`` (the message is then
  discarded: it was never accepted);
- MAIL FROM: ``554 5.7.1`` to every transaction for a while: ``refuse_mail_from(seconds)``, or
  SIGUSR1 to the standalone server, opens a window of ``--mail-from-seconds``.

Every event (accepted messages with their Message-ID, ``X-Digest-Delivery`` header, recipient,
time and connection) is appended as one JSON line to the record file, which a campaign reads.

    python -m digest.devtools.faultsmtp --port 2525 --seed 7 --record events.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.controller import Controller

from digest.devtools.mailsink import DATA_SIZE_LIMIT
from digest.errors import ValidationError

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.I | re.M)
_DELIVERY = re.compile(rb"^X-Digest-Delivery:[ \t]*(\d+)", re.I | re.M)

UNKNOWN_USER_REPLY = "550 5.1.1 {rcpt}: no such user here"
MAIL_FROM_REPLY = "554 5.7.1 Sender refused for now (fault window)"
TEMP_REPLIES = ("451 4.3.0 Temporary local problem, try again later",
                "421 4.3.2 Service shutting down, closing connection")


def _unit(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class FaultPlan:
    """Which faults the server plays; shares are probabilities in [0, 1)."""

    seed: int = 0
    temp_share: float = 0.05
    drop_share: float = 0.03
    unknown_share: float = 0.02

    def __post_init__(self) -> None:
        for name in ("temp_share", "drop_share", "unknown_share"):
            if not 0 <= getattr(self, name) < 1:
                raise ValidationError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.temp_share + self.drop_share >= 1:
            raise ValidationError("temp_share + drop_share must stay below 1, or nothing is "
                                  "ever accepted")

    def unknown_user(self, rcpt: str) -> bool:
        """True for the fixed share of addresses that get 550 5.1.1 at RCPT TO."""
        return _unit(self.seed, "rcpt", rcpt.strip().lower()) < self.unknown_share

    def data_fault(self, key: str, attempt: int) -> str | None:
        """'451', '421', 'drop' or None (accept) for the ``attempt``-th try of a message."""
        x = _unit(self.seed, "data", key, attempt)
        if x < self.temp_share:
            return "451" if _unit(self.seed, "kind", key, attempt) < 0.5 else "421"
        if x < self.temp_share + self.drop_share:
            return "drop"
        return None


class _Handler:
    def __init__(self, server: FaultySMTPServer):
        self.owner = server

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        owner = self.owner
        if time.time() < owner.mail_from_refused_until:
            owner.event("mail-from-refused", peer=session.peer[1])
            return MAIL_FROM_REPLY
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.owner.plan.unknown_user(address):
            self.owner.event("unknown-user", rcpt=address, peer=session.peer[1])
            return UNKNOWN_USER_REPLY.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        owner = self.owner
        data: bytes = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(head)
        message_id = found.group(1).decode("ascii", "replace") if found else None
        found = _DELIVERY.search(head)
        delivery = int(found.group(1)) if found else None
        rcpt = ",".join(envelope.rcpt_tos)
        key = message_id or f"{rcpt}:{hashlib.sha256(data).hexdigest()}"
        attempt = owner.next_attempt(key)
        fault = owner.plan.data_fault(key, attempt)
        details = {"message_id": message_id, "delivery": delivery, "rcpt": rcpt,
                   "attempt": attempt, "peer": session.peer[1]}
        if fault == "drop":
            owner.event("drop", **details)
            server.transport.abort()
            return "421 4.4.2 connection dropped"  # never reaches the client
        if fault == "421":
            owner.event("421", **details)
            await server.push(TEMP_REPLIES[1])
            server.transport.close()
            return TEMP_REPLIES[1]  # the connection is closed: not written again
        if fault == "451":
            owner.event("451", **details)
            return TEMP_REPLIES[0]
        number = owner.event("accepted", **details)
        return f"250 2.0.0 OK: queued as {number}"


class FaultySMTPServer:
    """The server on ``host:port`` (port 0: a free one, read ``.port`` after ``start``)."""

    def __init__(self, record: Path, plan: FaultPlan | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, mail_from_seconds: float = 5.0):
        self.plan = plan or FaultPlan()
        self.host = host
        self.port = port
        self.record = Path(record)
        self.mail_from_seconds = mail_from_seconds
        self.mail_from_refused_until = 0.0
        self.counts: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._controller: Controller | None = None

    def start(self) -> FaultySMTPServer:
        self._file = self.record.open("a", encoding="utf-8", buffering=1)
        controller = _Controller(_Handler(self), hostname=self.host, port=self.port,
                                 server_hostname="digest-faultsmtp.localhost",
                                 data_size_limit=DATA_SIZE_LIMIT, enable_SMTPUTF8=True)
        controller.start()
        self.port = controller.port
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FaultySMTPServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def refuse_mail_from(self, seconds: float | None = None) -> None:
        """Answer 5xx at MAIL FROM from now for ``seconds`` (default ``mail_from_seconds``)."""
        seconds = self.mail_from_seconds if seconds is None else seconds
        self.mail_from_refused_until = time.time() + seconds
        self.event("mail-from-window", seconds=seconds)

    def next_attempt(self, key: str) -> int:
        with self._lock:
            self._attempts[key] = n = self._attempts.get(key, 0) + 1
            return n

    def event(self, kind: str, **details: object) -> int:
        """Append one JSON line to the record; returns the event's number."""
        with self._lock:
            number = next(self._numbers)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self._file is not None:
                self._file.write(json.dumps({"n": number, "t": time.time(), "event": kind,
                                             **details}) + "\n")
            return number


class _Controller(Controller):
    def _trigger_server(self):
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        return super()._trigger_server()


def read_events(record: Path) -> list[dict[str, Any]]:
    """The record file's events (a line cut short by a crash is skipped)."""
    events: list[dict[str, Any]] = []
    try:
        lines = Path(record).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return events
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525, help="0: a free port (printed)")
    parser.add_argument("--record", type=Path, required=True, help="JSON lines file of events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temp-share", type=float, default=FaultPlan.temp_share)
    parser.add_argument("--drop-share", type=float, default=FaultPlan.drop_share)
    parser.add_argument("--unknown-share", type=float, default=FaultPlan.unknown_share)
    parser.add_argument("--mail-from-seconds", type=float, default=5.0,
                        help="length of the MAIL FROM refusal window SIGUSR1 opens")
    args = parser.parse_args(argv)
    try:
        plan = FaultPlan(args.seed, args.temp_share, args.drop_share, args.unknown_share)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    server = FaultySMTPServer(args.record, plan, host=args.host, port=args.port,
                              mail_from_seconds=args.mail_from_seconds)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: server.refuse_mail_from())
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        # sleep(), unlike Event.wait(), lets a signal's handler run at once.
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
