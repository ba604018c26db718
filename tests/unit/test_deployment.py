"""docker-compose.yml, the Dockerfile and README's settings table, checked against the code.

No Docker engine runs where the tests run, so these files are read and compared with what
the code defines (Settings fields, CLI commands, the Celery app, package data); otherwise
they would drift from it silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from celery import Celery
from celery.app.utils import find_app
from celery.bin.celery import celery as celery_cli
from click.testing import CliRunner as ClickRunner
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from digest import cli
from digest.settings import Settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"

STACK = {"postgres", "redis", "web", "worker", "beat", "mailpit", "migrate"}
PREFIX = "DIGEST_"
# What the code reads at run time, relative to the project root (the image's WORKDIR mirrors
# it: `pip install -e .` there, and the code finds these next to its own modules).
RUNTIME_PATHS = [
    "pyproject.toml",
    "templates",
    "digest",
    "workers",
    "digest/data/demo-newsroom.txt",
    "digest/data/regions.json",
    "digest/web/templates",
    "digest/web/static",
    "digest/migrations",
]
# Never needed in the image; left out when a directory is expanded into its files.
JUNK_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}


# --- settings ----------------------------------------------------------------------------------

def settings_variables() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def is_settings_variable(name: str) -> bool:
    # pydantic-settings matches DIGEST_* case-insensitively (case_sensitive=False).
    return name.upper().startswith(PREFIX) and name[len(PREFIX):].lower() in Settings.model_fields


def build_settings(variables: dict[str, str], monkeypatch) -> Settings:
    """Settings from these DIGEST_* values only: no process environment, no .env file."""
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    values = {k[len(PREFIX):].lower(): v for k, v in variables.items()}
    return Settings(_env_file=None, **values)


# --- docker-compose.yml ----------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                            r"|\$(?P<bare>\w+)")


# What an operator must set for ${VAR:?message}: values that pass the app's own checks.
REQUIRED_VALUES = {
    "DIGEST_SECRET_KEY": "an-operator-chosen-random-secret-key-0123456789",
    "DIGEST_API_TOKEN": "an-operator-chosen-api-token-0123456789",
}


def required_variables(value: str) -> list[str]:
    """The variables ${VAR:?message} (or ${VAR?message}) makes compose refuse to start without."""
    return [m.group("name") for m in _INTERPOLATION.finditer(value)
            if m.group("op") in (":?", "?")]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default; a
    required ${VAR:?message} gets the value an operator would set (REQUIRED_VALUES)."""
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        op, arg = m.group("op"), m.group("arg")
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            assert m.group("name") in REQUIRED_VALUES, (
                f"{m.group(0)} requires a variable the tests do not know a value for; "
                "add it to REQUIRED_VALUES")
            return REQUIRED_VALUES[m.group("name")]
        return ""  # unset ${VAR}, $VAR or ${VAR:+x}: compose substitutes an empty string

    return _INTERPOLATION.sub(one, value)


def load_compose(text: str | None = None) -> dict:
    data = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "docker-compose.yml must be a mapping with a `services:` mapping")
    return data


