"""Reading bounces from a Maildir, an mbox or a single message file, and processing them.

Each message is named by its ``source``: the Maildir file's name, ``<mbox file>#N`` (the
N-th message, counted from 1), or the message file's name.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy.exc import IntegrityError

from digest import db
from digest.bounces.process import (
    DUPLICATE,
    RECORDED,
    BounceOutcome,
    process_bounce_message,
)
from digest.errors import BounceError, DigestError, ValidationError
from digest.models import Fault
from digest.settings import Settings

FORMATS = ("auto", "maildir", "mbox", "file")


@dataclass
class BounceReport:
    """Totals of a mailbox run; ``outcomes`` and ``errors`` are keyed by the message's source."""

    processed: int = 0  # messages read
    hard: int = 0
    soft: int = 0
    policy: int = 0
    sender: int = 0
    complaints: int = 0
    unmatched: int = 0
    duplicates: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    outcomes: list[tuple[str, BounceOutcome]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # every message's source, as read

    def as_json_lines(self) -> list[dict[str, Any]]:
        """One object per message, in mailbox order: its recipients and what was (or would
        be) done, or what is wrong with it."""
        outcomes, errors = dict(self.outcomes), dict(self.errors)
        lines: list[dict[str, Any]] = []
        for source in self.order:
            if source in errors:
                lines.append({"source": source, "error": errors[source]})
                continue
            o = outcomes[source]
            action = o.reason if o.delivery_id is None else f"delivery #{o.delivery_id}: {o.reason}"
            line: dict[str, Any] = {"source": source, "recipients": o.recipients,
                                    "action": action}
            if o.complaint:  # a complaint names one reader: said at the top as well
                line = {"source": source, "address": o.email, "class": "complaint"} | line
            lines.append(line)
        return lines

    @property
    def suppressed(self) -> list[str]:
        return [o.email for _, o in self.outcomes if o.suppressed and o.email]

    @property
    def policy_rejections(self) -> list[BounceOutcome]:
        return [o for _, o in self.outcomes if o.result == RECORDED and o.kind is Fault.policy]

    @property
    def sender_problems(self) -> list[BounceOutcome]:
        return [o for _, o in self.outcomes if o.result == RECORDED and o.kind is Fault.sender]

    def summary(self) -> str:
        return (f"{self.processed} message(s): {self.hard} hard, {self.soft} soft, "
                f"{self.policy} policy, {self.sender} about our sender, {self.unmatched} "
                f"unmatched, {self.complaints} complaint(s), {self.duplicates} already "
                f"processed, {len(self.errors)} unreadable; "
                f"{len(self.suppressed)} address(es) suppressed")


def open_mailbox(path: str | Path, fmt: str = "auto") -> mailbox.Mailbox | Path:
    """A Maildir folder, an mbox file, or (a Path) a single message file; read-only in
    spirit: nothing is moved or deleted."""
    if fmt not in FORMATS:
        raise ValidationError(f"bad format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise BounceError(f"cannot read {path}: no such file or folder; give a Maildir folder, "
                          "an mbox file or a message file")
    is_maildir = path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()
    if fmt == "auto":
        fmt = "maildir" if path.is_dir() else "mbox"
    if fmt == "maildir":
        if not is_maildir:
            raise BounceError(f"{path} is not a Maildir: it needs 'cur' and 'new' folders")
        return mailbox.Maildir(path, factory=None, create=False)
    if path.is_dir():
        raise BounceError(f"{path} is a folder, not an mbox or message file; use --format "
                          "maildir for a Maildir")
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError as exc:
        raise BounceError(f"cannot read {path}: {exc.strerror}") from exc
    if fmt == "file" or (head and head != b"From "):
        return path  # one message (an .eml file, or what the MTA handed over)
    return mailbox.mbox(path, factory=None, create=False)


def _messages(box: mailbox.Mailbox | Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(source, raw bytes or None, what went wrong reading it or None)."""
    if isinstance(box, Path):
        try:
            yield box.name, box.read_bytes(), None
        except OSError as exc:
            yield box.name, None, f"cannot read the message: {exc.strerror}"
        return
    try:
        keys = box.keys()  # an mbox's are in file order already
    except OSError as exc:
        raise BounceError(f"cannot read the mailbox: {exc.strerror or exc}") from exc
    if isinstance(box, mailbox.Maildir):
        keys.sort()  # names start with the delivery time
    name = Path(getattr(box, "_path", "")).name
    for n, key in enumerate(keys, start=1):
        source = str(key) if isinstance(box, mailbox.Maildir) else f"{name}#{n}"
        try:
            yield source, box.get_bytes(key), None
        except (OSError, KeyError):  # removed or unreadable meanwhile
            yield source, None, "cannot read the message: it was removed or is unreadable"


def process_mailbox(path: str | Path, fmt: str = "auto", *, settings: Settings,
                    dry_run: bool = False) -> BounceReport:
    """Process every message of a Maildir, an mbox or a message file; each one in its own
    transaction (with ``dry_run``, none is written: each outcome says what would be done).

    The mailbox is left as it is (processing it again changes nothing). A message that is
    not a bounce is counted as unmatched; one that cannot be read or parsed is listed in
    ``errors`` and nothing is written for it. A path that is no mailbox raises BounceError.
    """
    box = open_mailbox(path, fmt)
    report = BounceReport()
    make_session = db._sessionmaker(settings.database_url)
    try:
        for source, raw, problem in _messages(box):
            report.processed += 1
            report.order.append(source)
            if problem is not None or raw is None:  # raw is None exactly when there is a problem
                report.errors.append((source, problem or "cannot read the message"))
                continue
            session = make_session()
            try:
                outcome = process_bounce_message(session, raw, settings=settings,
                                                 dry_run=dry_run)
                if dry_run:
                    session.rollback()
                else:
                    session.commit()
            except DigestError as exc:
                session.rollback()
                report.errors.append((source, str(exc)))
                continue
            except IntegrityError:  # another process suppressed the same address just now
                session.rollback()
                report.errors.append((source, "changed by another process at the same time; "
                                              "process the mailbox again"))
                continue
            finally:
                session.close()
            report.outcomes.append((source, outcome))
            if outcome.result == RECORDED and outcome.complaint:
                report.complaints += 1
            elif outcome.result == RECORDED:
                # A recorded bounce always has a kind; the counters are named after them.
                kind = cast(Fault, outcome.kind).value
                setattr(report, kind, getattr(report, kind) + 1)
            elif outcome.result == DUPLICATE:
                report.duplicates += 1
            else:
                report.unmatched += 1
    finally:
        if not isinstance(box, Path):
            box.close()
    return report
