"""The project as a user installs it: the wheel, in a fresh virtual environment outside the
repository, runs `nearline sample` and `nearline evaluate` (schemas and model files come
with the wheel; no NEARLINE_SCHEMAS_DIR, no checkout on the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{args[:3]}...: {out.stderr[-2000:]}"
    return out


def test_the_wheel_installed_elsewhere_runs_sample_and_evaluate(tmp_path: Path):
    # built from a copy: setuptools writes build/ next to the sources
    src = tmp_path / "src"
    for name in ("app", "agents", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("nearline_rec-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    lock = str(REPO / "scripts" / "requirements-runtime.lock")
    _run([py, "-m", "pip", "install", "-q", "--require-hashes", "-r", lock])
    _run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEARLINE_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # nothing of the checkout is importable from there
    where = _run(
        [py, "-c", "import nearline_rec.agents as a; print(a.__file__)"], cwd=work, env=env
    )
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout
    _run(
        ["nearline", "sample", "s", "--items", "400", "--users", "120", "--ratings", "6000"],
        cwd=work,
        env=env,
    )
    evaluated = _run(
        ["nearline", "evaluate", "--ratings", "s/ratings.csv", "--movies", "s/movies.csv",
         "--out", "report"],
        cwd=work,
        env=env,
    )  # fmt: skip
    report = json.loads((work / "report" / "quality.json").read_text())
    assert report
    # the runtime lock has no matplotlib (the `plot` extra): every figure is in the JSON, the
    # chart is skipped with a line saying how to get it
    assert not (work / "report" / "quality.png").exists()
    assert "pip install 'nearline-rec[plot]'" in evaluated.stderr
    for extra_only in ("matplotlib", "tqdm"):
        probe = subprocess.run([py, "-c", f"import {extra_only}"], capture_output=True, env=env)
        assert probe.returncode != 0, f"{extra_only} is in the runtime lock"
