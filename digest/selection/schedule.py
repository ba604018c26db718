"""When weekly and daily digests are due: UTC hour slots, catch-up, runs held for an operator.

A slot is one UTC hour; its run (slot key ``weekly:2025-10-13T08``) takes the subscribers whose
local weekday and hour first comes round in (slot - 1 h, slot]. Put that way, every local hour
falls in exactly one slot, whatever the zone does:

- a local hour that a daylight-saving change skips (02:00 the night clocks go 02:00 -> 03:00)
  comes round when the gap ends, so that reader is due with the 03:00 ones;
- a local hour that happens twice (clocks go back) counts the first time only: one digest;
- an hour that is not whole in UTC (Asia/Kathmandu is +05:45) falls in the slot after it, so
  08:00 in Kathmandu is planned at 03:00 UTC (08:45 there): never early.

Scheduled planning (the beat's tick, ``digest send weekly`` without ``--now``) plans the current
slot and every slot missed since the last one planned, up to ``catch_up_hours`` back, so an
outage or a deploy across someone's hour does not skip their week. A slot is never planned twice
(the slot key is unique). A slot whose send-by deadline (``send_by_hours`` after it) has passed
is planned (who and what are on record) but its run is ``held``: nothing sends it until an
operator releases or cancels it. Slots older than the catch-up range are not planned: their
readers' next slot carries the items, since a digest's window starts at the reader's watermark.
A run whose planner stopped half-way (a crash, a full disk, a lost connection), a ``--now`` one
too, is planned to the end by the next scheduled planning: nobody has to run it again by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from digest.db import rowcount
from digest.errors import ValidationError
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    Frequency,
    RunKind,
    RunStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from digest.records import cancel_run as cancel_rows
from digest.selection.clock import check_real_send_clock
from digest.selection.matching import window_for
from digest.selection.planning import (
    ChunkSent,
    PlannedRun,
    RunShared,
    _get_or_create_run,
    plan_in_chunks,
)
from digest.settings import Settings

HOUR = timedelta(hours=1)
SCHEDULED = (Frequency.weekly, Frequency.daily)
SCHEDULED_KINDS = (RunKind.weekly, RunKind.daily)  # the runs of those frequencies


# --- slots and who is due -------------------------------------------------------------------

def slot_start(now: datetime) -> datetime:
    """The UTC hour containing ``now``."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def slot_key(frequency: str, slot: datetime) -> str:
    return f"{frequency}:{slot:%Y-%m-%dT%H}"


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def first_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first UTC instant at which the zone's clock reads ``wall`` (naive) or later: the
    wall time itself; its first occurrence when clocks go back; the end of the gap when they
    jump over it."""
    moment = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _local(moment, zone) == wall:
        return moment  # fold=0 is the first of two occurrences
    # In a gap, fold=0 reads the wall with the offset before the change (at or after the gap's
    # end) and fold=1 with the one after (before the gap). Bisect to the change itself, in whole
    # seconds (every offset change is).
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(moment.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local(datetime.fromtimestamp(mid, UTC), zone) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def due_local_hours(zone: str, after: datetime, until: datetime) -> set[tuple[int, int]]:
    """The local (weekday, hour) pairs of ``zone`` that first come round in (after, until]."""
    tz = ZoneInfo(zone)
    wall = _local(after, tz).replace(minute=0, second=0, microsecond=0)  # came round by ``after``
    due: set[tuple[int, int]] = set()
    while True:
        wall += HOUR  # wall-clock arithmetic: every local hour, whether it exists or not
        moment = first_instant(wall, tz)
        if moment > until:
            return due
        if moment > after:
            due.add((wall.weekday(), wall.hour))


def _zones(session: Session, frequency: str) -> list[str]:
    return list(session.scalars(
        select(Subscriber.timezone).distinct().where(
            Subscriber.frequency == frequency, Subscriber.status == SubscriberStatus.active)))


def _due_in(zones: list[str], frequency: str, slot: datetime) -> ColumnElement[bool]:
    branches = []
    for zone in zones:
        hours = due_local_hours(zone, slot - HOUR, slot)
        if not hours:
            continue  # the hour that clocks going back repeat
        if frequency == Frequency.weekly:
            wanted = or_(*(and_(Subscriber.weekday == d, Subscriber.hour == h) for d, h in hours))
        else:
            wanted = Subscriber.hour.in_(sorted({h for _, h in hours}))
        branches.append(and_(Subscriber.timezone == zone, wanted))
    return or_(*branches) if branches else false()


def due_condition(session: Session, frequency: str, slot: datetime) -> ColumnElement[bool]:
    """Subscribers whose local weekday/hour (daily: hour) first comes round in this slot's
    hour, (slot - 1 h, slot]; one branch per time zone in use."""
    return _due_in(_zones(session, frequency), frequency, slot_start(slot))


# --- planning -------------------------------------------------------------------------------

@dataclass
class SlotPlan:
    slot: datetime
    run: PlannedRun  # a held run's pending_ids are empty: nothing is enqueued for it
    held: bool = False


def _check_frequency(frequency: str) -> None:
    if frequency not in SCHEDULED:
        raise ValidationError(f"scheduled digests are weekly or daily, not {frequency!r}")


def _plan(session: Session, frequency: str, *, key: str, now: datetime,
          who: ColumnElement[bool], everyone: bool, dry_run: bool, settings: Settings,
          late: bool = False, on_chunk: ChunkSent | None = None,
          share: RunShared | None = None) -> PlannedRun:
    """Create the slot's run and plan it in chunks (``plan_in_chunks``); a run of this key
    left half-planned is planned to the end instead; a finished one is left alone.

    A ``late`` run (to be held) is planned in the caller's one transaction: none of its rows
    may be seen, let alone swept up and sent, before it is held.
    """
    if dry_run:
        key = f"dry-run:{key}:{utcnow().timestamp()}"
    run, created = _get_or_create_run(session, kind=RunKind(frequency), slot_key=key, cutoff=now,
                                      params={"everyone": everyone}, dry_run=dry_run,
                                      status=RunStatus.planning)
    if not created and run.status != RunStatus.planning:
        return PlannedRun(run.id, False)
    if created and not late:
        session.commit()  # the run is on record before its first chunk: a crash is resumed
    return _plan_rest(session, run, who, settings, commit=not late, on_chunk=on_chunk,
                      resumed=not created, share=None if late else share)


def _plan_rest(session: Session, run: DigestRun, who: ColumnElement[bool], settings: Settings,
               *, commit: bool, on_chunk: ChunkSent | None, resumed: bool,
               share: RunShared | None = None, wait: bool = True) -> PlannedRun:
    # The run's own cutoff, not the clock: a resumed run's later chunks get the same window.
    return plan_in_chunks(session, run, and_(Subscriber.frequency == run.kind, who),
                          window_for(run.cutoff, settings),
                          chunk_size=settings.planning_chunk_size, commit=commit,
                          on_chunk=on_chunk, resumed=resumed, share=share, wait=wait)


def plan_run_chunks(session: Session, run_id: int, *, settings: Settings,
                    on_chunk: ChunkSent | None = None) -> PlannedRun | None:
    """One more planner of a run being planned (a worker's ``plan_run`` task): the chunks
    nobody holds, each committed and handed to ``on_chunk``, until none is left to take; it
    does not wait for the others. None: the run is not (or no longer) planning."""
    run = session.get(DigestRun, run_id)
    if run is None or run.status != RunStatus.planning or run.dry_run:
        return None
    return _plan_rest(session, run, _who_of(session, run), settings, commit=True,
                      on_chunk=on_chunk, resumed=True, wait=False)


def _who_of(session: Session, run: DigestRun) -> ColumnElement[bool]:
    """Who a run is for, from its key: everyone of its frequency (``--now``), or those due in
    its slot whose window does not reach its cutoff yet (as when it was created)."""
    if run.params.get("everyone"):
        return true()
    slot = datetime.strptime(run.slot_key.partition(":")[2], "%Y-%m-%dT%H").replace(tzinfo=UTC)
    return and_(due_condition(session, run.kind, slot), _not_covered_up_to(run.cutoff))


def _not_covered_up_to(now: datetime) -> ColumnElement[bool]:
    # A reader whose digest window already reaches ``now`` (due in two slots of one catch-up:
    # a daily reader across more than a day, or across a spring-forward day) would only get an
    # empty "skipped" row.
    return or_(Subscriber.watermark.is_(None), Subscriber.watermark < now)


def plan_scheduled_run(session: Session, frequency: str, *, now: datetime | None = None,
                       everyone: bool = False, dry_run: bool = False,
                       settings: Settings, on_chunk: ChunkSent | None = None,
                       share: RunShared | None = None) -> PlannedRun:
    """Plan the weekly or daily digest of the slot containing ``now`` (only that slot; the
    scheduler calls ``plan_due_slots``, which also catches up on missed ones), in chunks
    committed one by one (``plan_in_chunks``; ``on_chunk`` enqueues each).

    Without ``everyone`` only subscribers due in this slot are; with it every active subscriber
    of that frequency is (``digest send weekly --now``). A second call for the same slot plans
    nothing and returns the existing run, unless its planner stopped half-way: then it plans
    the rest. ``--now`` again first finishes a ``--now`` run left half-planned, and is that run.
    A real run as of a ``now`` ahead of the present is refused (rule C1, ``selection.clock``).
    """
    _check_frequency(frequency)
    check_real_send_clock(now, dry_run=dry_run)
    now = now or utcnow()
    slot = slot_start(now)
    if everyone and not dry_run:
        left = session.scalars(select(DigestRun).where(
            DigestRun.kind == frequency, DigestRun.status == RunStatus.planning,
            DigestRun.dry_run.is_(False), DigestRun.slot_key.like(f"{frequency}:all:%"))
            .order_by(DigestRun.id).limit(1)).one_or_none()
        if left is not None:
            return _plan_rest(session, left, true(), settings, commit=True, on_chunk=on_chunk,
                              resumed=True, share=share)
    if everyone:
        key = f"{frequency}:all:{now.astimezone(UTC):%Y-%m-%dT%H:%M}"
        who: ColumnElement[bool] = true()
    else:
        key = slot_key(frequency, slot)
        who = and_(due_condition(session, frequency, slot), _not_covered_up_to(now))
    return _plan(session, frequency, key=key, now=now, who=who, everyone=everyone,
                 dry_run=dry_run, settings=settings, on_chunk=on_chunk,
                 share=None if dry_run else share)


def last_planned_slot(session: Session, frequency: str) -> datetime | None:
    """The latest slot with a scheduled run (``weekly:2025-10-13T08``; not ``--now`` runs,
    whose keys are ``weekly:all:...``, nor dry runs)."""
    # ':' sorts right after '9' and 'a' after it: the range holds only the dated keys.
    key = session.scalar(select(func.max(DigestRun.slot_key)).where(
        DigestRun.slot_key >= f"{frequency}:0", DigestRun.slot_key < f"{frequency}::"))
    if key is None:
        return None
    return datetime.strptime(key.partition(":")[2], "%Y-%m-%dT%H").replace(tzinfo=UTC)


def due_slots(session: Session, frequency: str, now: datetime,
              settings: Settings) -> list[datetime]:
    """The slots scheduled planning should plan at ``now``, oldest first: the current one, and
    those after the last planned slot that began less than ``catch_up_hours`` ago. With no
    scheduled run at all yet (a new installation) there is nothing to catch up on."""
    current = slot_start(now)
    last = last_planned_slot(session, frequency)
    if last is None:
        return [current]
    # The first slot that began less than catch_up_hours ago.
    oldest = slot_start(now - timedelta(hours=settings.catch_up_hours)) + HOUR
    slot = max(last + HOUR, oldest)
    slots = []
    while slot < current:
        slots.append(slot)
        slot += HOUR
    return [*slots, current]


def plan_due_slots(session: Session, frequency: str, *, now: datetime | None = None,
                   dry_run: bool = False, settings: Settings,
                   on_chunk: ChunkSent | None = None,
                   share: RunShared | None = None) -> list[SlotPlan]:
    """Plan every due slot (``due_slots``), and finish any slot's run left half-planned; one
    ``SlotPlan`` per slot, oldest first, including the current slot when it was planned
    already (``run.created`` False).

    Timely runs are planned in chunks, each committed (``plan_in_chunks``; ``on_chunk``
    enqueues each). Every run's cutoff is ``now``, so a caught-up digest carries everything up
    to now. A run whose slot's send-by deadline has passed is ``held``: planned in the caller's
    transaction, never enqueued. The newest slots are planned first, so a daily reader due in a
    held slot and in a timely one of the same catch-up gets the timely one. A real plan as of
    a ``now`` ahead of the present is refused (rule C1).
    """
    _check_frequency(frequency)
    check_real_send_clock(now, dry_run=dry_run)
    now = now or utcnow()
    slots = due_slots(session, frequency, now, settings)
    plans: list[SlotPlan] = []
    if not dry_run:
        due_keys = {slot_key(frequency, slot) for slot in slots}
        plans.extend(resume_stopped_planning(session, frequency, settings=settings,
                                             on_chunk=on_chunk, except_keys=due_keys))
    zones = _zones(session, frequency)
    for slot in reversed(slots):
        late = now - slot > timedelta(hours=settings.send_by_hours)
        who = and_(_due_in(zones, frequency, slot), _not_covered_up_to(now))
        run = _plan(session, frequency, key=slot_key(frequency, slot), now=now, who=who,
                    everyone=False, dry_run=dry_run, settings=settings, late=late,
                    on_chunk=on_chunk, share=None if dry_run else share)
        held = late and run.created and not run.resumed and _hold(session, run)
        plans.append(SlotPlan(slot, replace(run, pending_ids=[]) if held and not dry_run else run,
                              held))
    return sorted(plans, key=lambda plan: plan.slot)


def resume_stopped_planning(session: Session, frequency: str, *, settings: Settings,
                            on_chunk: ChunkSent | None = None,
                            except_keys: set[str] | frozenset[str] = frozenset(),
                            started_before: datetime | None = None) -> list[SlotPlan]:
    """Runs whose planner stopped (a crash, a full disk, a lost connection), ``--now`` ones
    too, planned on from where they got to: nobody else would come back for them. A planner
    still at work on one takes chunks in turn with this one (a row lock), so finding one that
    is merely slow costs nothing twice. ``started_before``: only runs created before it (the
    sweep's bound, so a planner at work is normally left alone)."""
    query = select(DigestRun).where(
        DigestRun.kind == frequency, DigestRun.status == RunStatus.planning,
        DigestRun.dry_run.is_(False))
    if except_keys:
        query = query.where(DigestRun.slot_key.not_in(except_keys))
    if started_before is not None:
        query = query.where(DigestRun.created_at < started_before)
    plans = []
    for left in session.scalars(query.order_by(DigestRun.id)).all():
        slot = (slot_start(_aware(left.cutoff)) if left.params.get("everyone") else
                datetime.strptime(left.slot_key.partition(":")[2],
                                  "%Y-%m-%dT%H").replace(tzinfo=UTC))
        # It does not wait for planners still at work on the run (their chunks are held).
        plans.append(SlotPlan(slot, _plan_rest(session, left, _who_of(session, left),
                                               settings, commit=True, on_chunk=on_chunk,
                                               resumed=True, wait=False)))
    return plans


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _hold(session: Session, run: PlannedRun) -> bool:
    """A late run with something to send waits for an operator; a dry run only says so."""
    if run.dry_run:
        return bool(run.pending_ids)
    held = rowcount(session,
        update(DigestRun).where(DigestRun.id == run.run_id,
                                DigestRun.status == RunStatus.sending)
        .values(status=RunStatus.held))
    return bool(held)


# --- the operator's decision on a held run ---------------------------------------------------

def _run(session: Session, run_id: int) -> DigestRun:
    run = session.get(DigestRun, run_id)
    if run is None:
        raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
    return run


def release_run(session: Session, run_id: int) -> list[int]:
    """A held run is sent after all: it goes to ``sending`` and its pending delivery ids are
    returned, for the caller to enqueue after it commits."""
    run = _run(session, run_id)
    if run.status != RunStatus.held:
        raise ValidationError(f"run {run_id} is {run.status}, not held: only a held run can be "
                              "released ('digest runs' shows each run's status)")
    ids = list(session.scalars(select(Delivery.id).where(
        Delivery.run_id == run_id, Delivery.status == DeliveryStatus.pending)
        .order_by(Delivery.id)))
    values: dict[str, object] = {"status": RunStatus.sending if ids else RunStatus.done}
    if not ids:
        values["finished_at"] = utcnow()  # everyone left or was suppressed while it waited
    # Conditional, so two operators releasing at once enqueue it once.
    if not rowcount(session, update(DigestRun).where(
            DigestRun.id == run_id, DigestRun.status == RunStatus.held)
            .values(**values)):
        raise ValidationError(f"run {run_id} was released or cancelled meanwhile")
    session.expire(run)
    return ids


@dataclass(frozen=True)
class CancelledRun:
    deliveries: int  # rows that will not go out
    items_given_back: int  # ledger rows released, so the readers' next digest carries them


CANCELLABLE = (RunStatus.held, RunStatus.planned, RunStatus.sending)


def cancel_run(session: Session, run_id: int, reason: str,
               settings: Settings) -> CancelledRun:
    """An operator drops a run (a held one, typically): its unsent rows are cancelled, and what
    they would have carried goes to those readers' next digest instead (``give_back_items``)."""
    run = _run(session, run_id)
    if run.dry_run or run.status not in CANCELLABLE:
        what = "a dry run" if run.dry_run else run.status
        raise ValidationError(f"run {run_id} is {what}: only a held, planned or sending run can "
                              "be cancelled")
    cancelled = cancel_rows(session, run_id, reason)
    given_back = give_back_items(session, run_id, settings)
    session.expire(run)
    return CancelledRun(cancelled, given_back)


def give_back_items(session: Session, run_id: int, settings: Settings) -> int:
    """The items of the run's cancelled deliveries are no longer their readers' (a cancelled row
    claims nothing, ``digest.records.contents``) and, for a scheduled run, put
    those readers' watermark back where this run's window started for them (their previous
    scheduled digest, or the first digest's look-back), so the items are not lost for them.

    An alert's or an ad-hoc send's claims (rule H3) go the same way, watermarks left
    alone: the reader's next digest carries those items if its window still holds them (they
    came after the reader's last digest). One planned while the claim was held did not carry
    them, and the watermark is not moved back for them: that would reopen every item since.

    Safe against a second copy: every item another digest carries is still claimed by it, so
    a window that reaches back further only brings back what was given back. Returns how many
    claimed items were given back.
    """
    run = _run(session, run_id)
    released = session.scalar(select(func.coalesce(func.sum(Delivery.item_count), 0)).where(
        Delivery.run_id == run_id, Delivery.status == DeliveryStatus.cancelled,
        Delivery.claims.is_(True))) or 0
    if run.kind in SCHEDULED_KINDS:
        readers = select(Delivery.subscriber_id).where(
            Delivery.run_id == run_id, Delivery.status == DeliveryStatus.cancelled)
        # Each reader's previous window end: their latest other scheduled delivery that was not
        # cancelled, before this run; none: this was their first digest, with its look-back.
        first_start = window_for(run.cutoff, settings).default_start
        previous = (
            select(func.max(DigestRun.cutoff))
            .join(Delivery, Delivery.run_id == DigestRun.id)
            .where(Delivery.subscriber_id == Subscriber.id, DigestRun.id != run_id,
                   DigestRun.kind.in_(SCHEDULED_KINDS), DigestRun.dry_run.is_(False),
                   DigestRun.status != RunStatus.cancelled,
                   Delivery.status != DeliveryStatus.cancelled,
                   DigestRun.cutoff < run.cutoff)
            .scalar_subquery())
        session.execute(update(Subscriber).where(Subscriber.id.in_(readers)).values(
            watermark=func.coalesce(previous, literal(first_start, Subscriber.watermark.type))))
    return released


__all__ = [
    "CancelledRun", "SlotPlan", "cancel_run", "due_condition", "due_local_hours", "due_slots",
    "first_instant", "give_back_items", "last_planned_slot", "plan_due_slots",
    "plan_scheduled_run", "release_run", "slot_key", "slot_start",
]
