"""Composing and DKIM signing per message: per reader (before ADR 0028) vs per distinct content.

A weekly digest of 30 items (12 shown) from the real templates, for readers who share one
content (the same items, grouping, time zone and choices) and differ in their address and
links. Measured in the same run, per message:

- the signer alone, on the same finished message: dkimpy's own ``dkim.sign`` (RSA in pure
  Python), the signer before ADR 0028 (dkimpy with the RSA step by OpenSSL, now
  ``DkimSigner.sign_with_dkimpy``), and ``DkimSigner.sign`` without and with the content's
  shared pieces (their canonical form and the hash state kept: a cache hit);
- composing alone (render, MIME, no signature): per reader as before (``shared=False``, the
  item blocks still cached); per content for the first content of a template (the stand-in,
  and the first reader and two probes rendered plain to check the filling in), on a miss
  (the contents emptied before each message: the stand-in rendered and cut), on a hit;
- both together: what a worker spends per message before and after.

Run from the project root (no database, no network):

    python bench/signing.py
"""

from __future__ import annotations

import os
import platform
import sys
import timeit
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from digest.mail import DEFAULT_SIGNED_HEADERS, DkimSigner, MessageFactory  # noqa: E402
from digest.mail.compose import Reader  # noqa: E402
from digest.mail.shared import shared_contents  # noqa: E402
from digest.models import RunKind  # noqa: E402
from digest.render import RenderItem  # noqa: E402
from digest.settings import PROJECT_ROOT, Settings  # noqa: E402

START = datetime(2025, 10, 13, 8, tzinfo=UTC)
THEMES = ("Policing", "Gender equality", "Elections", "Rule of law")
PLACES = ("OSCE Mission to Montenegro", "Bishkek", "Serbia")
READERS = 200
INCLUDE = [h.encode() for h in DEFAULT_SIGNED_HEADERS]


@dataclass(frozen=True)
class Run:
    id: int
    kind: str


@dataclass(frozen=True)
class Mailed:
    id: int
    run_id: int
    subscriber_id: int
    email: str
    subscriber: Reader


def items(n: int) -> list[RenderItem]:
    return [RenderItem(
        id=i, title=f"Mission supports community policing training in Nikšić — item {i}",
        url=f"https://www.osce.org/mission-to-montenegro/item-{i}",
        summary="Thirty police officers completed a course on community policing, crime "
                "prevention and co-operation with local residents. «Trust is built locally», "
                "the Head of Mission said.",
        published_at=START - timedelta(hours=5 * i), content_type="Press release",
        themes=(THEMES[i % 4],), locations=(PLACES[i % 3],)) for i in range(n)]


def readers(n: int) -> list[Mailed]:
    return [Mailed(id=1000 + k, run_id=42, subscriber_id=500 + k,
                   email=f"reader.{k}@example.org",
                   subscriber=Reader(id=500 + k, group_by="theme", timezone="Europe/Vienna",
                                     themes=("Policing",), locations=()))
            for k in range(n)]


def private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def us_per_call(func, repeat: int = 5) -> float:
    """Best of ``repeat`` rounds of ~0.3 s each, in microseconds per call."""
    number = max(1, int(0.3 / max(timeit.timeit(func, number=3) / 3, 1e-6)))
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    settings = Settings(_env_file=None, templates_dir=PROJECT_ROOT / "templates",
                        newsroom_url="https://www.osce.org/newsroom",
                        newsroom_name="OSCE Newsroom", max_items_per_digest=12,
                        public_base_url="https://digest.example.org",
                        from_address="OSCE Newsroom <digest@newsroom.example.org>")
    pem = private_key()
    signer = DkimSigner("bench", "newsroom.example.org", pem)
    run, shown, people = Run(42, RunKind.weekly), items(30), readers(READERS)
    before = MessageFactory(settings, shared=False)  # per reader (item blocks cached)
    after = MessageFactory(settings)  # per distinct content
    for factory in (before, after):
        factory.build(people[0], run, shown)  # templates compiled, item blocks cached
    cycle = iter(range(10**9))

    def next_reader() -> Mailed:
        return people[next(cycle) % READERS]

    _, message = after.build(people[1], run, shown)
    rendered = after.render(people[1], run, shown)
    pieces = [f.encoded[0] for f in rendered.text_fragments[:1] + rendered.html_fragments[:1]]
    signer.sign(message, pieces)  # the shared pieces kept
    # Same second, same bytes: the new signer writes what dkimpy writes (a second that
    # turns between the three calls changes t=: tried again).
    for _attempt in range(3):
        if signer.sign(message) == signer.sign_with_dkimpy(message) == dkim.sign(
                message, b"bench", b"newsroom.example.org", pem,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=INCLUDE) + message:
            break
    else:
        raise SystemExit("the signers disagree")
    body = message.split(b"\r\n\r\n", 1)[1]
    print(f"python {platform.python_version()}, os.cpu_count()={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at the start, "
          f"message {len(message)} B (html {len(rendered.html.encode())} B, "
          f"text {len(rendered.text.encode())} B), shared pieces "
          f"{sum(map(len, pieces))} B of {len(body)} B of body")

    print("signer alone, on one finished message:")
    sign = {
        "dkimpy dkim.sign (pure-Python RSA)": lambda: dkim.sign(
            message, b"bench", b"newsroom.example.org", pem,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=INCLUDE),
        "before: dkimpy + OpenSSL RSA": lambda: signer.sign_with_dkimpy(message),
        "DkimSigner.sign, no shared pieces": lambda: signer.sign(message),
        "DkimSigner.sign, shared pieces kept (hit)": lambda: signer.sign(message, pieces),
    }
    _table({name: us_per_call(f) for name, f in sign.items()},
           "before: dkimpy + OpenSSL RSA")

    print("composing alone (render + MIME, unsigned), per message:")

    def miss() -> None:
        shared_contents.clear(families=False)
        after.build(next_reader(), run, shown)

    def first_of_family() -> None:
        shared_contents.clear()
        after.build(next_reader(), run, shown)

    compose = {
        "before: per reader": lambda: before.build(next_reader(), run, shown),
        "per content, first of its family (checked)": first_of_family,
        "per content, miss (cache emptied first)": miss,
        "per content, hit": lambda: after.build(next_reader(), run, shown),
    }
    _table({name: us_per_call(f) for name, f in compose.items()}, "before: per reader")

    print("composing and signing, per message (cache hits where there is a cache):")
    shared_contents.hits = shared_contents.misses = 0
    before.dkim = after.dkim = signer
    old_sign = signer.sign

    def with_old_signer() -> None:
        signer.sign = lambda data, shared=(): signer.sign_with_dkimpy(data)  # type: ignore
        try:
            before.build(next_reader(), run, shown)
        finally:
            signer.sign = old_sign  # type: ignore[method-assign]

    both = {
        "before: per reader, dkimpy + OpenSSL": with_old_signer,
        "after: per content, DkimSigner.sign": lambda: after.build(next_reader(), run, shown),
    }
    _table({name: us_per_call(f) for name, f in both.items()},
           "before: per reader, dkimpy + OpenSSL")
    print(f"  (content cache in this table: {shared_contents.hits} hits, "
          f"{shared_contents.misses} misses)")


def _table(results: dict[str, float], base_name: str) -> None:
    base = results[base_name]
    for name, us in results.items():
        print(f"  {name:<44} {us:8.0f} us/message   x{us / base:5.2f} of before")


if __name__ == "__main__":
    main()
