"""docker-compose.yml and scripts/docker/Dockerfile, checked without a Docker engine: the
compose file is valid by the Compose Specification's JSON Schema (a committed copy, see
tests/unit/data/compose-spec/README.md), and what they tell the image to do exists: the
command is a `nearline` CLI command and every NEARLINE_* variable is a setting that parses."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from nearline_rec.settings import iter_setting_docs, load_settings
from nearline_rec.tools.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SPEC = Path(__file__).parent / "data" / "compose-spec" / "compose-spec.json"
SCRIPT = "nearline"  # pyproject's [project.scripts]

# ${NAME}, ${NAME:-default}, ${NAME-default}: compose substitutes these before it validates
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def _interpolate(node: Any) -> Any:
    """The file as compose sees it with no variable set on the host (defaults applied)."""
    if isinstance(node, dict):
        return {k: _interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: m.group("default") or "", node)
    return node


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return _interpolate(doc)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the list form: ["NAME=value", ...]
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _our_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from this repository (the others run third-party images)."""
    return {name: s for name, s in doc["services"].items() if "build" in s}


def _dockerfiles(doc: dict[str, Any]) -> set[Path]:
    out = set()
    for service in _our_services(doc).values():
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        out.add((context / name).resolve())
    return out


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            parts = shlex.split(rest)
            if parts and "=" not in parts[0]:  # legacy form: ENV NAME value
                env[parts[0]] = " ".join(parts[1:])
            else:
                env.update(p.partition("=")[::2] for p in parts)
    return env


def _exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _command_problem(command: list[str] | str) -> str | None:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if len(argv) < 2 or argv[0] != SCRIPT:
        return f"{argv!r} does not run the {SCRIPT} CLI"
    if argv[1] not in cli.commands:
        return f"{argv!r}: {argv[1]!r} is not a command of `{SCRIPT}`"
    return None


def _env_problems(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    known = {name for name, _, _ in iter_setting_docs()}
    ours = {k: v for k, v in env.items() if k.upper().startswith("NEARLINE_")}
    problems = [f"{k} is not a setting (see `nearline settings`)" for k in ours if k not in known]
    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.upper().startswith("NEARLINE_")]:
            m.delenv(k)
        for k, v in ours.items():
            m.setenv(k, v)
        try:
            load_settings()
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def test_compose_file_is_valid_by_the_compose_specification():
    schema = json.loads(SPEC.read_text(encoding="utf-8"))
    errors = sorted(Draft7Validator(schema).iter_errors(_compose()), key=lambda e: e.path)
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] == []


def test_the_schema_check_can_fail():
    schema = json.loads(SPEC.read_text(encoding="utf-8"))
    bad = {"services": {"worker": {"build": ".", "restart": "sometimes", "colour": "blue"}}}
    assert len(list(Draft7Validator(schema).iter_errors(bad))) >= 1


def test_the_image_is_built_from_files_that_exist():
    doc = _compose()
    assert _our_services(doc), "no service is built from this repository"
    for dockerfile in _dockerfiles(doc):
        assert dockerfile.is_file(), f"{dockerfile} does not exist"
        for word, rest in _dockerfile_instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from"):
                for source in _exec_form(rest)[:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"


def test_compose_commands_are_nearline_commands():
    doc = _compose()
    cmd_of = {}
    for name, service in _our_services(doc).items():
        if "command" in service:
            cmd_of[name] = service["command"]
    assert cmd_of, "no service built here says its command"
    assert {name: _command_problem(c) for name, c in cmd_of.items()} == dict.fromkeys(cmd_of)


def test_dockerfile_command_is_a_nearline_command():
    for dockerfile in _dockerfiles(_compose()):
        cmds = [rest for word, rest in _dockerfile_instructions(dockerfile) if word == "CMD"]
        assert cmds, f"{dockerfile.name} has no CMD"
        assert _command_problem(_exec_form(cmds[-1])) is None


def test_compose_and_dockerfile_set_only_settings_the_code_reads(monkeypatch):
    doc = _compose()
    problems = {}
    for name, service in _our_services(doc).items():
        problems[name] = _env_problems(_environment(service), monkeypatch)
    for dockerfile in _dockerfiles(doc):
        env = _dockerfile_env(_dockerfile_instructions(dockerfile))
        problems[dockerfile.name] = _env_problems(env, monkeypatch)
    assert problems == {k: [] for k in problems}


def test_the_command_and_environment_checks_can_fail(monkeypatch):
    assert _command_problem(["nearline", "wrker"]) is not None
    assert _command_problem(["python", "-m", "nearline_rec.tools.cli", "worker"]) is not None
    assert _command_problem("nearline serve") is None
    env = {"NEARLINE_REDIS__URI": "redis://redis:6379/0", "NEARLINE_SERVE__PORT": "http"}
    problems = _env_problems(env, monkeypatch)
    assert len(problems) == 2 and "NEARLINE_REDIS__URI" in problems[0]
