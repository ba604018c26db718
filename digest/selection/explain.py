"""Why an item did or did not reach a reader, in plain words (``digest explain EMAIL ITEM``,
``GET /api/v1/subscribers/{id}/explain/{item_id}``, the admin's "Explain an item").

Read-only, and built on the one rule: each filter's facets are the SQL conditions of
``matching.filter_facet_conditions`` evaluated for this one item (the conditions
``item_matches_subscriber`` ANDs), each value's hit the same facet matcher. Then what planning
adds: archive backfill, the reader's window (watermark, cutoff] by ``ingested_at``, the ledger;
then what sending adds: the delivery that carried it (status, SMTP reply, note), suppression,
the reader's status and frequency, a paused domain. A property test on PostgreSQL holds
``matches`` equal to ``item_matches_subscriber`` and ``next_digest_would_carry`` equal to
``preview_items`` over random readers and items (tests/integration/selection/test_explain.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from digest.errors import ValidationError
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    DomainPause,
    Frequency,
    Item,
    Location,
    RunKind,
    Subscriber,
    SubscriberFilter,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from digest.records.contents import CLAIM_RELEASED, delivery_contents
from digest.selection.matching import (
    FACETS,
    filter_facet_conditions,
    item_facet_matchers,
    window_for,
)
from digest.selection.schedule import HOUR, due_local_hours, slot_start
from digest.settings import Settings
from digest.subscribers import describe_filter

FACET_WORDS = {"theme": "theme", "location": "location", "content_type": "content type"}
UNFINISHED = (DeliveryStatus.pending, DeliveryStatus.sending, DeliveryStatus.deferred)
# Why no alert carried an item to an immediate reader it matches, by the reason's code.
NO_ALERT_WORDS = {
    "alert_passed_you": "the alert that covered it had no message for them",
    "alert_too_old": "it is too old to be alerted",
    "alert_passed": "the alert planner passed it when nobody it matched was waiting for it",
}


class Verdict(enum.StrEnum):
    sent = "sent"  # a delivery carrying it was sent
    on_its_way = "on_its_way"  # carried by a delivery not sent yet (pending, sending, deferred)
    not_delivered = "not_delivered"  # carried, but the delivery failed or was cancelled
    no_match = "no_match"  # none of the reader's filters takes it
    backfill = "backfill"  # archive backfill: never in a scheduled digest or an alert
    blocked = "blocked"  # suppressed, unsubscribed or not confirmed
    in_next_digest = "in_next_digest"  # in the window of the reader's next digest
    in_next_alert = "in_next_alert"  # an immediate reader's: no alert window has closed on it
    not_yet = "not_yet"  # ingested after the clock asked about: a later digest's
    missed_window = "missed_window"  # before the window, and no digest carried it
    no_alert = "no_alert"  # an immediate reader whom no alert carried it to, and none will


@dataclass
class FacetCheck:
    facet: str  # theme | location | content_type
    wanted: list[str]  # the filter's values; empty: any
    item_has: list[str]  # the item's values (a place with its region)
    hits: list[str]  # the filter's values the item satisfies
    matched: bool


@dataclass
class FilterCheck:
    filter_id: int
    description: str
    matched: bool
    facets: list[FacetCheck]


@dataclass
class WindowCheck:
    frequency: str
    watermark: datetime | None  # the cutoff of the last scheduled digest planned for them
    start: datetime  # the watermark, or the first digest's look-back
    cutoff: datetime  # the clock asked about
    ingested_at: datetime
    position: str  # before | inside | after the window (start, cutoff]
    next_slot: datetime | None  # UTC hour of the reader's next weekly/daily digest
    last_run_id: int | None  # the last scheduled run with a delivery to them
    last_run_cutoff: datetime | None


@dataclass
class CarriedBy:
    delivery_id: int
    run_id: int
    run_kind: str
    run_status: str
    dry_run: bool
    status: str
    email: str
    item_count: int
    attempts: int
    smtp_code: int | None
    smtp_reply: str | None
    note: str | None
    sent_at: datetime | None
    next_attempt_at: datetime | None
    ledger: bool  # True: the ledger row names it (digests, alerts, ad-hoc sends that claim)
    also_in_digests: bool = False  # an ad-hoc send that left the reader's digests alone (H3)


@dataclass
class AlertCheck:
    """Where the item stands with the alert planner (``plan_due_alerts``), for an immediate
    reader: the alert run whose window holds it, or where the planner has got to."""

    run_id: int | None  # the alert run whose window (after, through] holds the item
    last_cutoff: datetime | None  # the end of the newest alert window planned
    horizon: datetime  # items ingested at or before it are too old to be alerted (A3)
    closes_by: datetime  # the latest its window can close: ingested + the debounce


@dataclass
class Reason:
    code: str
    ok: bool  # True: nothing in the way on this count
    text: str


@dataclass
class Explanation:
    subscriber_id: int
    email: str
    status: str
    frequency: str
    item_id: int
    item_title: str
    item_url: str | None
    item_guid: str
    ingested_at: datetime
    published_at: datetime | None
    is_backfill: bool
    as_of: datetime
    verdict: Verdict
    matches: bool  # the selection rule: a filter takes it, or the reader has none
    # What the reader's next digest would carry at ``as_of`` (what ``digest preview`` shows):
    # the rule, not backfill, not in the ledger, inside the window. Frequency, status,
    # suppression and pauses decide whether it goes: see ``verdict``.
    next_digest_would_carry: bool
    filters: list[FilterCheck]
    window: WindowCheck
    ledger_delivery_id: int | None
    alert: AlertCheck | None  # an immediate reader's: where the item stands with alerts
    deliveries: list[CarriedBy]
    suppression: str | None
    paused_until: datetime | None
    reasons: list[Reason]
    sentences: list[str] = field(default_factory=list)


# --- finding the two sides ---------------------------------------------------------------------

def find_item(session: Session, ref: str | int) -> Item:
    """The item with this id, URL or guid; ValidationError if none or several."""
    text = str(ref).strip()
    if not text:
        raise ValidationError("give an item: its id, URL or guid")
    if text.isdigit():
        if int(text) > 2**31 - 1:
            raise ValidationError(f"no item with id {text}")
        item = session.get(Item, int(text))
        if item is None:
            raise ValidationError(f"no item with id {text}; see GET /api/v1/items")
        return item
    by_guid = session.scalars(select(Item).where(Item.guid == text)).one_or_none()
    if by_guid is not None:
        return by_guid
    by_url = list(session.scalars(select(Item).where(Item.url == text).order_by(Item.id)))
    if not by_url:
        raise ValidationError(f"no item with URL or guid {text!r}; give its id instead")
    if len(by_url) > 1:
        ids = ", ".join(str(i.id) for i in by_url)
        raise ValidationError(f"{len(by_url)} items have this URL (ids {ids}): give an id")
    return by_url[0]


# --- the breakdown --------------------------------------------------------------------------------

def _place(loc: Location) -> str:
    return f"{loc.name} (in {loc.parent.name})" if loc.parent is not None else loc.name


def _filter_checks(session: Session, sub: Subscriber, item: Item) -> list[FilterCheck]:
    """Every filter, every facet: the verdicts are matching's SQL conditions for this item."""
    if not sub.filters:
        return []
    i = Item.__table__
    f = SubscriberFilter.__table__
    conditions = filter_facet_conditions(i)
    verdicts = {row[0]: row[1:] for row in session.execute(
        select(f.c.id, *(cond.label(name) for name, cond in conditions.items()))
        .select_from(f.join(i, i.c.id == item.id)).where(f.c.subscriber_id == sub.id))}
    # The filter's values the item satisfies, by the same matcher per facet.
    matchers = item_facet_matchers(i)
    filter_ids = [flt.id for flt in sub.filters]
    hit_ids: dict[tuple[int, str], set[int]] = {}
    for name, (table, column) in FACETS.items():
        rows = session.execute(
            select(table.c.filter_id, table.c[column])
            .select_from(table.join(i, i.c.id == item.id))
            .where(table.c.filter_id.in_(filter_ids),
                   matchers[name](table.c[column])))
        for filter_id, value in rows:
            hit_ids.setdefault((filter_id, name), set()).add(value)

    item_values = {"theme": [t.name for t in item.themes],
                   "location": [_place(loc) for loc in item.locations],
                   "content_type": [item.content_type.name] if item.content_type else []}
    checks = []
    for flt in sub.filters:
        # (id, name) of the filter's values, per facet
        values: dict[str, list[tuple[int, str]]] = {
            "theme": [(v.id, v.name) for v in flt.themes],
            "location": [(v.id, v.name) for v in flt.locations],
            "content_type": [(v.id, v.name) for v in flt.content_types]}
        facets = []
        for position, name in enumerate(FACETS):
            hits = hit_ids.get((flt.id, name), set())
            facets.append(FacetCheck(
                facet=name, wanted=[n for _, n in values[name]], item_has=item_values[name],
                hits=[n for v, n in values[name] if v in hits],
                matched=bool(verdicts[flt.id][position])))
        checks.append(FilterCheck(flt.id, describe_filter(flt),
                                  all(c.matched for c in facets), facets))
    return checks


