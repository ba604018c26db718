"""The reference model of the delivery promise (docs/delivery-promise.md), in plain Python.

No database, no SMTP, no code of ``digest``: an independent reading of the numbered rules.
State: readers, the suppression list, items, held runs, what each reader received. Every
operation people perform returns an ``Outcome``: for each reader, the messages they may or
must get now, by kind, each with a MUST set (items that have to be carried) and a MAY set
(items the rules allow but do not demand: a latitude at a boundary). A reader the outcome
does not name must get nothing. ``observe`` then tells the model what was really delivered
(or attempted and failed), so the next expectations start from what happened.

Kinds: ``digest`` (weekly or daily), ``alert``, ``adhoc``, ``resend`` (of failed messages,
O3), ``confirmation``.
Every rule implemented cites its number as a comment (``# R4``, ``# S2`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

HOUR = timedelta(hours=1)
# The places under each region (M3), as this model knows them.
REGIONS = {"OSCE Mission to Serbia": "South-Eastern Europe",
           "OSCE Mission to Montenegro": "South-Eastern Europe",
           "OSCE Mission to Moldova": "Eastern Europe"}
DIGEST, ALERT, ADHOC, RESEND, CONFIRMATION = "digest", "alert", "adhoc", "resend", "confirmation"


@dataclass(frozen=True)
class Config:
    lookback: timedelta = timedelta(days=7)  # DIGEST_FIRST_DIGEST_LOOKBACK_DAYS
    max_age: timedelta = timedelta(days=30)  # DIGEST_MAX_ITEM_AGE_DAYS
    catch_up: timedelta = timedelta(hours=48)  # DIGEST_CATCH_UP_HOURS
    send_by: timedelta = timedelta(hours=24)  # DIGEST_SEND_BY_HOURS
    debounce: timedelta = timedelta(minutes=10)  # DIGEST_ALERT_DEBOUNCE_MINUTES


@dataclass(frozen=True)
class Filter:
    themes: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()


@dataclass
class Item:
    key: str
    themes: frozenset[str]
    locations: frozenset[str]
    ctype: str | None
    published: datetime | None
    ingested: datetime
    backfill: bool


@dataclass
class Held:
    """A digest planned for a held run (O1): what it carries was fixed when planned (I3)."""
    must: frozenset[str]
    may: frozenset[str]
    start: datetime  # where its window began, given back on cancel (O2)


@dataclass
class Reader:
    email: str
    status: str  # pending | active | unsubscribed | suppressed
    frequency: str = "weekly"
    tz: str = "UTC"
    weekday: int = 0
    hour: int = 8
    filters: tuple[Filter, ...] = ()
    wm: datetime | None = None  # end of the previous digest's window; None: look back (S2)
    wm_sure: datetime | None = None  # items after it and up to wm may still come (S4 latitude)
    left: bool = False  # left (unsubscribed, suppressed) since last active (R6)
    before_suppression: str | None = None
    received: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)  # failed for good: never next digest (N2)
    owed: set[str] = field(default_factory=set)  # given back by a cancelled run (O2)
    held: dict[str, Held] = field(default_factory=dict)  # by slot key


@dataclass
class Expect:
    must: set[str] = field(default_factory=set)
    may: set[str] = field(default_factory=set)
    repeat_ok: bool = False  # the operator asked for these items (H3, O3)


# reader email -> kind -> expectation. A reader or kind not named: nothing may come.
Outcome = dict[str, dict[str, Expect]]


def matches(item: Item, filters: tuple[Filter, ...]) -> bool:
    if not filters:
        return True  # M2
    places = item.locations | {REGIONS[p] for p in item.locations if p in REGIONS}  # M3
    return any((not f.themes or bool(f.themes & item.themes))  # M1: OR in a facet,
               and (not f.locations or bool(f.locations & places))  # AND across facets,
               and (not f.types or item.ctype in f.types)  # an empty facet matches all
               for f in filters)


def form_filters(everything: bool, ticked: tuple[Filter, ...]) -> tuple[Filter, ...] | None:
    """What the subscribe and preferences forms save: ticking anything means "only these",
    whatever the "Everything" choice; "Everything" with nothing ticked: no filter (M5).
    Neither: the form is refused (None)."""
    if ticked:
        return tuple(ticked)
    return () if everything else None


def local_occurrence(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a local wall hour comes round: its first occurrence when repeated, the
    end of the gap when skipped (S1; the zones used have one-hour gaps)."""
    moment = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if moment.astimezone(zone).replace(tzinfo=None) == wall:
        return moment
    return local_occurrence(wall + HOUR, zone)  # skipped by a daylight-saving change