def service_env(service: dict) -> dict[str, str | None]:
    """A service's environment (mapping or KEY=VALUE list form), interpolated."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): None if v is None else interpolate(str(v)) for k, v in env.items()}


def app_services(compose: dict) -> dict[str, dict]:
    """The services built from this repository (they run the project's code)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def argv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value))
    return [interpolate(str(part)) for part in value]


def service_argv(service: dict) -> list[str]:
    """What a service runs: its entrypoint and command, else the image's."""
    image = dockerfile_exec()
    entrypoint = argv(service["entrypoint"]) if "entrypoint" in service else image["ENTRYPOINT"]
    command = argv(service["command"]) if "command" in service else image["CMD"]
    return entrypoint + command


def option_value(args: list[str], *names: str) -> str | None:
    """The value of an option given as `-Q x`, `-Qx`, `--queues x` or `--queues=x`."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name):]
    return None


def published_ports(service: dict) -> list[tuple[int | None, int]]:
    """(host port, container port) pairs, from short ("8000:8000") or long syntax."""
    pairs = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            pairs.append((int(published) if published else None, int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        host = parts[-2] if len(parts) >= 2 else None
        pairs.append((int(host) if host else None, int(parts[-1])))
    return pairs


# --- Dockerfile --------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instruction, _, rest = full.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    if args.startswith("["):
        return [str(a) for a in json.loads(args)]
    return shlex.split(args)


def dockerfile_exec(text: str | None = None) -> dict[str, list[str]]:
    """The final stage's ENTRYPOINT and CMD as argv lists (empty when not set)."""
    found = {"ENTRYPOINT": [], "CMD": []}
    for instruction, args in dockerfile_instructions(text or DOCKERFILE.read_text()):
        if instruction == "FROM":
            found = {"ENTRYPOINT": [], "CMD": []}
        elif instruction in found:
            found[instruction] = exec_form(args)
    return found


def dockerfile_env(text: str | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions(text or DOCKERFILE.read_text()):
        if instruction != "ENV":
            continue
        parts = shlex.split(args)
        if len(parts) >= 2 and "=" not in parts[0]:  # legacy `ENV KEY value`
            env[parts[0]] = " ".join(parts[1:])
        else:
            env.update(p.split("=", 1) for p in parts)
    return env


def dockerfile_copies(text: str) -> list[tuple[list[str], str, str]]:
    """(sources, destination, WORKDIR at that point) for each COPY/ADD from the context."""
    workdir = PurePosixPath("/")
    copies = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "FROM":
            workdir = PurePosixPath("/")
        elif instruction == "WORKDIR":
            workdir = workdir / args.strip()
        elif instruction in ("COPY", "ADD"):
            flags = re.match(r"(?:--\S+\s+)*", args).group(0)
            if "--from" in flags:
                continue  # from another stage or image, not from the repository
            paths = exec_form(args[len(flags):])
            copies.append((paths[:-1], paths[-1], str(workdir)))
    return copies


def _ignore_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    pattern = str(PurePosixPath(pattern)) if pattern else pattern
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
            continue
        ch = pattern[i]
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(out + r"\Z")


def dockerignored(rel: str, ignore_text: str) -> bool:
    """Whether .dockerignore keeps `rel` out of the build context (last matching rule wins)."""
    ignored = False
    parents = [str(p) for p in reversed(PurePosixPath(rel).parents) if str(p) != "."] + [rel]
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line[1:] if negate else line)
        # A rule matching a directory covers everything under it.
        if any(regex.match(p) for p in parents):
            ignored = not negate
    return ignored


def repo_files(rel: str, root: Path = ROOT, ignore_text: str = "") -> list[str]:
    """`rel` itself if a file, else every file under it, less junk (__pycache__) and what
    .dockerignore leaves out (ignored folders are not walked: `COPY .` next to .venv)."""
    path = root / rel
    if path.is_file():
        return [] if dockerignored(rel, ignore_text) else [rel]
    files = []
    for folder, dirs, names in os.walk(path):
        here = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if d not in JUNK_PARTS
                   and not dockerignored(str(here / d), ignore_text)]
        files += [str(here / n) for n in names if not dockerignored(str(here / n), ignore_text)]
    return sorted(files)


def image_files(dockerfile_text: str, ignore_text: str = "", root: Path = ROOT) -> dict[str, str]:
    """Repository file -> its path in the image, for everything the Dockerfile copies."""
    placed: dict[str, str] = {}
    for sources, dest, workdir in dockerfile_copies(dockerfile_text):
        dest_path = PurePosixPath(workdir) / dest
        dest_is_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
        for source in sources:
            source_rel = str(PurePosixPath(source.lstrip("/")))
            matches = sorted(root.glob(source_rel)) if any(c in source_rel for c in "*?[") \
                else [root / source_rel]
            for match in matches:
                match_rel = "." if match == root else str(match.relative_to(root))
                for rel in repo_files(match_rel, root, ignore_text) if match.exists() else []:
                    if match.is_dir():  # a directory's contents go into the destination
                        inner = rel if match_rel == "." else str(
                            PurePosixPath(rel).relative_to(match_rel))
                        placed[rel] = str(dest_path / inner)
                    else:
                        placed[rel] = str(dest_path / match.name if dest_is_dir else dest_path)
    return placed