def _carried_by(session: Session, sub: Subscriber, item: Item) -> list[CarriedBy]:
    """Every delivery to this reader that carries the item, each once; ``ledger`` marks the
    one that claimed it first (a digest, an alert, an ad-hoc send: its row claims and is not
    cancelled); the others are dry runs, resends, repeats an operator asked for, or rows
    cancelled before they went (``digest.records.contents``)."""
    contents = delivery_contents(session, Delivery.__table__.c.subscriber_id == sub.id)
    rows = session.execute(
        select(Delivery, DigestRun)
        .join(contents, contents.c.delivery_id == Delivery.id)
        .join(DigestRun, DigestRun.id == Delivery.run_id)
        .where(contents.c.item_id == item.id).order_by(Delivery.id)).all()
    claimer = next((d.id for d, _ in rows
                    if d.claims and d.status not in CLAIM_RELEASED), None)
    return [CarriedBy(
        delivery_id=d.id, run_id=run.id, run_kind=str(run.kind), run_status=str(run.status),
        dry_run=run.dry_run, status=str(d.status), email=d.email, item_count=d.item_count,
        attempts=d.attempts, smtp_code=d.smtp_code, smtp_reply=d.smtp_reply, note=d.note,
        sent_at=d.sent_at, next_attempt_at=d.next_attempt_at, ledger=d.id == claimer,
        also_in_digests=bool((run.params or {}).get("also_in_digests")))
        for d, run in rows]


