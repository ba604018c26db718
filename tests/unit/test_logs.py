"""digest.logs: one format for every logger, ids bound by context; Celery's events on."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from digest.errors import ConfigError
from digest.logs import bind_ids, bound_ids, configure_logging, get_logger, unbind_ids
from digest.settings import Settings


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root():
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "digest"]:
        root.removeHandler(handler)


def test_off_a_terminal_every_logger_writes_json_lines_with_the_bound_ids(restore_root):
    out = io.StringIO()
    configure_logging("auto", stream=out)
    with bound_ids(run_id=7, delivery_id=42):
        get_logger("digest.delivery.send").info("batch sent", sent=3)
        logging.getLogger("some.library").warning("plain %s", "stdlib")
    get_logger("x").info("after")
    first, second, after = (json.loads(line) for line in out.getvalue().splitlines())
    assert first | {"timestamp": None} == {
        "event": "batch sent", "sent": 3, "run_id": 7, "delivery_id": 42, "level": "info",
        "logger": "digest.delivery.send", "timestamp": None}
    assert (second["event"], second["run_id"], second["delivery_id"]) == ("plain stdlib", 7, 42)
    assert "run_id" not in after  # bound for the block only


def test_on_a_terminal_lines_are_plain_text(restore_root):
    out = _Terminal()
    configure_logging("auto", stream=out)
    bind_ids(task_id="abc")
    try:
        logging.getLogger("celery").info("ready.")
    finally:
        unbind_ids("task_id")
    line = out.getvalue()
    assert "ready." in line and "task_id=abc" in line and not line.startswith("{")


def test_json_can_be_forced_on_a_terminal_and_configuring_twice_adds_no_second_handler(
        restore_root):
    out = _Terminal()
    configure_logging("text", stream=io.StringIO())
    configure_logging("json", stream=out)
    logging.getLogger("digest").warning("once")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["once"]


def test_an_unknown_log_format_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="DIGEST_LOG_FORMAT must be one of auto, json, text"):
        configure_logging("yaml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings(log_format="yaml")
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="LOUD")


def test_celery_sends_task_events_so_flower_can_watch():
    from workers.celery_app import app

    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is True