def image_workdir(dockerfile_text: str) -> PurePosixPath:
    workdir = PurePosixPath("/")
    for instruction, args in dockerfile_instructions(dockerfile_text):
        if instruction == "FROM":
            workdir = PurePosixPath("/")
        elif instruction == "WORKDIR":
            workdir = workdir / args.strip()
    return workdir


def runtime_files() -> list[str]:
    """Every repository file the image needs, including pyproject's package data and readme."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = list(RUNTIME_PATHS)
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.append(readme)  # the package build reads it
    for package, globs in pyproject["tool"]["setuptools"].get("package-data", {}).items():
        for pattern in globs:
            needed += [str(p.relative_to(ROOT)) for p in (ROOT / package).glob(pattern)
                       if p.is_file()]
    files: list[str] = []
    for rel in needed:
        assert (ROOT / rel).exists(), f"{rel} is listed as needed at run time but does not exist"
        files += repo_files(rel)
    return sorted(set(files))


def missing_from_image(dockerfile_text: str, ignore_text: str, needed: list[str]) -> list[str]:
    placed = image_files(dockerfile_text, ignore_text)
    workdir = image_workdir(dockerfile_text)
    return [f"{rel} (image has it at {placed[rel]})" if rel in placed else rel
            for rel in needed if placed.get(rel) != str(workdir / rel)]


# --- README ------------------------------------------------------------------------------------

_PIPE = re.compile(r"(?<!\\)\|")
_VARIABLE_CELL = re.compile(r"`(DIGEST_[A-Z0-9_]+)`")


def readme_settings_rows(text: str) -> list[list[str]]:
    """The variables named by each row of the table under the README's settings heading."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"#+\s.*\bsettings\b", line, re.IGNORECASE)), None)
    assert start is not None, "README.md has no 'Settings' heading"
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if rows:
                break  # the table ended
            continue
        first = _PIPE.split(line.strip().strip("|"))[0].strip()
        if first == "variable" or set(first) <= set("-: "):
            continue  # header and separator
        names = []
        for part in first.split(" / "):
            m = _VARIABLE_CELL.fullmatch(part.strip())
            assert m, (f"README settings row {line!r}: first column must be `DIGEST_NAME`, "
                       f"several separated by ' / '; got {part.strip()!r}")
            names.append(m.group(1))
        rows.append(names)
    assert rows, "README.md's Settings section has no table rows"
    return rows


# --- 1. docker-compose.yml: YAML, services, settings -------------------------------------------

def test_compose_file_parses_as_yaml_with_services():
    assert load_compose()["services"]


def test_compose_has_every_service_of_the_stack():
    services = set(load_compose()["services"])
    assert services >= STACK, f"docker-compose.yml lacks services {sorted(STACK - services)}"


def test_compose_depends_on_names_existing_services():
    compose = load_compose()
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on") or []:
            assert dependency in compose["services"], (
                f"service {name} depends on {dependency!r}, which is not a service")


def test_every_digest_variable_compose_and_dockerfile_set_is_a_settings_field():
    set_where = {k: f"service {name}" for name, s in load_compose()["services"].items()
                 for k in service_env(s)}
    set_where |= {k: "Dockerfile ENV" for k in dockerfile_env()}
    unknown = sorted(f"{k} ({where})" for k, where in set_where.items()
                     if k.upper().startswith(PREFIX) and not is_settings_variable(k))
    assert not unknown, (f"not fields of digest.settings.Settings, so silently ignored: {unknown}; "
                         "rename them or add the setting")


def test_compose_values_build_valid_settings_for_each_app_service(monkeypatch):
    services = app_services(load_compose())
    assert {"web", "worker", "beat", "migrate"} <= set(services)
    for name, service in services.items():
        variables = {k: v for k, v in (dockerfile_env() | service_env(service)).items()
                     if k.upper().startswith(PREFIX) and v is not None}
        try:
            build_settings(variables, monkeypatch)
        except Exception as exc:  # pydantic's ValidationError names the field and the value
            pytest.fail(f"service {name}: its DIGEST_* values are not valid Settings: {exc}")