def next_slot(sub: Subscriber, after: datetime) -> datetime | None:
    """The UTC hour slot whose run will take this weekly/daily reader next after ``after``."""
    if sub.frequency not in (Frequency.weekly, Frequency.daily):
        return None
    slot = slot_start(after)
    for _ in range(8 * 24 + 2):  # a week and a day covers every zone and clock change
        slot += HOUR
        hours = due_local_hours(sub.timezone, slot - HOUR, slot)
        if sub.frequency == Frequency.weekly and (sub.weekday, sub.hour) in hours:
            return slot
        if sub.frequency == Frequency.daily and sub.hour in {h for _, h in hours}:
            return slot
    return None


def _window(session: Session, sub: Subscriber, item: Item, as_of: datetime,
            settings: Settings) -> WindowCheck:
    start = sub.watermark or window_for(as_of, settings).default_start
    if item.ingested_at <= start:
        position = "before"
    elif item.ingested_at <= as_of:
        position = "inside"
    else:
        position = "after"
    last = session.execute(
        select(DigestRun.id, DigestRun.cutoff).join(Delivery, Delivery.run_id == DigestRun.id)
        .where(Delivery.subscriber_id == sub.id, DigestRun.dry_run.is_(False),
               DigestRun.kind.in_([RunKind.weekly, RunKind.daily]))
        .order_by(DigestRun.cutoff.desc(), DigestRun.id.desc()).limit(1)).first()
    try:
        upcoming = next_slot(sub, as_of)
    except (KeyError, ValueError):  # a time zone this system no longer knows
        upcoming = None
    return WindowCheck(str(sub.frequency), sub.watermark, start, as_of, item.ingested_at,
                       position, upcoming, last[0] if last else None, last[1] if last else None)


