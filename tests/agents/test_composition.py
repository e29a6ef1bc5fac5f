"""The composition root: importing the agents registers them on the App and builds no
Runtime (no recommender, no catalogue, no store); the worker builds it when it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import nearline_rec.agents.degrade, nearline_rec.agents.friends, nearline_rec.agents.ingest, nearline_rec.agents.items, nearline_rec.agents.views
import nearline_rec.composition as c
assert c._runtime is None, "importing the agents built a Runtime"
assert "nearline_rec.storage.redis_store" not in sys.modules, "importing the agents loaded the store"
names = sorted(a.name for a in c.app.agents.values())
print(" ".join(names))
"""


def test_importing_the_agents_builds_no_runtime():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "nearline_rec.agents.friends.friend_activity",
        "nearline_rec.agents.friends.relations",
        "nearline_rec.agents.ingest.ingest",
    ]


def test_the_runtime_is_built_on_first_use_from_the_settings():
    from nearline_rec.composition import runtime, settings, use_runtime

    use_runtime(None)
    try:
        rt = runtime()
        assert runtime() is rt
        assert rt.settings is settings
    finally:
        use_runtime(None)
