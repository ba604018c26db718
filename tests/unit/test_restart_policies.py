"""Every documented deployment restarts a worker (and the beat, and the web app) that dies
(issue 15, defect 1): docker-compose.yml's restart policies and the systemd units in
docs/deploy/, read as files (no Docker engine or systemd runs where the tests run)."""

from __future__ import annotations

import configparser
import shlex

import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
UNITS = ROOT / "docs" / "deploy"
RESTARTING = {"always", "unless-stopped", "on-failure"}
ONE_SHOT = {"migrate"}  # runs once and exits 0; restarting it would loop


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    unit.read_string((UNITS / name).read_text())
    return unit


def test_every_long_running_compose_service_restarts_when_it_dies():
    services = compose_services()
    assert {"worker", "beat", "web"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"{name} runs once: no restart"
            continue
        assert service.get("restart") in RESTARTING, (
            f"compose service {name!r} has no restart policy: a process that dies stays dead")


def test_the_systemd_units_run_the_worker_the_beat_and_the_web_app_and_always_restart_them():
    expected = {"digest-worker@.service": ["celery", "worker"],
                "digest-beat.service": ["celery", "beat"],
                "digest-web.service": ["digest", "web"]}
    assert {p.name for p in UNITS.glob("*.service")} == set(expected)
    for name, words in expected.items():
        unit = read_unit(name)
        service = unit["Service"]
        assert service.get("Restart") == "always", f"{name}: Restart=always is needed"
        assert float(service.get("RestartSec", "0")) > 0, f"{name}: RestartSec avoids a spin"
        # systemd gives up after 5 failed starts in 10 s unless told not to.
        assert unit["Unit"].get("StartLimitIntervalSec") == "0", (
            f"{name}: StartLimitIntervalSec=0 in [Unit], or systemd stops restarting it")
        command = shlex.split(service["ExecStart"])
        assert command[0].endswith(f"/{words[0]}") and words[1] in command, (
            f"{name} runs {command}")
        if words[0] == "celery":
            assert command[command.index("-A") + 1] == "workers.celery_app"


def test_the_worker_unit_and_the_compose_worker_consume_the_same_queue():
    unit = shlex.split(read_unit("digest-worker@.service")["Service"]["ExecStart"])
    compose = compose_services()["worker"]["command"]
    assert unit[unit.index("-Q") + 1] == compose[compose.index("-Q") + 1]


def test_the_beat_sends_every_periodic_task_to_the_maintenance_queue():
    from digest.queue import maintenance_queue
    from digest.settings import get_settings
    from workers.celery_app import app

    queue = maintenance_queue(get_settings())
    assert queue != get_settings().task_queue
    for name, entry in app.conf.beat_schedule.items():
        assert entry.get("options", {}).get("queue") == queue, (
            f"the periodic task {name!r} would wait behind the deliveries")
