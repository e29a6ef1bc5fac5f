"""The load of `nearline bench serve`: wrk (with its Lua script of user requests) against the
serve processes, redis-benchmark's bare GET of the same records, and pacing to a target rate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nearline_rec.errors import BadInput
from nearline_rec.tools.bench import median

NEEDS = {
    "wrk": "wrk, the HTTP load generator (Debian/Ubuntu: apt-get install wrk)",
    "redis-benchmark": "redis-benchmark, the bare-GET baseline (Debian/Ubuntu: apt-get install"
    " redis-server, which ships it)",
    "taskset": "taskset, to confine wrk to the serve processes' CPU (Debian/Ubuntu: util-linux)",
}

# wrk script: users cycle per connection; `delay` paces each connection when NL_INTERVAL_MS
# is set (the fraction of a millisecond carried over); `done` prints one parseable line.
WRK_LUA = r"""
local users = tonumber(os.getenv("NL_USERS"))
local interval = tonumber(os.getenv("NL_INTERVAL_MS") or "0")
local token = os.getenv("NL_TOKEN")
local n = 0
local debt = 0
local headers = {}
if token and #token > 0 then headers["Authorization"] = "Bearer " .. token end
function init(args) n = math.random(0, users - 1) end
function request()
  n = (n + 7) % users
  return wrk.format("GET", string.format("/recommendations/u%012d?k=10", n), headers)
end
if interval > 0 then
  function delay()
    debt = debt + interval
    local d = math.floor(debt)
    debt = debt - d
    return d
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "NLRESULT %d %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


class MissingTool(BadInput):
    """A program the benchmark drives is not installed."""


def user_name(i: int) -> str:
    """Bench users are named so redis-benchmark's __rand_int__ (12 digits) hits their keys."""
    return f"u{i:012d}"


def check_tools() -> None:
    missing = [what for tool, what in NEEDS.items() if shutil.which(tool) is None]
    if missing:
        raise MissingTool("nearline bench serve needs " + "; and ".join(missing))


@dataclass(frozen=True)
class Load:
    """One wrk run against a serve port: `connections` for `seconds`, cycling the bench
    users; `interval_ms` paces each connection (0: as fast as answers come)."""

    port: int
    connections: int
    seconds: float
    script: Path
    users: int
    interval_ms: float = 0.0
    token: str | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "NL_USERS": str(self.users), "NL_INTERVAL_MS": str(self.interval_ms)}
        env["NL_TOKEN"] = self.token or ""
        cmd = ["wrk", "-t", str(min(2, self.connections)), "-c", str(self.connections)]
        cmd += ["-d", f"{self.seconds:g}s", "--timeout", "5s", "-s", str(self.script)]
        return [*cmd, f"http://127.0.0.1:{self.port}/"], env

    def run(self) -> dict[str, Any]:
        cmd, env = self.command()
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=self.seconds + 60, check=True
        ).stdout
        return self.parse(out)

    def parse(self, out: str) -> dict[str, Any]:
        m = re.search(r"^NLRESULT (.*)$", out, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
        req, dur, errors, non2xx, p50, p99, p999, mx = (int(float(x)) for x in m[1].split())
        return {
            "connections": self.connections,
            "requests": req,
            "rps": round(req / (dur / 1e6), 1),
            "errors": errors,
            "non_2xx": non2xx,
            "p50_ms": round(p50 / 1000, 3),
            "p99_ms": round(p99 / 1000, 3),
            "p999_ms": round(p999 / 1000, 3),
            "max_ms": round(mx / 1000, 3),
        }


def redis_get(url: str, key_pattern: str, connections: int, users: int, n: int) -> dict[str, Any]:
    """redis-benchmark: `n` GETs of the bench users' records over `connections` clients."""
    out = subprocess.run(
        ["redis-benchmark", "-u", url, "-c", str(connections), "-n", str(n), "-r", str(users)]
        + ["--csv", "GET", key_pattern],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith('"GET')]
    if not lines:
        raise RuntimeError(f"redis-benchmark printed no result:\n{out[-2000:]}")
    cols = [c.strip('"') for c in lines[-1].split(",")]
    return {
        "connections": connections,
        "requests": n,
        "rps": float(cols[1]),
        "p50_ms": float(cols[4]),
        "p99_ms": float(cols[6]),
        "max_ms": float(cols[7]),
    }


def median_of_runs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms")
    return {k: median([r[k] for r in rows]) for k in keys} | {
        "errors": sum(r.get("errors", 0) + r.get("non_2xx", 0) for r in rows),
        "rounds": len(rows),
    }


def paced_rate(port: int, connections: int, target: float, script: Path, users: int) -> float:
    """The per-connection pause that makes `connections` send `target` req/s in all: a
    connection sends every pause + answer time, so a 2 s calibration round measures the
    answer time at about that rate and the pause is corrected by it; two rounds (0: the
    server cannot keep up, run closed loop)."""
    period = connections / target * 1000
    pause = period
    for _ in range(2):
        got = Load(port, connections, 2, script, users, pause).run()["rps"]
        pause = max(0.0, pause + period - connections / max(got, 1.0) * 1000)
    return round(pause, 3)
