"""The lock files pin, with hashes, every dependency pyproject.toml declares, inside its range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "scripts" / name).read_text(encoding="utf-8")
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M))
    # every pin carries at least one hash, so pip installs it in --require-hashes mode
    for block in re.split(r"^(?=[A-Za-z0-9_.\-]+==)", text, flags=re.M)[1:]:
        assert "--hash=sha256:" in block, f"{name}: no hash for {block.split()[0]}"
    return {canonicalize_name(k): v for k, v in pins.items()}


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ["dev"]), ("requirements-runtime.lock", [])],
)
def test_lock_pins_every_declared_dependency_within_its_range(lock: str, extras: list[str]):
    pins = _pins(lock)
    declared = list(PYPROJECT["dependencies"])
    for extra in extras:
        declared += PYPROJECT["optional-dependencies"][extra]
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock}: {req.name} is declared but not pinned (bash scripts/lock.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock}: {req.name}=={pins[name]} is outside {req.specifier} (bash scripts/lock.sh)"
        )
