"""Development helpers: servers and tools for testing Digest, never used in production.

The SMTP sink (``MailSink``) that keeps what it receives, the in-memory transport, the demo,
and the faulty SMTP server of the fault campaign (``python -m digest.devtools.faultsmtp``).
"""

from digest.devtools.demo import DEMO_LISTING, DEMO_SUBSCRIBERS, demo_clock, run_demo
from digest.devtools.mailsink import DATA_SIZE_LIMIT, MailSink, ReceivedMessage
from digest.devtools.memory_transport import InMemoryTransport

__all__ = [
    "DATA_SIZE_LIMIT", "DEMO_LISTING", "DEMO_SUBSCRIBERS", "InMemoryTransport", "MailSink",
    "ReceivedMessage", "demo_clock", "run_demo",
]
