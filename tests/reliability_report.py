"""Figures of the reliability tests: one printed line each, merged into a JSON file.

Every test of tests/integration/test_reliability.py, test_security.py and the fuzz tests
calls `report(name, **figures)`: it prints `RELIABILITY <name>: k=v ...` (shown with
`pytest -s`) and merges the figures into test-artifacts/reliability.json (or
$NEARLINE_TEST_ARTIFACTS/reliability.json), so docs/reliability.md can quote the last run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    return Path(os.environ.get("NEARLINE_TEST_ARTIFACTS", REPO / "test-artifacts"))


def report(name: str, **figures: Any) -> dict[str, Any]:
    entry = {**figures, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    line = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"RELIABILITY {name}: {line}", flush=True)
    out_dir = artifacts_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "reliability.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[name] = entry
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return entry