def test_compose_requires_the_secret_key_and_api_token_with_no_default():
    for name, service in app_services(load_compose()).items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"service {name}: use the mapping form of environment"
        for variable in ("DIGEST_SECRET_KEY", "DIGEST_API_TOKEN"):
            raw = str(env.get(variable, ""))
            assert required_variables(raw) == [variable] and raw.startswith("${"), (
                f"service {name}: {variable} must be ${{{variable}:?message}} (required, no "
                f"default); it is {raw!r}")


def test_required_variable_parser_tells_required_from_defaulted():
    assert required_variables("${DIGEST_SECRET_KEY:?set it}") == ["DIGEST_SECRET_KEY"]
    assert required_variables("${DIGEST_SECRET_KEY:-change-me}") == []
    assert interpolate("${DIGEST_API_TOKEN:?set it}") == REQUIRED_VALUES["DIGEST_API_TOKEN"]


def test_compose_secrets_pass_the_apps_start_up_check(monkeypatch):
    from digest.settings import check_secrets

    for _name, service in app_services(load_compose()).items():
        variables = {k: v for k, v in (dockerfile_env() | service_env(service)).items()
                     if is_settings_variable(k) and v is not None}
        check_secrets(build_settings(variables, monkeypatch))  # raises ConfigError if refused


def test_app_services_share_one_digest_configuration():
    # The worker signs the links the web app verifies, both use one database and one queue.
    services = app_services(load_compose())
    envs = {name: {k: v for k, v in service_env(s).items() if k.upper().startswith(PREFIX)}
            for name, s in services.items()}
    web = envs["web"]
    for name, env in envs.items():
        assert env == web, f"service {name} has other DIGEST_* values than web: {env} != {web}"


# --- 2. commands: the digest CLI and Celery ----------------------------------------------------

def all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every service that runs something, and the image's own command."""
    commands = [("Dockerfile", dockerfile_exec()["ENTRYPOINT"] + dockerfile_exec()["CMD"])]
    for name, service in load_compose()["services"].items():
        if "build" in service or "command" in service or "entrypoint" in service:
            commands.append((f"service {name}", service_argv(service)))
    return [(where, args) for where, args in commands if args]