def served_at(moment: datetime) -> datetime:
    """An hour not whole in UTC is served in the next UTC hour, never early (S1)."""
    whole = moment.replace(minute=0, second=0, microsecond=0)
    return whole if whole == moment else whole + HOUR


def due_moments(reader: Reader, after: datetime, until: datetime) -> list[datetime]:
    """The UTC hours (as served) in (after, until] at which this reader is due (S1)."""
    zone = ZoneInfo(reader.tz)
    day = after.astimezone(zone).date() - timedelta(days=1)
    out = []
    while day <= until.astimezone(zone).date() + timedelta(days=1):
        if reader.frequency == "daily" or day.weekday() == reader.weekday:
            wall = datetime(day.year, day.month, day.day, reader.hour)
            slot = served_at(local_occurrence(wall, zone))
            if after < slot <= until:
                out.append(slot)
        day += timedelta(days=1)
    return out


class Promise:
    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.readers: dict[str, Reader] = {}
        self.suppressed: set[str] = set()
        self.items: dict[str, Item] = {}
        self.last_planned: dict[str, datetime] = {}  # frequency -> scheduler's last slot (S3)
        self.adhoc_requests: set[tuple] = set()  # H2
        self.now_minutes: set[tuple[str, str]] = set()
        self.resent_runs: set[int] = set()  # O3: once per run
        self.also_in_digests = False  # the last ad-hoc send's "also include in digests" (H3)
        self.reports_acted_on: set[object] = set()  # B1: a report acted on once

    # --- who -----------------------------------------------------------------------------

    def mailable(self, email: str) -> bool:
        reader = self.readers.get(email)
        return (reader is not None and reader.status == "active"  # R1
                and email not in self.suppressed)  # R2

    def _set_status(self, reader: Reader, status: str, now: datetime) -> None:
        if status == "active" and reader.status != "active" and reader.left:
            reader.wm = reader.wm_sure = None  # R6: starts afresh, looks back
            reader.left = False
        if status in ("unsubscribed", "suppressed") and reader.status != status:
            reader.left = reader.left or reader.status == "active"
            reader.held.clear()  # R4: planned and not sent: cancelled
        reader.status = status

    def _leave_list(self, email: str) -> None:
        reader = self.readers.get(email)
        if reader is not None:
            reader.held.clear()  # R4

    # --- the reader's own acts ------------------------------------------------------------

    def subscribe(self, email: str, filters: tuple[Filter, ...], frequency: str, tz: str,
                  weekday: int, hour: int, now: datetime) -> Outcome:
        reader = self.readers.get(email)
        if reader is None:
            reader = self.readers[email] = Reader(email, "pending")
        if reader.status in ("pending", "unsubscribed"):
            if reader.status == "unsubscribed":
                self._set_status(reader, "pending", now)
            self._prefs(reader, filters, frequency, tz, weekday, hour, now)
            confirmation = Expect(must={"confirmation"})
        else:
            confirmation = Expect(may={"confirmation"})  # an active reader: a new link at most
        if reader.status == "suppressed" or email in self.suppressed:
            return {}  # R2: nothing at all, confirmations included
        return {email: {CONFIRMATION: confirmation}}  # R1: pending: confirmations only

    def confirm(self, email: str, now: datetime) -> Outcome:
        reader = self.readers.get(email)
        if reader is not None and reader.status == "pending" and email not in self.suppressed:
            self._set_status(reader, "active", now)  # R5: the reader's own act
        return {}

    def resubscribe(self, email: str, now: datetime) -> Outcome:
        reader = self.readers.get(email)
        if reader is not None and reader.status == "unsubscribed":
            self._set_status(reader, "active", now)  # R5, R6
        return {}

    def change_preferences(self, email: str, filters: tuple[Filter, ...], frequency: str,
                           tz: str, weekday: int, hour: int, now: datetime) -> Outcome:
        reader = self.readers.get(email)
        if reader is not None:
            self._prefs(reader, filters, frequency, tz, weekday, hour, now)  # I3
        return {}

    def _prefs(self, reader: Reader, filters: tuple[Filter, ...], frequency: str, tz: str,
               weekday: int, hour: int, now: datetime) -> None:
        # S6: weekly <-> daily keeps the watermark; from immediate, the window of S2; to
        # immediate, alerts from then on (older waiting items: see _alert_may).
        reader.filters, reader.frequency, reader.tz = filters, frequency, tz
        reader.weekday, reader.hour = weekday, hour

    def unsubscribe(self, email: str, now: datetime) -> Outcome:
        reader = self.readers.get(email)
        if reader is not None and reader.status in ("active", "pending"):
            self._set_status(reader, "unsubscribed", now)  # R4
        elif reader is not None and reader.status == "suppressed":
            reader.before_suppression = "unsubscribed"  # they asked to leave: R5 on unsuppress
        return {}

    # --- the operator's acts on readers ---------------------------------------------------

    def add_refused(self, email: str, status: str | None) -> bool:
        """``digest subscribers add`` without ``--status`` refuses a reader who left and an
        address on the suppression list: no bulk or implicit re-activation (R5, R2)."""
        reader = self.readers.get(email)
        left = reader is not None and reader.status in ("unsubscribed", "suppressed")
        return status is None and (left or email in self.suppressed)

    def add(self, email: str, filters: tuple[Filter, ...], frequency: str, tz: str, weekday: int,
            hour: int, now: datetime, *, status: str | None = None) -> Outcome:
        """``digest subscribers add``: a new reader is active; an existing one is updated and
        re-activated only when the operator says ``--status active`` (R5)."""
        if self.add_refused(email, status):
            return {}  # R5: refused with one line; nothing changes
        if status == "active":
            self.suppressed.discard(email)  # R5: the explicit re-activation lifts it (R2)
        reader = self.readers.get(email)
        if reader is None:
            reader = self.readers[email] = Reader(email, "active")
        elif not filters:
            filters = reader.filters  # I3: no --filter given: an existing reader's stay
        self._prefs(reader, filters, frequency, tz, weekday, hour, now)
        if status is not None:
            self.set_status(email, status, now)
        return {}

    def set_status(self, email: str, status: str, now: datetime) -> Outcome:
        """The API's update of one reader's status: an explicit act (R5)."""
        reader = self.readers.get(email)
        if reader is None:
            return {}
        if status == "suppressed":
            return self.suppress(email, now)  # R3
        if reader.status == "suppressed":
            self.suppressed.discard(email)  # the operator lifts it (R2), status follows (R3)
        self._set_status(reader, status, now)
        return {}

    def suppress(self, email: str, now: datetime) -> Outcome:
        self.suppressed.add(email)  # R2
        reader = self.readers.get(email)
        if reader is not None:
            if reader.status != "suppressed":
                reader.before_suppression = reader.status
            self._set_status(reader, "suppressed", now)  # R3, R4
        return {}

    def unsuppress(self, email: str, now: datetime) -> Outcome:
        self.suppressed.discard(email)
        reader = self.readers.get(email)
        if reader is not None and reader.status == "suppressed":
            # R5: lifting a suppression gives back the status the reader had; it never
            # confirms a pending reader nor re-subscribes one who had unsubscribed.
            self._set_status(reader, reader.before_suppression or "active", now)
        return {}

    def erase(self, email: str, now: datetime) -> Outcome:
        self.readers.pop(email, None)  # R7 (the suppression, if any, stays)
        return {}

    def hard_bounce(self, email: str, now: datetime, report: object = None) -> Outcome:
        """``report``: what identifies the report (the same value = the same report again)."""
        if report is not None:
            if report in self.reports_acted_on:
                return {}  # B1: the same report again is not acted on again
            self.reports_acted_on.add(report)
        return self.suppress(email, now)  # B1

    def import_rows(self, rows: list[dict[str, str]], has_filter_columns: bool,
                    now: datetime) -> Outcome:
        """CSV import: ``rows`` hold only the columns the file has; '' is an empty cell."""
        by_email: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            by_email.setdefault(row["email"], []).append(row)
        for email, group in by_email.items():
            row = group[0]
            reader = self.readers.get(email)
            status = row.get("status") or None
            if reader is None:
                if email in self.suppressed and status not in ("unsubscribed", "suppressed"):
                    continue  # I2: skipped, with the reason (recording a leave is allowed)
                reader = self.readers[email] = Reader(email, "active")
                status = status or "active"  # I1: defaults for what rows leave out
            elif status == "active" and (reader.status in ("unsubscribed", "suppressed")
                                         or email in self.suppressed):
                continue  # I2, R5: never re-subscribed by an import; left as they are
            for column, attr, cast in (("frequency", "frequency", str), ("timezone", "tz", str),
                                       ("weekday", "weekday", int), ("hour", "hour", int)):
                if row.get(column):  # I1: an empty cell or a missing column keeps the value
                    setattr(reader, attr, cast(row[column]))
            if has_filter_columns:  # I1: the rows given replace the filters
                reader.filters = tuple(_row_filter(r) for r in group)
            if status == "suppressed":
                self.suppress(email, now)  # R3
            elif status is not None:
                self._set_status(reader, status, now)
        return {}

    # --- items ---------------------------------------------------------------------------

    def ingest(self, items: list[Item], now: datetime) -> Outcome:
        new = []
        for item in items:
            known = self.items.get(item.key)
            if known is None:
                item.ingested = now
                item.backfill = bool(item.published and item.published < now - self.config.max_age)
                self.items[item.key] = item  # M4
                new.append(item)
            else:  # I4: the same item, edited; it keeps when it was ingested
                known.themes, known.locations, known.ctype = item.themes, item.locations, item.ctype
        outcome: Outcome = {}
        for reader in self._active("immediate"):
            # A1: with no broker the announced item's window closes at once.
            must = {i.key for i in new if not i.backfill and matches(i, reader.filters)
                    and i.key not in reader.received}
            may = self._alert_may(reader, now) - must
            if must or may:
                outcome[reader.email] = {ALERT: Expect(must, may)}
        return outcome

    def _alert_may(self, reader: Reader, now: datetime) -> set[str]:
        """Items an alert may carry beyond those announced now: non-backfill items the reader
        matches and has not had, ingested within the catch-up range (A3), whose window may
        close after the reader wanted them (S6, I3, I4: edits and changed filters)."""
        horizon = now - self.config.catch_up - self.config.debounce
        return {i.key for i in self.items.values()
                if not i.backfill and i.ingested > horizon and matches(i, reader.filters)
                and i.key not in reader.received and i.key not in reader.claimed
                and not any(i.key in h.must | h.may for h in reader.held.values())}

    def _active(self, frequency: str) -> list[Reader]:
        return [r for r in self.readers.values()
                if r.frequency == frequency and self.mailable(r.email)]

    # --- scheduled digests ----------------------------------------------------------------

    def _window(self, reader: Reader, cutoff: datetime) -> tuple[set[str], set[str]]:
        """(must, may) of a digest planned at ``cutoff`` (S2), minus what the reader had
        (N1), what failed for good (N2) and what a held run claims (O1)."""
        start = reader.wm if reader.wm is not None else cutoff - self.config.lookback  # S2, R6
        sure = start if reader.wm is None or reader.wm_sure is None else min(reader.wm_sure, start)
        taken = reader.received | reader.claimed
        held_must = set().union(*(h.must for h in reader.held.values()))
        held_may = set().union(*(h.may for h in reader.held.values()))
        must, may = set(), set()
        for item in self.items.values():
            if item.backfill or not matches(item, reader.filters) or item.key in taken:
                continue  # M4, M1, N1, N2
            if item.key in held_must:
                continue
            if item.key in held_may:
                may.add(item.key)
            elif start < item.ingested <= cutoff or item.key in reader.owed:
                must.add(item.key)  # S2 (by ingested_at), O2
            elif sure < item.ingested <= cutoff:
                may.add(item.key)  # an earlier empty digest: the rules do not say (S4)
        return must, may

    def _plan_digest(self, reader: Reader, cutoff: datetime) -> Expect:
        must, may = self._window(reader, cutoff)
        start = reader.wm if reader.wm is not None else cutoff - self.config.lookback
        if must or may:
            reader.wm_sure = cutoff  # a digest that carries something closes its window
        elif reader.wm is None or reader.wm_sure is None:
            reader.wm_sure = start  # S4: whether an empty digest ends a window is not said
        reader.wm = max(cutoff, reader.wm or cutoff)
        reader.owed.clear()
        return Expect(must, may)

    def send_now(self, frequency: str, now: datetime) -> Outcome:
        """``digest send weekly --now``: every active reader of that frequency (S5)."""
        outcome: Outcome = {}
        minute = (frequency, now.strftime("%Y-%m-%dT%H:%M"))
        again = minute in self.now_minutes
        self.now_minutes.add(minute)
        for reader in self._active(frequency):
            if again:  # a second --now in the same minute may be taken for a double click
                must, may = self._window(reader, now)
                expect = Expect(set(), must | may)
            else:
                expect = self._plan_digest(reader, now)
            if expect.must or expect.may:
                outcome[reader.email] = {DIGEST: expect}
        return outcome

    def tick(self, now: datetime, frequencies: tuple[str, ...] = ("weekly", "daily"),
             alerts: bool = True) -> tuple[Outcome, dict[tuple[str, datetime], set[str]]]:
        """The scheduler at ``now`` (S1, S3): the outcome, and the held slots with their
        readers (the readers whose digest waits in a held run)."""
        outcome: Outcome = {}
        held: dict[tuple[str, datetime], set[str]] = {}
        current = now.replace(minute=0, second=0, microsecond=0)
        for frequency in frequencies:
            last = self.last_planned.get(frequency)
            self.last_planned[frequency] = current
            # S3: missed slots up to the catch-up range back; a new installation: this hour.
            after = current - HOUR if last is None else max(last, now - self.config.catch_up)
            for reader in self._active(frequency):
                slots = due_moments(reader, after, current)
                if not slots:
                    continue
                timely = [s for s in slots if now - s <= self.config.send_by]
                start = reader.wm if reader.wm is not None else now - self.config.lookback
                expect = self._plan_digest(reader, now)  # S2: the window ends at the run's cutoff
                if timely:
                    if expect.must or expect.may:
                        outcome[reader.email] = {DIGEST: expect}
                else:  # S3, O1: planned too late: held for an operator
                    key = (frequency, max(slots))
                    held.setdefault(key, set()).add(reader.email)
                    reader.held[f"{frequency}:{max(slots):%Y-%m-%dT%H}"] = Held(
                        frozenset(expect.must), frozenset(expect.may), start)
        if alerts:
            for reader in self._active("immediate"):
                may = self._alert_may(reader, now)  # A1: windows that closed since
                if may:
                    outcome[reader.email] = {ALERT: Expect(set(), may)}
        return outcome, held

    def release(self, slot_key: str, now: datetime) -> Outcome:
        outcome: Outcome = {}
        for reader in self.readers.values():
            planned = reader.held.pop(slot_key, None)
            if planned is not None and self.mailable(reader.email) and (planned.must
                                                                         or planned.may):  # O1
                outcome[reader.email] = {DIGEST: Expect(set(planned.must), set(planned.may))}
        return outcome

    def cancel(self, slot_key: str, now: datetime) -> Outcome:
        for reader in self.readers.values():
            planned = reader.held.pop(slot_key, None)
            if planned is not None:  # O2: the next digest carries them instead
                reader.owed |= set(planned.must)
                reader.wm_sure = min(reader.wm_sure or planned.start, planned.start)
        return {}

    # --- the operator's sends -------------------------------------------------------------

    def adhoc(self, item_keys: list[str], frequencies: tuple[str, ...], key: str | None,
              also_in_digests: bool, now: datetime) -> Outcome:
        request = (frozenset(item_keys), frozenset(frequencies), key)
        if request in self.adhoc_requests or self.adhoc_key_taken(request):
            return {}  # H2: the same request twice sends nothing new; a key names one send
        self.adhoc_requests.add(request)
        outcome: Outcome = {}
        for reader in self.readers.values():
            if not self.mailable(reader.email):
                continue  # H1, R1, R2
            if frequencies and reader.frequency not in frequencies:
                continue
            chosen = {k for k in item_keys if matches(self.items[k], reader.filters)}  # H1
            if chosen:  # backfill included when chosen (M4)
                outcome[reader.email] = {ADHOC: Expect(chosen, set(), repeat_ok=True)}
        self.also_in_digests = also_in_digests
        return outcome

    def adhoc_key_taken(self, request: tuple) -> bool:
        """H2: a key already used for another request is refused (nothing is sent)."""
        key = request[2]
        return key is not None and any(r[2] == key and r != request
                                       for r in self.adhoc_requests)

    def resend(self, run_id: int, failed: dict[str, frozenset[str]], now: datetime) -> Outcome:
        """O3: ``failed``: reader -> what their failed message of run ``run_id`` carried."""
        if run_id in self.resent_runs:
            return {}
        self.resent_runs.add(run_id)
        return {email: {RESEND: Expect(set(items), set(), repeat_ok=True)}
                for email, items in failed.items() if self.mailable(email)}

    def dry_run(self, now: datetime) -> Outcome:
        return {}  # O4

    def refused_as_of(self, now: datetime) -> Outcome:
        return {}  # C1: a real send with --as-of ahead of the present is refused

    # --- what happened --------------------------------------------------------------------

    def observe(self, email: str, kind: str, items: set[str], *, delivered: bool) -> None:
        """A message of ``kind`` carrying ``items`` reached ``email`` (``delivered``) or
        failed for good."""
        reader = self.readers.get(email)
        if reader is None or kind == CONFIRMATION:
            return
        if delivered:
            if not (kind == ADHOC and self.also_in_digests):
                reader.received |= items  # N1, H3
            reader.claimed -= items
        elif kind in (DIGEST, ALERT) or (kind == ADHOC and not self.also_in_digests):
            reader.claimed |= items - reader.received  # N2 (an ad-hoc send claims too: H3)


def _row_filter(row: dict[str, str]) -> Filter:
    def cell(name: str) -> frozenset[str]:
        return frozenset(v.strip() for v in (row.get(name) or "").split("|") if v.strip())
    return Filter(cell("themes"), cell("locations"), cell("content_types"))
