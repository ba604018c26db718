"""A faulty SMTP server for the fault campaign (``bench/faults.py``) and for trying things out.

Built on aiosmtpd like the mail sink (``digest.devtools.mailsink``). Its faults are decided by a
hash of the seed and the message, so a rerun with the same seed behaves alike:

- RCPT TO: a fixed share of addresses (``unknown_share``) gets ``550 5.1.1`` on every attempt;
- DATA: each attempt of a message (the n-th time this server sees its Message-ID) gets
  ``451 4.3.0`` or ``421 4.3.2`` (and a closed connection) with probability ``temp_share``, or
  the connection dropped without a reply with probability ``drop_share`` (the message is then
  discarded: it was never accepted);
- MAIL FROM: ``554 5.7.1`` to every transaction for a while: ``refuse_mail_from(seconds)``, or
  SIGUSR1 to the standalone server, opens a window of ``--mail-from-seconds``;
- windows of the campaign's newer kinds, opened by a method or by a line on the standalone
  server's stdin (``stall-data 45``, ``late-250 45 60 120``, ``reset-after-250 45``,
  ``size 30720``, ``flush``):

  - ``stall_data(seconds)``: every DATA started in the window stops being read right after the
    354 until the window ends (the client's lines wait in the socket buffers);
  - ``late_250(seconds, low, high)``: a message whose final dot arrives in the window is taken
    (recorded ``accepted`` at once, as an MTA that queued it) and its 250 is written
    ``low``-``high`` seconds later, if the client still waits;
  - ``reset_after_250(seconds)``: the connection is reset (RST) right after the 250;
  - ``set_size_limit(bytes)``: EHLO announces ``SIZE bytes``; a larger ``MAIL FROM SIZE=`` or
    message gets ``552 5.3.4`` (0: no limit);
  - ``flush()``: the record is on disk (fsync) when it returns; the standalone server answers
    ``flushed N`` (N events so far) on stdout.

Every event (accepted messages with their Message-ID, ``X-Digest-Delivery`` header, recipient,
time and connection) is appended as one JSON line to the record file, which a campaign reads.

    python -m digest.devtools.faultsmtp --port 2525 --seed 7 --record events.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from digest.devtools.mailsink import DATA_SIZE_LIMIT
from digest.errors import ValidationError

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.I | re.M)
_DELIVERY = re.compile(rb"^X-Digest-Delivery:[ \t]*(\d+)", re.I | re.M)

UNKNOWN_USER_REPLY = "550 5.1.1 {rcpt}: no such user here"
MAIL_FROM_REPLY = "554 5.7.1 Sender refused for now (fault window)"
SIZE_REPLY = "552 5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)"
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
        if owner.size_limit and len(data) > owner.size_limit:
            owner.event("size-refused", size=len(data), **details)
            return SIZE_REPLY.format(limit=owner.size_limit)
        now = time.time()
        late = (owner.rng.uniform(*owner.late_range) if now < owner.late_until else 0.0)
        reset = now < owner.reset_until
        number = owner.event("accepted", size=len(data), late=round(late, 3), reset=reset,
                             **details)
        if late:
            # Taken (recorded) now, answered late; a client gone meanwhile never hears it.
            await asyncio.sleep(late)
        if reset:
            transport = server.transport
            asyncio.get_running_loop().call_later(0.05, _reset, transport)
        return f"250 2.0.0 OK: queued as {number}"


def _reset(transport: Any) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: the client's next command meets a reset."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        import socket
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _FaultySMTP(SMTP):
    """aiosmtpd's server with the owner's SIZE limit, read at each use, and the DATA stall."""

    def __init__(self, owner: FaultySMTPServer, *args: Any, **kwargs: Any):
        self.owner = owner
        super().__init__(*args, **kwargs)

    @property
    def data_size_limit(self) -> int | None:
        return self.owner.size_limit or DATA_SIZE_LIMIT

    @data_size_limit.setter
    def data_size_limit(self, value: int | None) -> None:
        pass  # the owner's limit rules

    async def push(self, status: Any) -> None:
        # aiosmtpd's own size refusals carry no enhanced code: give them RFC 3463's 5.3.4.
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("552 Error:") and self.owner.size_limit:
            self.owner.event("size-refused", peer=_peer_port(self.session),
                             at="MAIL FROM" if "exceeds" in text else "DATA")
            status = SIZE_REPLY.format(limit=self.owner.size_limit)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        left = self.owner.stall_until - time.time()
        if left > 0 and self.transport is not None and self.envelope is not None \
                and self.envelope.rcpt_tos:
            # After the 354 has gone out, stop reading until the window ends.
            transport: Any = self.transport
            loop = asyncio.get_running_loop()
            self.owner.event("stall-data", seconds=round(left, 3), peer=_peer_port(self.session))
            loop.call_soon(transport.pause_reading)
            loop.call_later(left, _resume, transport)
        await super().smtp_DATA(arg)


def _peer_port(session: Any) -> Any:
    peer = getattr(session, "peer", None)
    return peer[1] if isinstance(peer, tuple) else None


def _resume(transport: Any) -> None:
    if not transport.is_closing():
        transport.resume_reading()


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
        self.stall_until = 0.0
        self.late_until = 0.0
        self.late_range = (60.0, 120.0)
        self.reset_until = 0.0
        self.size_limit = 0
        self.rng = random.Random(self.plan.seed)
        self.counts: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._controller: Controller | None = None

    def start(self) -> FaultySMTPServer:
        self._file = self.record.open("a", encoding="utf-8", buffering=1)
        controller = _Controller(_Handler(self), owner=self, hostname=self.host, port=self.port,
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

    def stall_data(self, seconds: float) -> None:
        """Stop reading every DATA that starts in the next ``seconds`` until they are over."""
        self.stall_until = time.time() + seconds
        self.event("stall-data-window", seconds=seconds)

    def late_250(self, seconds: float, low: float = 60.0, high: float = 120.0) -> None:
        """For ``seconds``, answer the final dot ``low``-``high`` seconds late."""
        if not 0 <= low <= high:
            raise ValidationError(f"late-250 needs 0 <= low <= high, not {low} and {high}")
        self.late_range = (low, high)
        self.late_until = time.time() + seconds
        self.event("late-250-window", seconds=seconds, low=low, high=high)

    def reset_after_250(self, seconds: float) -> None:
        """For ``seconds``, reset the connection right after each 250 to a final dot."""
        self.reset_until = time.time() + seconds
        self.event("reset-after-250-window", seconds=seconds)

    def set_size_limit(self, limit: int) -> None:
        """Announce SIZE ``limit`` in EHLO and refuse larger messages with 552 5.3.4 (0: none)."""
        if limit < 0:
            raise ValidationError(f"the SIZE limit must be 0 (none) or more bytes, not {limit}")
        self.size_limit = limit
        self.event("size-limit", limit=limit)

    def flush(self) -> int:
        """Everything recorded so far is on disk; returns the number of events."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
            return sum(self.counts.values())

    def command(self, line: str) -> str:
        """One control line (the standalone server's stdin): what it did, or raises
        ValidationError naming what was wrong."""
        words = line.split()
        if not words:
            return ""
        name, args = words[0], words[1:]
        try:
            numbers = [float(a) for a in args]
        except ValueError:
            raise ValidationError(f"{line.strip()!r}: arguments must be numbers") from None
        actions = {"stall-data": (self.stall_data, 1), "late-250": (self.late_250, (1, 3)),
                   "reset-after-250": (self.reset_after_250, 1),
                   "size": (lambda n: self.set_size_limit(int(n)), 1),
                   "mail-from": (self.refuse_mail_from, 1), "flush": (None, 0)}
        if name not in actions:
            raise ValidationError(f"unknown command {name!r}; use one of {', '.join(actions)}")
        action, arity = actions[name]
        if len(numbers) not in (arity if isinstance(arity, tuple) else (arity,)):
            raise ValidationError(f"{name} takes {arity} number(s), got {len(numbers)}")
        if action is None:
            return f"flushed {self.flush()}"
        action(*numbers)
        return f"ok {name}"

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
    def __init__(self, handler: Any, *, owner: FaultySMTPServer, **kwargs: Any):
        self.owner = owner
        super().__init__(handler, **kwargs)

    def factory(self):
        return _FaultySMTP(self.owner, self.handler, **self.SMTP_kwargs)

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
    threading.Thread(target=_read_commands, args=(server, stop), daemon=True).start()
    try:
        # sleep(), unlike Event.wait(), lets a signal's handler run at once.
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


def _read_commands(server: FaultySMTPServer, stop: threading.Event) -> None:
    """Control lines on stdin, one answer line each on stdout (``error: ...`` when refused)."""
    for line in sys.stdin:
        try:
            answer = server.command(line)
        except ValidationError as exc:
            answer = f"error: {exc}"
        if answer:
            print(answer, flush=True)
    # stdin closed: the campaign is gone or never talks; keep serving.


if __name__ == "__main__":
    sys.exit(main())
