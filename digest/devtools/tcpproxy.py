"""A TCP proxy that can freeze: the fault campaign's partition between workers and PostgreSQL.

Workers connect to the proxy instead of the server. ``freeze()`` stops forwarding in both
directions without closing anything: bytes already read wait in the proxy, the rest wait in
the kernel's buffers, and a new connection is accepted but not connected onwards, as a network
partition looks to both ends (no RST, no FIN, only silence). ``thaw()`` forwards everything
that waited, in order, and resumes.

    python -m digest.devtools.tcpproxy --target 127.0.0.1:5432 --port 0

The standalone proxy prints ``listening on HOST:PORT``; SIGUSR1 freezes it, SIGUSR2 thaws it
(or the lines ``freeze`` / ``thaw`` on stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading

from digest.errors import ValidationError

CHUNK = 65536


class FreezingProxy:
    """Forwards ``host:port`` -> ``target`` in a thread of its own (port 0: a free one)."""

    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int = 0):
        self.target_host, self.target_port = parse_target(target)
        self.host = host
        self.port = port
        self.connections = 0
        self.forwarded = 0  # bytes, both directions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- control, from any thread -----------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._open is not None and not self._open.is_set()

    def freeze(self) -> None:
        self._call(lambda: self._open.clear() if self._open else None)

    def thaw(self) -> None:
        self._call(lambda: self._open.set() if self._open else None)

    def _call(self, fn) -> None:
        if self._loop is None:
            raise RuntimeError("the proxy is not running")
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def start(self) -> FreezingProxy:
        self._thread = threading.Thread(target=self._run, name="tcpproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> FreezingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._open = asyncio.Event()
            self._open.set()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.connections += 1
        await self._open.wait()  # frozen: accepted, never connected onwards until thawed
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        try:
            while True:
                await self._open.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._open.wait()  # read while open, frozen before it could go on
                writer.write(data)
                await writer.drain()
                self.forwarded += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"target {target!r} is not HOST:PORT (e.g. 127.0.0.1:5432)")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    args = parser.parse_args(argv)
    try:
        proxy = FreezingProxy(args.target, host=args.host, port=args.port)
        proxy.start()
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: proxy.freeze())
    signal.signal(signal.SIGUSR2, lambda *_: proxy.thaw())

    def commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word in ("freeze", "thaw"):
                getattr(proxy, word)()
                print(f"ok {word}", flush=True)
            elif word:
                print(f"error: unknown command {word!r}; use freeze or thaw", flush=True)

    threading.Thread(target=commands, daemon=True).start()
    print(f"listening on {proxy.host}:{proxy.port}", flush=True)
    try:
        while not stop.is_set():
            stop.wait(0.2)
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
