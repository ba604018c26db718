"""Per-message render cost: item blocks cached, MJML compiled once, or neither.

    python bench/render.py [--messages 500] [--items 10]

(a) is what digest.render does: MJML -> HTML once, then Jinja per message (HTML + text part,
subject, preheader, footer reason), each item's HTML and text block rendered once per item
and time zone (``{% call fragment(item) %}``) and reused. (a0) is the same without the
fragment cache: every block for every message. (b) renders the MJML source with Jinja and
compiles it with mjml2html for every message, plus the same text part. All run in this
process, on the same items and recipients (a message shows at most DIGEST_MAX_ITEMS_PER_DIGEST
of its items).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2  # noqa: E402
from mjml import mjml2html  # noqa: E402

from digest.render import EmailRenderer, Recipient, RenderItem  # noqa: E402
from digest.render.fragments import fragment_helper  # noqa: E402
from digest.settings import Settings  # noqa: E402


def make_items(n: int) -> list[RenderItem]:
    start = datetime(2025, 10, 9, 12, tzinfo=UTC)
    return [
        RenderItem(
            id=i, title=f"OSCE Mission supports regional forensic conference number {i}",
            url=f"https://www.osce.org/mission-to-montenegro/{600000 + i}",
            summary="Security and justice can only be achieved when institutions co-operate "
                    "across the entire chain, from investigation to prosecution. " * 4,
            published_at=start - timedelta(hours=7 * i), content_type="News",
            themes=(("Policing", "Gender equality", "Elections")[i % 3], "Rule of law"),
            locations=("OSCE Mission to Montenegro",),
        )
        for i in range(n)
    ]


def recipients(n: int) -> list[Recipient]:
    base = "https://digest.example.org"
    return [Recipient(subscriber_id=i, email=f"reader{i}@example.org",
                      manage_url=f"{base}/manage/tok{i}",
                      unsubscribe_url=f"{base}/unsubscribe/tok{i}",
                      view_url=f"{base}/view/tok{i}", themes=("Policing", "Elections"))
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--items", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(_env_file=None)
    items, people = make_items(args.items), recipients(args.messages)

    t0 = time.perf_counter()
    renderer = EmailRenderer("digest", settings)
    build_ms = (time.perf_counter() - t0) * 1000
    renderer.render(people[0], items)  # warm the item cache, as after the first message of a run

    t0 = time.perf_counter()
    for person in people:
        email = renderer.render(person, items)
    cached = (time.perf_counter() - t0) * 1000 / len(people)
    size = len(email.html.encode())

    renderer = EmailRenderer("digest", settings, fragments=False)
    renderer.render(people[0], items)
    t0 = time.perf_counter()
    for person in people:
        plain = renderer.render(person, items)
    compile_once = (time.perf_counter() - t0) * 1000 / len(people)
    assert (plain.html, plain.text) == (email.html, email.text)

    # (b) Jinja on the MJML source, then mjml2html, for every message; text part as in (a).
    layout = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(settings.templates_dir / "email")), autoescape=True,
        block_start_string="[%", block_end_string="%]", variable_start_string="[[",
        variable_end_string="]]", comment_start_string="[#", comment_end_string="#]")
    mjml_template = renderer._env.from_string(layout.get_template("digest/body.mjml").render())
    mjml_template.globals["fragment"] = fragment_helper(None)
    original_html = renderer._html

    class PerMessage:
        """Stands in for the compiled HTML template: MJML source through Jinja, then MJML."""

        def render(self, values, **more):
            return mjml2html(mjml_template.render(values, **more))

    renderer._html = PerMessage()
    try:
        t0 = time.perf_counter()
        for person in people:
            renderer.render(person, items)
        every_message = (time.perf_counter() - t0) * 1000 / len(people)
    finally:
        renderer._html = original_html

    print(f"cpus={os.cpu_count()} messages={len(people)} items/message={len(items)} "
          f"html={size / 1024:.1f} KB, renderer built (MJML compiled) in {build_ms:.1f} ms")
    print(f"(a)  MJML once, item blocks once (HTML + text):      {cached:.3f} ms/message")
    print(f"(a0) MJML once, every block every message:           {compile_once:.3f} ms/message")
    print(f"(b)  Jinja + mjml2html every message (HTML + text):  {every_message:.3f} ms/message")


if __name__ == "__main__":
    main()
