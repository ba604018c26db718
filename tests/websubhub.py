"""A small WebSub hub of the tests' own (W3C Recommendation, the hub's side), on 127.0.0.1.

It takes subscription and unsubscription requests (answers 202, then verifies the intent
with a GET to the callback from a thread of its own, as real hubs do), keeps the verified
subscriptions (callback, topic, secret, lease), and publishes a body to a topic's
subscribers signed with their secret, with a forged signature or with none. It can be told
never to verify (``verify=False``), to refuse requests (``answer``), to grant another lease
(``lease_seconds``) and to deny a subscription (``deny``).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

import httpx


@dataclass
class Subscription:
    callback: str
    topic: str
    secret: str
    lease_seconds: int


@dataclass
class Verification:
    mode: str
    callback: str
    topic: str
    status: int  # the callback's answer
    confirmed: bool  # 2xx and the challenge echoed


class Hub:
    def __init__(self, *, verify: bool = True, answer: int = 202,
                 lease_seconds: int | None = None):
        self.verify = verify
        self.answer = answer
        self.lease_seconds = lease_seconds  # the hub's policy; None: what was asked
        self.requests: list[dict[str, str]] = []  # every (un)subscription request, as sent
        self.verifications: list[Verification] = []
        self.subscriptions: dict[tuple[str, str], Subscription] = {}  # (topic, callback)
        self._changed = threading.Condition()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hub"

    def start(self) -> Hub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what the subscriber asked

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with hub._changed:
                    hub.requests.append(form)
                    hub._changed.notify_all()
                mode = form.get("hub.mode")
                ok = (mode in ("subscribe", "unsubscribe") and form.get("hub.callback")
                      and form.get("hub.topic"))
                status = hub.answer if ok else 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if ok and hub.answer == 202 and hub.verify:
                    threading.Thread(target=hub._verify, args=(form,), daemon=True).start()

        return Handler

    def _verify(self, form: dict[str, str]) -> None:
        mode, callback, topic = form["hub.mode"], form["hub.callback"], form["hub.topic"]
        lease = self.lease_seconds or int(form.get("hub.lease_seconds") or 864000)
        challenge = secrets.token_urlsafe(16)
        params = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
        if mode == "subscribe":
            params["hub.lease_seconds"] = str(lease)
        try:
            response = httpx.get(callback, params=params, timeout=10)
            status, confirmed = response.status_code, (response.is_success
                                                       and response.text == challenge)
        except httpx.HTTPError:
            status, confirmed = 0, False
        with self._changed:
            if confirmed and mode == "subscribe":
                self.subscriptions[(topic, callback)] = Subscription(
                    callback, topic, form.get("hub.secret", ""), lease)
            elif confirmed:
                self.subscriptions.pop((topic, callback), None)
            self.verifications.append(Verification(mode, callback, topic, status, confirmed))
            self._changed.notify_all()

    def wait_for_verifications(self, count: int, timeout: float = 10) -> list[Verification]:
        """The first ``count`` verifications, once the hub has made them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.verifications) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.verifications)} of {count} verifications")
                self._changed.wait(left)
            return list(self.verifications[:count])

    # --- what the hub sends

    def deny(self, callback: str, topic: str, reason: str) -> int:
        """Tell the subscriber its subscription is refused (``hub.mode=denied``)."""
        response = httpx.get(callback, params={"hub.mode": "denied", "hub.topic": topic,
                                               "hub.reason": reason}, timeout=10)
        return response.status_code

    def publish(self, topic: str, body: bytes, *, content_type: str = "application/rss+xml",
                signature: str = "good", method: str = "sha256") -> list[int]:
        """POST ``body`` to every subscriber of ``topic``; ``signature`` is ``good`` (HMAC
        with the subscriber's secret), ``forged`` (HMAC with another secret) or ``none``.
        The callbacks' status codes (0 for a connection the callback cut)."""
        with self._changed:
            targets = [s for s in self.subscriptions.values() if s.topic == topic]
        return [self.push(s.callback, body, secret=s.secret, topic=topic,
                          content_type=content_type, signature=signature, method=method)
                for s in targets]

    def push(self, callback: str, body: bytes, *, secret: str, topic: str,
             content_type: str = "application/rss+xml", signature: str = "good",
             method: str = "sha256") -> int:
        """One content distribution request, to any callback."""
        headers = {"Content-Type": content_type,
                   "Link": f'<{self.url}>; rel="hub", <{topic}>; rel="self"'}
        if signature != "none":
            key = secret if signature == "good" else secrets.token_urlsafe(32)
            digest = hmac.new(key.encode(), body, getattr(hashlib, method)).hexdigest()
            headers["X-Hub-Signature"] = f"{method}={digest}"
        try:
            return httpx.post(callback, content=body, headers=headers, timeout=10).status_code
        except httpx.HTTPError:
            return 0