def _alert_check(session: Session, item: Item, as_of: datetime,
                 settings: Settings) -> AlertCheck:
    """The alert run whose window holds the item, and where the alert planner has got to, read
    as ``plan_due_alerts`` reads them (alert windows only: a resend's run is no window)."""
    windows = (DigestRun.kind == RunKind.immediate, DigestRun.dry_run.is_(False),
               DigestRun.slot_key.like("immediate:%"))
    last = session.scalar(select(func.max(DigestRun.cutoff)).where(*windows))
    run_id = session.scalar(select(DigestRun.id).where(
        DigestRun.slot_key == f"immediate:item:{item.id}"))  # the per-item alerts of old
    if run_id is None:
        holding = session.execute(
            select(DigestRun.id, DigestRun.params)
            .where(*windows, DigestRun.cutoff >= item.ingested_at)
            .order_by(DigestRun.cutoff, DigestRun.id).limit(1)).first()
        after = (holding.params or {}).get("after") if holding else None
        if holding and after and datetime.fromisoformat(after) < item.ingested_at:
            run_id = holding.id
    debounce = timedelta(minutes=settings.alert_debounce_minutes)
    horizon = as_of - timedelta(hours=settings.catch_up_hours) - debounce
    return AlertCheck(run_id, last, horizon, item.ingested_at + debounce)


def _alert_waits(alert: AlertCheck, item: Item) -> bool:
    """No alert window has closed on the item and it is recent enough: the next one takes it."""
    return (alert.run_id is None and item.ingested_at > alert.horizon
            and (alert.last_cutoff is None or item.ingested_at > alert.last_cutoff))


# --- the words ------------------------------------------------------------------------------------

def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def _facet_sentence(check: FacetCheck) -> str:
    word = FACET_WORDS[check.facet]
    if not check.wanted:
        return f"{word}: any (the filter does not limit it)"
    wanted = " or ".join(check.wanted)
    has = ", ".join(check.item_has) or "none"
    if check.matched:
        via = " and ".join(check.hits) or wanted
        return f"{word}: wants {wanted}; the item has {has}: matched by {via}"
    return f"{word}: wants {wanted}; the item has {has}: no match"


def _filter_reasons(filters: list[FilterCheck], matches: bool) -> list[Reason]:
    if not filters:
        return [Reason("no_filters", True, "You have no filter: everything matches you.")]
    reasons = []
    for n, check in enumerate(filters, 1):
        facets = "; ".join(_facet_sentence(c) for c in check.facets)
        head = "matches" if check.matched else "does not match"
        reasons.append(Reason("filter_matched" if check.matched else "filter_not_matched",
                              check.matched, f"Filter {n} ({check.description}) {head}: "
                              f"{facets}."))
    if not matches:
        reasons.append(Reason("no_filter_matched", False,
                              "None of your filters matches this item: no digest or alert "
                              "carries it to you."))
    return reasons


def _delivery_sentence(c: CarriedBy) -> str:
    kind = "dry run" if c.dry_run else f"{c.run_kind} run"
    text = f"Delivery {c.delivery_id} ({kind} {c.run_id}, to {c.email}) carries it: {c.status}"
    if c.status == DeliveryStatus.sent:
        text += f" at {_when(c.sent_at)}"
    elif c.status == DeliveryStatus.deferred and c.next_attempt_at:
        text += f", next try {_when(c.next_attempt_at)}"
    text += f" after {c.attempts} attempt(s)" if c.attempts else ""
    if c.smtp_reply or c.smtp_code:
        text += f"; the server answered: {c.smtp_code or ''} {c.smtp_reply or ''}".rstrip()
    if c.note:
        text += f"; note: {c.note}"
    if c.dry_run:
        text += " (a dry run sends nothing)"
    return text + "."


