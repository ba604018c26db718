"""Bad-input corpus, feeds through the CLI as a process: one error line, nothing stored."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.feeds import entry, rss

CYRILLIC = "Новости дня: выборы"
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 2 else "") + ";") * 10}">\n'
        for n in range(2, 10)
    )
    + "]>\n" + rss(entry("&lol9;", "laugh"))
)


# --- the CLI: one line, no traceback -----------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        pytest.param(rss(entry(CYRILLIC, "c")).encode("cp1251"), "byte offset 60",
                     id="cli-undeclared-windows-1251"),
        pytest.param(LAUGHS.encode(), "entity 'lol'", id="cli-billion-laughs"),
    ],
)
def test_the_cli_prints_one_error_line_for_a_bad_feed(tmp_path, document, fragment):
    path = tmp_path / "bad.rss"
    path.write_bytes(document)
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
           "DIGEST_VAR_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin", "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "digest.cli", "ingest", "feed", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
