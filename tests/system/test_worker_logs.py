"""A real worker's log lines (JSON, with the task, run and delivery ids) and its task events
(what Flower reads), over Redis."""

from __future__ import annotations

import json
import threading
import time

from tests.system.test_workers import (  # noqa: F401  (fixtures)
    _finished,
    _tick_at_t0,
    _wait_until,
    data,
    sink,
    worker,
)


def _json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_workers_log_is_json_and_every_line_of_a_send_names_task_run_and_delivery(
        worker, sink, data):
    sink.script("balkans@example.org", "550 5.1.1 No such user here")
    _tick_at_t0()
    rows = _wait_until(data, _finished)
    failed = next(d for d in rows if d.email == "balkans@example.org")
    deadline = time.monotonic() + 20
    while True:
        lines = _json_lines(worker["log"].read_text())
        refused = [line for line in lines if line.get("event") == "delivery refused"
                   and line.get("delivery_id") == failed.id]
        # The batch's line comes once its outcomes are committed, a moment after the rows.
        batch = [entry for entry in lines if entry.get("event") == "batch sent"
                 and entry.get("run_id") == failed.run_id]
        if (refused and batch) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert refused, worker["log"].read_text()[-3000:]
    (line,) = refused
    assert line["run_id"] == failed.run_id and line["smtp_code"] == 550
    assert line["task"] == "digest.deliver_batch" and line["task_id"]
    # Celery's own lines go through the same formatter.
    assert any("ready." in entry.get("event", "") for entry in lines)
    batch = [entry for entry in lines if entry.get("event") == "batch sent"
             and entry.get("run_id") == failed.run_id]
    assert batch and all(entry["task_id"] for entry in batch)


def test_the_worker_sends_task_events_a_monitor_receives(worker, sink, data):
    from workers.celery_app import app

    seen: dict[str, set[str]] = {"task-sent": set(), "task-succeeded": set()}
    ready = threading.Event()

    def listen():
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={
                name: (lambda event, name=name: seen[name].add(event["uuid"])) for name in seen})
            ready.set()
            try:
                receiver.capture(limit=None, timeout=15, wakeup=False)
            except TimeoutError:
                pass
            except OSError:
                pass

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's queue is bound
    from tests.factories import T0
    from workers.tasks import tick

    task_id = tick.delay(now=T0.isoformat()).id
    deadline = time.monotonic() + 30
    while task_id not in seen["task-succeeded"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert task_id in seen["task-sent"]
    assert task_id in seen["task-succeeded"]