def explain(session: Session, subscriber: Subscriber, item: Item, *, settings: Settings,
            as_of: datetime | None = None) -> Explanation:
    """Everything that decides whether ``item`` reached ``subscriber``; writes nothing."""
    as_of = as_of or utcnow()
    sub = session.scalars(
        select(Subscriber).where(Subscriber.id == subscriber.id).options(
            selectinload(Subscriber.filters).selectinload(SubscriberFilter.themes),
            selectinload(Subscriber.filters).selectinload(SubscriberFilter.locations),
            selectinload(Subscriber.filters).selectinload(SubscriberFilter.content_types))
    ).one()
    filters = _filter_checks(session, sub, item)
    matches = not filters or any(f.matched for f in filters)
    window = _window(session, sub, item, as_of, settings)
    carried = _carried_by(session, sub, item)
    ledger_delivery = next((c.delivery_id for c in carried if c.ledger), None)
    real = [c for c in carried if not c.dry_run]
    suppression = session.scalars(select(Suppression).where(
        Suppression.email == sub.email)).one_or_none()
    # The pause key is the stored address's domain, as digest.records.pauses stores it.
    pause = session.scalars(select(DomainPause).where(
        DomainPause.domain == sub.email.rpartition("@")[2],
        DomainPause.paused_until > as_of)).one_or_none()
    would_carry = (matches and not item.is_backfill and ledger_delivery is None
                   and window.position == "inside")
    scheduled = sub.frequency in (Frequency.weekly, Frequency.daily)
    blocked = suppression is not None or sub.status != SubscriberStatus.active

    reasons = _filter_reasons(filters, matches)
    if item.is_backfill:
        reasons.append(Reason("backfill", False, (
            f"It is archive backfill (published {_when(item.published_at)}, more than "
            f"{settings.max_item_age_days} days before it was ingested): scheduled digests "
            "and alerts never carry it; only an operator's ad-hoc send may.")))
    alert = None
    # Whether an alert is still due to the reader: the rule takes it and nothing carried it.
    alert_due = matches and not item.is_backfill and not blocked and ledger_delivery is None
    if scheduled:
        reasons.append(_window_reason(window, sub, settings))
    elif sub.frequency == Frequency.immediate:
        alert = _alert_check(session, item, as_of, settings)
        carried_by_alert = any(c.run_id == alert.run_id for c in real)
        reasons.append(_alert_reason(alert, item, carried_by_alert, alert_due, settings))
    reasons.append(_ledger_reason(ledger_delivery, carried))
    reasons += _also_in_digests_reasons(carried)
    for c in carried:
        ok = c.status in (DeliveryStatus.sent, *UNFINISHED)
        reasons.append(Reason(f"delivery_{c.status}", ok, _delivery_sentence(c)))
        if c.item_count > settings.max_items_per_digest and c.run_kind != RunKind.immediate:
            reasons.append(Reason("capped", True, (
                f"That digest carries {c.item_count} items and lists "
                f"{settings.max_items_per_digest}; the rest are counted as \"and "
                f"{c.item_count - settings.max_items_per_digest} more\".")))
    if suppression is not None:
        reasons.append(Reason("suppressed", False, (
            f"Your address is suppressed since {_when(suppression.created_at)} "
            f"({str(suppression.reason)}{': ' + suppression.detail if suppression.detail else ''}"
            "): nothing is sent to it.")))
    if sub.status != SubscriberStatus.active:
        words = {SubscriberStatus.pending: "has not confirmed the subscription yet",
                 SubscriberStatus.unsubscribed: f"unsubscribed ({_when(sub.unsubscribed_at)})",
                 SubscriberStatus.suppressed: "is suppressed"}
        reasons.append(Reason(f"status_{sub.status}", False, (
            f"The reader {words.get(sub.status, str(sub.status))}: only active readers are "
            "planned.")))
    if pause is not None:
        reasons.append(Reason("domain_paused", False, (
            f"Mail to {pause.domain} is paused until {_when(pause.paused_until)} after a "
            f"policy refusal ({pause.reason or 'no reply kept'}): deliveries there wait.")))

    verdict = _verdict(real, matches, item, blocked, scheduled, window.position,
                       alert is not None and alert_due and _alert_waits(alert, item))
    result = Explanation(
        subscriber_id=sub.id, email=sub.email, status=str(sub.status),
        frequency=str(sub.frequency), item_id=item.id, item_title=item.title,
        item_url=item.url, item_guid=item.guid, ingested_at=item.ingested_at,
        published_at=item.published_at, is_backfill=item.is_backfill, as_of=as_of,
        verdict=verdict, matches=matches, next_digest_would_carry=would_carry,
        filters=filters, window=window, ledger_delivery_id=ledger_delivery, alert=alert,
        deliveries=carried,
        suppression=str(suppression.reason) if suppression else None,
        paused_until=pause.paused_until if pause else None, reasons=reasons)
    result.sentences = [_summary(result), *(r.text for r in reasons)]
    return result


