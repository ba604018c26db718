"""How the bounce reader does on real bounces: flufl.bounce's corpus (GNU Mailman's, shipped
in its source distribution's tests/data) and tests/data/bounces.

    python bench/bounces.py [--corpus DIR]...

Without --corpus, the source distribution of the installed flufl.bounce is fetched with pip
into a temporary folder. Prints messages read, the share where an address was found (the
RFC 3464 parser alone, flufl.bounce alone, both), the share classified hard, and every hard
verdict whose text speaks of a sender, a block list or policy (there should be none).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from digest.bounces.parse import parse_report
from digest.bounces.text import _flufl_addresses
from digest.errors import BounceError
from digest.models import Fault

ROOT = Path(__file__).resolve().parent.parent
SUSPECT = re.compile(r"sender|black ?list|block ?list|spam|policy|reputation|dmarc|spf", re.I)


def fetch_corpus(into: Path) -> Path:
    wanted = f"flufl.bounce=={version('flufl.bounce')}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", wanted, "-d", str(into)], check=True)
    archive = next(into.glob("flufl*bounce-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return next(into.glob("flufl*bounce-*/tests/data"))


def messages(folders: list[Path]):
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            wanted = path.suffix in (".txt", ".eml", "") and path.name != "__init__.py"
            if path.is_file() and wanted:
                yield path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.corpus or [fetch_corpus(Path(tmp))]
        folders.append(ROOT / "tests" / "data" / "bounces")
        read = ours_dsn = by_flufl = either = hard = errors = 0
        suspects = []
        for path in messages(folders):
            raw = path.read_bytes()
            read += 1
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            temporary, permanent = _flufl_addresses(msg)
            flufl_found = bool(temporary or permanent)
            try:
                report = parse_report(raw)
            except BounceError:
                report, errors = None, errors + 1
            found = bool(report and any(r.final_recipient for r in report.recipients))
            ours_dsn += found and report.source == "rfc3464"
            by_flufl += flufl_found
            either += found or flufl_found
            for r in report.recipients if report else []:
                if r.kind is Fault.hard:
                    hard += 1
                    if SUSPECT.search(r.diagnostic):
                        suspects.append(f"{path.name}: {r.status} {r.diagnostic[:120]}")
    share = (lambda n: f"{100 * n / read:.1f} %") if read else (lambda n: "-")
    print(f"cores: {os.cpu_count()}")
    print(f"messages read: {read} ({errors} unreadable)")
    print(f"address found: RFC 3464 parser {share(ours_dsn)}, flufl.bounce {share(by_flufl)}, "
          f"both together (our reader) {share(either)}")
    print(f"recipients classified hard: {hard} ({share(hard)} of messages)")
    print(f"hard verdicts whose text says sender/blacklist/policy: {len(suspects)}")
    for line in suspects:
        print(f"  {line}")


if __name__ == "__main__":
    main()
