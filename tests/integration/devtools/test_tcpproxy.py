"""The freezing TCP proxy of the partition fault, with a real socket pair behind it."""

from __future__ import annotations

import socket
import threading

import pytest

from digest.devtools.tcpproxy import FreezingProxy, parse_target
from digest.errors import ValidationError


@pytest.fixture
def echo_server():
    """A TCP server that echoes what it reads, upper-cased."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def recv(conn: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = conn.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_the_proxy_forwards_both_ways(echo_server):
    with FreezingProxy(f"127.0.0.1:{echo_server}") as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
        conn.sendall(b"hello")
        assert recv(conn, 5) == b"HELLO"


def test_a_frozen_proxy_holds_bytes_without_closing_and_forwards_them_when_thawed(echo_server):
    with FreezingProxy(f"127.0.0.1:{echo_server}") as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
        conn.sendall(b"one")
        assert recv(conn, 3) == b"ONE"
        proxy.freeze()
        conn.sendall(b"two")
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):  # silence: no reply, no close, no reset
            conn.recv(10)
        proxy.thaw()
        conn.settimeout(2)
        assert recv(conn, 3) == b"TWO"


def test_a_connection_opened_while_frozen_waits_and_then_works(echo_server):
    with FreezingProxy(f"127.0.0.1:{echo_server}") as proxy:
        proxy.freeze()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn:
            conn.sendall(b"late")
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(10)
            proxy.thaw()
            conn.settimeout(2)
            assert recv(conn, 4) == b"LATE"


def test_a_bad_target_says_what_to_give():
    with pytest.raises(ValidationError, match=r"is not HOST:PORT \(e.g. 127.0.0.1:5432\)"):
        parse_target("localhost")