def parse_digest_command(args: list[str]) -> dict:
    """Parse (not run) `digest ARGS` with the CLI's click command: option values are checked."""
    command = typer.main.get_command(cli.app)  # typer's own (vendored) click classes
    ctx = command.make_context("digest", list(args))
    while hasattr(command, "resolve_command"):  # a group: descend into the subcommand
        rest = [*ctx._protected_args, *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx.params


def test_digest_commands_are_real_cli_commands():
    commands = [(where, args) for where, args in all_commands() if args[0] == "digest"]
    assert {w for w, _ in commands} >= {"service web", "service migrate"}, (
        f"expected `digest ...` commands for web and migrate, found {commands}")
    for where, args in commands:
        result = CliRunner().invoke(cli.app, [*args[1:], "--help"])
        assert result.exit_code == 0, (
            f"{where}: `{shlex.join(args)}` is not a digest CLI command: {result.output}")
        try:
            parse_digest_command(args[1:])
        except Exception as exc:  # a usage error: bad option value, missing argument
            message = exc.format_message() if hasattr(exc, "format_message") else exc
            pytest.fail(f"{where}: `{shlex.join(args)}`: {message}")


def celery_commands() -> dict[str, list[str]]:
    return {where: args for where, args in all_commands() if args[0] == "celery"}


def test_celery_commands_load_the_celery_app_with_valid_options():
    commands = celery_commands()
    assert {"service worker", "service beat"} <= set(commands), commands
    for where, args in commands.items():
        target = option_value(args, "-A", "--app")
        assert target, f"{where}: `{shlex.join(args)}` names no app with -A"
        try:
            found = find_app(target)  # what `celery -A` itself does
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{where}: `celery -A {target}` cannot load a Celery app: {exc!r}")
        assert isinstance(found, Celery), f"{where}: {target} is not a Celery app"
        before = dict(os.environ)
        try:  # celery's own CLI checks the app and every option name
            result = ClickRunner().invoke(celery_cli, [*args[1:], "--help"])
        finally:
            os.environ.clear()
            os.environ.update(before)
        assert result.exit_code == 0, f"{where}: `{shlex.join(args)}`: {result.output}"


def subcommand(args: list[str]) -> str | None:
    """The celery subcommand: the first word that is not an option or an option's value."""
    skip = False
    for arg in args[1:]:
        if skip:
            skip = False
        elif arg in ("-A", "--app", "-b", "--broker", "--result-backend", "--loader",
                     "--config", "--workdir"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def test_worker_consumes_the_queue_the_tasks_go_to():
    service = load_compose()["services"]["worker"]
    args = celery_commands()["service worker"]
    assert subcommand(args) == "worker", f"the worker service runs `{shlex.join(args)}`"
    queue = service_env(service).get("DIGEST_TASK_QUEUE") or Settings.model_fields[
        "task_queue"].default
    queues = option_value(args, "-Q", "--queues")
    assert queues is not None, "the worker passes no -Q; pass the tasks' queue explicitly"
    assert queues.split(",") == [queue], (
        f"the worker listens on -Q {queues} but the tasks go to {queue!r} (task_queue)")


def test_beat_service_runs_celery_beat_and_is_the_only_one():
    args = celery_commands()["service beat"]
    assert subcommand(args) == "beat", f"the beat service runs `{shlex.join(args)}`"
    beats = [w for w, a in celery_commands().items() if subcommand(a) == "beat"]
    assert beats == ["service beat"], f"exactly one beat must run; found {beats}"


# --- 3. the Dockerfile copies what the app needs -----------------------------------------------

def test_dockerfile_copy_sources_exist_in_the_repo():
    for sources, dest, _ in dockerfile_copies(DOCKERFILE.read_text()):
        for source in sources:
            rel = source.lstrip("/")
            found = list(ROOT.glob(rel)) if any(c in rel for c in "*?[") else (ROOT / rel).exists()
            assert found, f"Dockerfile copies {source} to {dest}, but the repo has no {rel}"


def test_image_has_every_runtime_file_where_the_code_looks():
    ignore = DOCKERIGNORE.read_text() if DOCKERIGNORE.exists() else ""
    missing = missing_from_image(DOCKERFILE.read_text(), ignore, runtime_files())
    workdir = image_workdir(DOCKERFILE.read_text())
    assert not missing, (f"not in the image at {workdir}/<same path> (COPY or .dockerignore): "
                         f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")


def test_image_templates_dir_is_where_the_templates_are_copied():
    env = dockerfile_env()
    workdir = image_workdir(DOCKERFILE.read_text())
    placed = image_files(DOCKERFILE.read_text())
    templates_dir = env.get("DIGEST_TEMPLATES_DIR", str(workdir / "templates"))
    sample = repo_files("templates")[0]
    assert placed[sample] == str(PurePosixPath(templates_dir) / PurePosixPath(sample).relative_to(
        "templates")), f"DIGEST_TEMPLATES_DIR={templates_dir} but {sample} is at {placed[sample]}"


def test_image_installs_the_web_extra_the_web_service_needs():
    installs = [args for instruction, args in dockerfile_instructions(DOCKERFILE.read_text())
                if instruction == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile never runs pip install"
    extras = re.findall(r"\.\[([^\]]*)\]", " ".join(installs))
    assert any("web" in e.split(",") for e in extras), (
        f"`digest web` needs the [web] extra; the Dockerfile installs {installs}")


def test_copy_check_reports_a_missing_package_and_an_ignored_file():
    # The helpers above must be able to see drift, not only bless the current files.
    good = DOCKERFILE.read_text()
    needed = runtime_files()
    assert missing_from_image(good, "", needed) == []
    without_workers = "\n".join(line for line in good.splitlines() if "workers" not in line)
    assert any(m.startswith("workers/") for m in missing_from_image(without_workers, "", needed))
    flat = good.replace("COPY digest ./digest", "COPY digest ./")
    assert any(m.startswith("digest/") for m in missing_from_image(flat, "", needed))
    everything = "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\n"
    local = ".git\n.venv\n"  # not walked, and never wanted in an image
    assert missing_from_image(everything, local + "**/__pycache__\n", needed) == []
    missing = missing_from_image(everything, local + "digest/data\n*.md\n", needed)
    assert "digest/data/regions.json" in missing and "README.md" in missing
    assert missing_from_image(everything, local + "*.md\n!README.md\n", needed) == []


# --- 4. README's settings table ----------------------------------------------------------------

def test_readme_settings_table_lists_every_settings_field():
    listed = {name for row in readme_settings_rows(README.read_text()) for name in row}
    missing = sorted(settings_variables() - listed)
    assert not missing, f"README.md's settings table lacks rows for {missing}"


def test_readme_settings_table_lists_only_settings_fields():
    listed = {name for row in readme_settings_rows(README.read_text()) for name in row}
    stale = sorted(listed - settings_variables())
    assert not stale, f"README.md's settings table lists variables Settings does not have: {stale}"


def test_readme_settings_table_parser_reads_rows_with_several_variables():
    text = ("## Settings\n\nintro\n\n| variable | default | meaning |\n|---|---|---|\n"
            "| `DIGEST_A` | `x \\| y` | one |\n| `DIGEST_B` / `DIGEST_C` | empty | two |\n\n"
            "## Next\n| `DIGEST_D` | | |\n")
    assert readme_settings_rows(text) == [["DIGEST_A"], ["DIGEST_B", "DIGEST_C"]]
    with pytest.raises(AssertionError, match="first column"):
        readme_settings_rows(text.replace("`DIGEST_A`", "DIGEST_A"))


# --- 5. ports and hosts line up ----------------------------------------------------------------

def test_web_listens_on_all_interfaces_at_its_published_port():
    service = load_compose()["services"]["web"]
    params = parse_digest_command(service_argv(service)[1:])
    assert params["host"] in ("0.0.0.0", "::"), (
        f"web listens on {params['host']}; inside a container use --host 0.0.0.0")
    targets = [container for _, container in published_ports(service)]
    assert params["port"] in targets, (
        f"web listens on port {params['port']} but publishes container ports {targets}")


def test_public_base_url_uses_the_published_web_port():
    compose = load_compose()
    published = [host for host, _ in published_ports(compose["services"]["web"])]
    url = urlsplit(service_env(compose["services"]["web"])["DIGEST_PUBLIC_BASE_URL"])
    port = url.port or {"http": 80, "https": 443}[url.scheme]
    if url.hostname in ("localhost", "127.0.0.1"):  # links opened on the machine running compose
        assert port in published, f"DIGEST_PUBLIC_BASE_URL port {port}, published {published}"


def test_smtp_settings_point_at_mailpit_smtp_port():
    compose = load_compose()
    assert "mailpit" in compose["services"]["mailpit"]["image"]
    for name, service in app_services(compose).items():
        env = service_env(service)
        assert env.get("DIGEST_SMTP_HOST") == "mailpit", f"service {name}: {env}"
        assert env.get("DIGEST_SMTP_PORT") == "1025", (
            f"service {name}: DIGEST_SMTP_PORT={env.get('DIGEST_SMTP_PORT')}, "
            "Mailpit's SMTP port is 1025")


def test_database_url_points_at_the_postgres_service_with_its_credentials():
    compose = load_compose()
    postgres = service_env(compose["services"]["postgres"])
    for name, service in app_services(compose).items():
        url = make_url(service_env(service)["DIGEST_DATABASE_URL"])
        assert url.get_backend_name() == "postgresql", f"service {name}: {url}"
        url.get_dialect()  # the driver named in the URL exists (psycopg)
        assert url.host == "postgres" and url.port in (None, 5432), f"service {name}: {url}"
        assert (url.username, url.password, url.database) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
            postgres.get("POSTGRES_DB") or postgres["POSTGRES_USER"]), (
            f"service {name}: user {url.username!r}, database {url.database!r} or the password "
            "in DIGEST_DATABASE_URL differ from the postgres service's POSTGRES_*")


def test_broker_url_points_at_the_redis_service():
    compose = load_compose()
    assert "redis" in compose["services"]["redis"]["image"]
    for name, service in app_services(compose).items():
        url = urlsplit(service_env(service)["DIGEST_BROKER_URL"])
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379), (
            f"service {name}: DIGEST_BROKER_URL={url.geturl()}")