def _window_reason(window: WindowCheck, sub: Subscriber, settings: Settings) -> Reason:
    start = (f"your watermark {_when(window.watermark)} (the cutoff of your last digest"
             + (f", run {window.last_run_id})" if window.last_run_id else ")")
             if window.watermark else
             f"{_when(window.start)} (a first digest looks back "
             f"{settings.first_digest_lookback_days} days)")
    nxt = f"; your next {str(sub.frequency)} digest is due {_when(window.next_slot)}" \
        if window.next_slot else ""
    where = {"before": "before the window: a digest already planned covered that time",
             "inside": "inside the window",
             "after": "after the cutoff: a later digest's"}[window.position]
    return Reason(f"window_{window.position}", window.position != "before", (
        f"Digest window (by ingested_at): after {start}, up to {_when(window.cutoff)}{nxt}. "
        f"The item was ingested {_when(window.ingested_at)}: {where}."))


def _alert_reason(alert: AlertCheck, item: Item, carried: bool, due: bool,
                  settings: Settings) -> Reason:
    """Where the item stands with the alert planner; ``due``: the rule takes it for this
    reader and nothing carried it yet (else the other reasons say why not)."""
    head = "You get immediate alerts"
    if carried:
        return Reason("alert_run", True, f"{head}: alert run {alert.run_id} carries it.")
    if not due:
        return Reason("immediate", True, (
            f"{head}: the alert planner takes each new item to the active immediate readers "
            "it matches and who do not have it yet."))
    if alert.run_id is not None:
        return Reason("alert_passed_you", False, (
            f"{head}: alert run {alert.run_id} covered this item but had no message for you: "
            "you were not an active immediate reader when it was planned, your filters did not "
            "take the item then, or you had it already."))
    if _alert_waits(alert, item):
        return Reason("alert_waiting", True, (
            f"{head}: no alert window has closed on this item yet. The next alert carries it: "
            f"its window closes by {_when(alert.closes_by)} (DIGEST_ALERT_DEBOUNCE_MINUTES="
            f"{settings.alert_debounce_minutes} after the first item waiting) and the beat's "
            "next tick after that sends it."))
    if item.ingested_at <= alert.horizon:
        return Reason("alert_too_old", False, (
            f"{head}, but no alert carried this item and it was ingested before "
            f"{_when(alert.horizon)} (DIGEST_CATCH_UP_HOURS={settings.catch_up_hours} and the "
            "debounce back from the clock asked about): too old to be alerted now (rule A3)."))
    return Reason("alert_passed", False, (
        f"{head}, but the alert planner has passed this item (its newest window ends "
        f"{_when(alert.last_cutoff)}) with no alert for it: no active immediate reader it "
        "matched was waiting for it then (you became an immediate reader later, or your "
        "filters did not take it then)."))


