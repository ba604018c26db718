"""One settings object, passed explicitly below the edges.

The edges (the CLI, the web app's factory and request dependencies, the demo's entry point,
and ``workers/``) read the environment's settings once and pass them down. Every other module
of ``digest/`` takes a ``Settings`` argument: it never reaches for the cached global, builds
its own from the environment, or reads ``os.environ``. Checked on the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

DIGEST = ROOT / "digest"
# Where settings may be read from the environment (paths relative to digest/).
EDGES = ("cli/", "web/app.py", "web/deps.py", "devtools/demo.py", "settings.py")
MIGRATIONS = "migrations/"  # Alembic's scripts: handed their URL by digest.db.upgrade


def below_the_edges() -> list[Path]:
    paths = []
    for path in sorted(DIGEST.rglob("*.py")):
        name = path.relative_to(DIGEST).as_posix()
        if not name.startswith((*EDGES, MIGRATIONS)):
            paths.append(path)
    return paths


def global_settings_reads(source: str) -> list[str]:
    """Each place ``source`` reads settings other than from an argument, as "line: what"."""
    found = []
    # Names bound in this module to the global reader, the class or os.environ.
    readers = {"get_settings": set(), "Settings": set(), "os": set(), "environ": set()}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "digest.settings":
            for alias in node.names:
                if alias.name in ("get_settings", "reset_settings_cache"):
                    found.append(f"{node.lineno}: imports digest.settings.{alias.name}")
                if alias.name == "Settings":
                    readers["Settings"].add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ("environ", "getenv", "putenv"):
                    found.append(f"{node.lineno}: imports os.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "digest.settings":
                    found.append(f"{node.lineno}: imports the digest.settings module")
                if alias.name == "os":
                    readers["os"].add(alias.asname or "os")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in readers["os"]
                and node.attr in ("environ", "getenv", "putenv", "unsetenv")):
            found.append(f"{node.lineno}: reads os.{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in readers["Settings"]):
            found.append(f"{node.lineno}: builds Settings(...) from the environment")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_library_modules_below_the_edges_never_read_the_global_settings():
    modules = below_the_edges()
    assert len(modules) > 50  # the scan sees the tree, not an empty folder
    offenders = {
        path.relative_to(ROOT).as_posix(): reads
        for path in modules
        if (reads := global_settings_reads(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, (
        "below the edges, settings arrive as an argument (see docs/architecture.md, "
        f"'Settings'): {offenders}")


@pytest.mark.parametrize("source", [
    "from digest.settings import get_settings\n\ndef f():\n    return get_settings().smtp_host\n",
    "def f():\n    from digest.settings import get_settings as g\n    return g()\n",
    "import digest.settings\n\ndef f():\n    return digest.settings.get_settings()\n",
    "from digest.settings import Settings\n\ndef f():\n    return Settings()\n",
    "import os\n\ndef f():\n    return os.environ['DIGEST_SMTP_HOST']\n",
    "from os import getenv\n\ndef f():\n    return getenv('DIGEST_SMTP_HOST')\n",
], ids=["get_settings", "renamed-in-a-function", "module-attribute", "Settings()",
        "os.environ", "getenv"])
def test_the_scan_finds_every_way_of_reading_the_environments_settings(source):
    assert global_settings_reads(source)


def test_the_scan_lets_a_settings_argument_through():
    source = ("from digest.settings import Settings\n\n"
              "def f(settings: Settings) -> str:\n    return settings.smtp_host\n")
    assert global_settings_reads(source) == []
