"""A transport for unit tests and trying things out: no network, scripted replies.

It speaks the ``Transport`` protocol of ``digest.delivery`` and raises the same errors as the
SMTP transport for the same reply codes, so sending code cannot tell them apart.
"""

from __future__ import annotations

from collections import defaultdict, deque

from digest.delivery import SendResult, error_for
from digest.errors import TemporaryDeliveryError, ValidationError


class InMemoryTransport:
    """A transport for unit tests: remembers what was sent and plays scripted replies.

    ``script(rcpt, *replies)`` queues replies for a recipient, consumed one per send, in the
    same form as the mail sink: ``"451 4.3.0 Try again later"``, ``"550 5.1.1 No such user"``
    or ``"drop"`` (a lost connection). Unscripted sends succeed.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self._scripts: dict[str, deque[str]] = defaultdict(deque)

    def __enter__(self) -> InMemoryTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def script(self, rcpt: str, *replies: str) -> None:
        for reply in replies:
            if reply != "drop" and not (reply[:3].isdigit() and reply[0] in "2345"):
                raise ValidationError(
                    f"scripted reply {reply!r} must be 'drop' or start with an SMTP code "
                    "such as '451 4.3.0 Try again later'"
                )
        self._scripts[rcpt.lower()].extend(replies)

    def send(self, mail_from: str, rcpt: str, data: bytes) -> SendResult:
        queue = self._scripts.get(rcpt.lower())
        reply = queue.popleft() if queue else None
        if reply == "drop":
            raise TemporaryDeliveryError(f"connection lost at RCPT TO for {rcpt} (scripted)")
        if reply is not None:
            code = int(reply[:3])
            if code >= 400:
                error = error_for(code)
                raise error(f"in-memory transport refused {rcpt} at RCPT TO: {reply}", code,
                            step="RCPT TO", reply=reply)
        self.sent.append((mail_from, rcpt, data))
        return SendResult(250, f"2.0.0 Ok: queued as {len(self.sent)}")