def _ledger_reason(ledger_delivery: int | None, carried: list[CarriedBy]) -> Reason:
    if ledger_delivery is None:
        return Reason("no_ledger", True,
                      "No delivery to you has claimed this item yet.")
    claim = next((c for c in carried if c.delivery_id == ledger_delivery), None)
    by_adhoc = claim is not None and claim.run_kind == RunKind.adhoc
    return Reason("ledger", True, (
        f"It is yours already, carried by delivery {ledger_delivery}, which claimed it for you: "
        "no scheduled digest or alert will carry it again"
        + (f" (the ad-hoc send of run {claim.run_id} claimed it, rule H3)." if by_adhoc and claim
           else ".")))


def _also_in_digests_reasons(carried: list[CarriedBy]) -> list[Reason]:
    """An ad-hoc send made with "also include in digests" claimed nothing: say so, or a reader
    who got the item from it wonders why their digest repeats it."""
    return [Reason("also_in_digests", True, (
        f"The ad-hoc send of run {c.run_id} was made with \"also include in digests\" "
        "(--also-in-digests): it did not keep the item from your digests and alerts."))
        for c in carried if c.also_in_digests and not c.dry_run]


def _verdict(real: list[CarriedBy], matches: bool, item: Item, blocked: bool, scheduled: bool,
             position: str, alert_waits: bool) -> Verdict:
    if any(c.status == DeliveryStatus.sent for c in real):
        return Verdict.sent
    if any(c.status in UNFINISHED for c in real):
        return Verdict.on_its_way
    if real:
        return Verdict.not_delivered
    if not matches:
        return Verdict.no_match
    if item.is_backfill:
        return Verdict.backfill
    if blocked:
        return Verdict.blocked
    if position == "after":
        return Verdict.not_yet
    if not scheduled:
        return Verdict.in_next_alert if alert_waits else Verdict.no_alert
    return {"inside": Verdict.in_next_digest, "after": Verdict.not_yet,
            "before": Verdict.missed_window}[position]


def _summary(e: Explanation) -> str:
    what = f"Item {e.item_id} ({e.item_title!r}) for {e.email}"
    last = next((c for c in reversed(e.deliveries) if not c.dry_run), None)
    match e.verdict:
        case Verdict.sent:
            sent = next(c for c in e.deliveries if c.status == DeliveryStatus.sent)
            return f"{what}: sent, in delivery {sent.delivery_id} at {_when(sent.sent_at)}."
        case Verdict.on_its_way:
            assert last is not None
            return f"{what}: on its way, delivery {last.delivery_id} is {last.status}."
        case Verdict.not_delivered:
            assert last is not None
            return (f"{what}: not delivered, delivery {last.delivery_id} is {last.status}"
                    f"{': ' + last.note if last.note else ''}.")
        case Verdict.no_match:
            return f"{what}: not sent, none of the reader's filters matches it."
        case Verdict.backfill:
            return f"{what}: not sent, it is archive backfill."
        case Verdict.blocked:
            why = "the address is suppressed" if e.suppression else f"the reader is {e.status}"
            return f"{what}: not sent, {why}."
        case Verdict.in_next_digest:
            due = f", due {_when(e.window.next_slot)}" if e.window.next_slot else ""
            return f"{what}: matches and will be in the next {e.frequency} digest{due}."
        case Verdict.not_yet:
            return f"{what}: matches; ingested after {_when(e.as_of)}, a later message's."
        case Verdict.in_next_alert:
            assert e.alert is not None
            return (f"{what}: matches and will be in the next alert, whose window closes by "
                    f"{_when(e.alert.closes_by)}.")
        case Verdict.missed_window:
            return (f"{what}: matches, but no digest carried it and it came before the "
                    "reader's window (ingested before the last digest's cutoff or the "
                    "first digest's look-back): it will not be sent.")
        case Verdict.no_alert:
            code = next((r.code for r in e.reasons if r.code in NO_ALERT_WORDS), "")
            return (f"{what}: matches, but no alert carried it: "
                    f"{NO_ALERT_WORDS.get(code, 'see below')}.")
    raise AssertionError(e.verdict)  # pragma: no cover - every verdict is handled above
