"""An install like the image's: a fresh venv with the [web] extra alone serves the pages, the
build prints no setuptools deprecation warning, and without the extra `digest web` says what
to install in one line. A plain install (no extra, as workers, the beat and the CLI use)
ingests, alerts, sends a weekly digest and runs a worker's tasks.

The venv is made from what the Dockerfile copies (its COPY lines, read as
tests/unit/test_deployment.py reads them) with the Dockerfile's own `pip install` command, so
neither the test nor dev extras (playwright brings greenlet) can hide a missing dependency.
Packages come from pip's cache or the registry: about a minute.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.helpers import free_port
from tests.unit.test_deployment import DOCKERFILE, dockerfile_instructions, image_files

SECRET = "install-test-secret-key-0123456789abcdef"


def dockerfile_pip_install() -> list[str]:
    """The Dockerfile's `pip install ...` as argv, verbose so the build backend's warnings show."""
    runs = [args for instruction, args in dockerfile_instructions(DOCKERFILE.read_text())
            if instruction == "RUN" and "pip install" in args]
    assert len(runs) == 1, f"expected one pip install in the Dockerfile: {runs}"
    words = shlex.split(runs[0])
    words = words[words.index("pip"):]
    # Let pip use its cache here: the image leaves it out to stay small, not to change the install.
    return [w for w in words if w != "--no-cache-dir"] + ["-v"]


@pytest.fixture(scope="module")
def web_install(tmp_path_factory) -> tuple[Path, Path, str]:
    """(project copy, venv, pip's output) for a venv made as the image is."""
    base = tmp_path_factory.mktemp("install")
    project = base / "app"
    for rel, in_image in image_files(DOCKERFILE.read_text()).items():
        target = project / Path(in_image).relative_to("/app")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", *dockerfile_pip_install()]
    result = subprocess.run(pip, cwd=project, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{shlex.join(pip)}` failed:\n{output[-4000:]}"
    return project, venv, output


def test_a_venv_with_only_the_web_extra_serves_the_subscribe_page(web_install, tmp_path):
    project, venv, _ = web_install
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env |= {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
            "DIGEST_SECRET_KEY": SECRET, "DIGEST_TEMPLATES_DIR": str(project / "templates"),
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    log = tmp_path / "web.log"
    proc = subprocess.Popen([str(venv / "bin" / "digest"), "web", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"digest web exited:\n{log.read_text()[-3000:]}"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/subscribe", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        assert response.status_code == 200, response.text[:500]
        assert "<form" in response.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_installing_prints_no_setuptools_deprecation_warning(web_install):
    _, _, output = web_install
    assert "Building editable for digest" in output or "digest" in output  # the build ran
    for needle in ("project.license", "SetuptoolsDeprecationWarning", "License classifiers"):
        assert needle not in output, next(line for line in output.splitlines() if needle in line)


# Simulates an install without the [web] extra: these imports fail as they would.
BLOCK_IMPORTS = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
sys.argv = ["digest", *{argv!r}]
from digest.cli import main
main()
"""


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "sqladmin", "greenlet"])
@pytest.mark.parametrize("argv", [["web", "--port", "0"], ["hash-password", "--password",
                                                           "a-long-enough-password"]])
def test_without_the_web_extra_the_web_commands_name_the_extra_in_one_line(module, argv,
                                                                            tmp_path):
    env = {**os.environ, "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
           "DIGEST_SECRET_KEY": SECRET}
    result = subprocess.run([sys.executable, "-c", BLOCK_IMPORTS.format(module=module, argv=argv)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and f"{module} is not installed" in lines[0]
    assert "pip install 'digest[web]'" in lines[0]


# --- A plain install: `pip install digest`, no extra, as the README promises workers, the beat
# and the CLI need. Nothing on their path may import a package only the web extra brings.


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory) -> tuple[Path, Path]:
    """(project copy, venv) with the package installed from the checkout without extras."""
    base = tmp_path_factory.mktemp("plain")
    project = base / "app"
    for rel, in_image in image_files(DOCKERFILE.read_text()).items():
        target = project / Path(in_image).relative_to("/app")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(project)]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"`{shlex.join(pip)}` failed:\n{result.stderr[-4000:]}"
    return project, venv


def test_a_plain_install_ingests_alerts_sends_digests_and_runs_worker_tasks(plain_install,
                                                                            tmp_path):
    import json
    from datetime import UTC, datetime

    from digest.devtools import MailSink

    project, venv = plain_install
    python = str(venv / "bin" / "python")
    # Really without the extra: none of its packages is there to hide an import.
    for module in ("fastapi", "limits", "sqladmin", "uvicorn", "prometheus_client"):
        missing = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert missing.returncode != 0, f"{module} is installed in the plain venv"
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"title": "Police reform in Podgorica",
                                  "published_at": datetime.now(UTC).isoformat(),
                                  "themes": ["Policing"]}]), encoding="utf-8")
    with MailSink() as sink:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env |= {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
                "DIGEST_VAR_DIR": str(tmp_path / "var"), "DIGEST_SECRET_KEY": SECRET,
                "DIGEST_TEMPLATES_DIR": str(project / "templates"),
                "DIGEST_SMTP_HOST": sink.host, "DIGEST_SMTP_PORT": str(sink.port)}

        def run(*argv: str) -> subprocess.CompletedProcess:
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, done.stderr
            return done

        digest = str(venv / "bin" / "digest")
        run(digest, "db", "upgrade")
        run(digest, "taxonomy", "seed")
        run(digest, "subscribers", "add", "alert@example.org", "--frequency", "immediate",
            "--theme", "Policing")
        run(digest, "subscribers", "add", "weekly@example.org")
        ingested = run(digest, "ingest", "json", str(items))
        assert "1 new" in ingested.stdout
        [alert] = sink.wait_for(1, timeout=30)  # item_published, in-process: an alert
        assert alert.parsed()["To"] == "alert@example.org"
        run(digest, "send", "weekly", "--now")
        received = sink.wait_for(2, timeout=30)
        assert sorted(m.parsed()["To"] for m in received) == ["alert@example.org",
                                                             "weekly@example.org"]
        # A worker's task functions, called as a worker would (no broker: in-process).
        done = run(python, "-c", "from workers.tasks import retry_deferred, sweep; "
                                 "print(sweep(), retry_deferred())")
        assert "'recovered': 0" in done.stdout
        run(digest, "tick")
