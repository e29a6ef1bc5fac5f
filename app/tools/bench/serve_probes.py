"""What `nearline bench serve` measures beside throughput: where the serve processes spend
their time (py-spy stacks under load) and how long a changed list stays stale in the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nearline_rec.tools.bench import percentile
from nearline_rec.tools.bench.serve_load import Load, median_of_runs
from nearline_rec.tools.localrun import (
    ServeProcess,
)


def sample_stacks(
    env: dict[str, str],
    work: Path,
    script: Path,
    users: int,
    seconds: float,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The server stack, chosen by this: one process, cached reads, 128 connections,
    the same reader and answers behind `nearline serve`'s own server (httptools on uvloop),
    granian (RSGI, uvloop) and aiohttp (asyncio or uvloop), rounds interleaved; with the
    server processes' CPU time per request."""
    servers = {
        "nearline_httptools_uvloop": None,
        "granian_rsgi_uvloop": ["-m", "nearline_rec.tools.bench.serve_granian"],
        "aiohttp_asyncio": ["-m", "nearline_rec.tools.bench.serve_aiohttp", "asyncio"],
        "aiohttp_uvloop": ["-m", "nearline_rec.tools.bench.serve_aiohttp", "uvloop"],
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for name, argv in servers.items():
        srv = ServeProcess(env, work, 1, name, argv=argv).start()
        try:
            Load(srv.port, 16, 1, script, users).run()  # warm
            for rep in range(repeats):
                log(f"stack {name}, round {rep + 1}/{repeats}")
                cpu0 = group_cpu_seconds(srv.pgid)
                row = Load(srv.port, 128, seconds, script, users).run()
                used = group_cpu_seconds(srv.pgid) - cpu0
                row["cpu_us_per_request"] = round(1e6 * used / max(row["requests"], 1), 1)
                rows[name].append(row)
        finally:
            srv.stop()
    out = {}
    for name, rs in rows.items():
        cpu = sorted(r["cpu_us_per_request"] for r in rs)[len(rs) // 2]
        out[name] = median_of_runs(rs) | {"cpu_us_per_request": cpu, "rounds_detail": rs}
    return out


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the live processes of a process group, from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat, the process group
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def profile_under_load(srv: ServeProcess, load: Load, seconds: float) -> dict[str, Any]:
    """Where one serve process's time goes under `load`: py-spy samples it (all threads,
    GIL holders and not) while wrk runs; self time by frame, and inclusive time by part."""
    if shutil.which("py-spy") is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    pid = (srv.get("/health") or {}).get("pid")
    out = Path(tempfile.mkdtemp(prefix="nearline-prof-")) / "raw.txt"
    cmd, env = load.command()
    wrk_proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--duration", f"{max(1, int(seconds))}"]
            + ["--format", "raw", "--output", str(out), "--nonblocking"],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return {"skipped": f"py-spy failed: {exc}"}
    finally:
        wrk_proc.wait(timeout=load.seconds + 30)
    own: dict[str, int] = {}
    parts = {"nearline code": 0, "redis client": 0, "HTTP server": 0, "asyncio streams": 0}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        n = int(n_text)
        total += n
        frames = stack.split(";")
        key = frames[-1] or "(no Python frame: the loop, the parser, native code)"
        own[key] = own.get(key, 0) + n
        for part, needles in (
            # the project's frames: app/... from a source checkout, nearline_rec/... installed
            ("nearline code", ("(app/", "(nearline_rec/")),
            ("redis client", ("(redis/",)),
            ("HTTP server", ("(granian/", "(nearline_rec/serve_http.py", "(app/serve_http.py")),
            ("asyncio streams", ("(asyncio/streams.py",)),
        ):
            if any(needle in f for f in frames for needle in needles):
                parts[part] += n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
    return {
        "samples": total,
        "inclusive_share": {k: round(v / max(total, 1), 3) for k, v in parts.items()},
        "top_self": [{"frame": f, "share": round(n / max(total, 1), 3)} for f, n in top],
    }


def measure_staleness(s: Any, srv: ServeProcess, users: list[str]) -> dict[str, Any]:
    """Time from a new version of a user's record in Redis to the serve process answering
    it, for users whose list it has cached (the record's version bumped in place, as a
    worker's write does)."""
    import redis

    from nearline_rec.storage import keys

    r = redis.Redis.from_url(s.redis.url)
    lat: list[float] = []
    misses = 0
    for u in users:
        for _ in range(3):  # cached in whichever process answers
            srv.get(f"/recommendations/{u}?k=1")
        key = keys.user_list(s.redis.key_prefix, u)
        raw = r.get(key)
        if raw is None:
            continue
        version = int.from_bytes(raw[1:9], "big") + 1_000_000
        r.set(key, raw[:1] + version.to_bytes(8, "big") + raw[9:])
        t0 = time.perf_counter()
        deadline = t0 + 5
        while time.perf_counter() < deadline:
            body = srv.get(f"/recommendations/{u}?k=1") or {}
            if body.get("version") == version:
                lat.append(time.perf_counter() - t0)
                break
        else:
            misses += 1
    return {
        "trials": len(lat),
        "not_fresh_within_5s": misses,
        "p50": round(percentile(lat, 50) * 1000, 3),
        "p99": round(percentile(lat, 99) * 1000, 3),
        "max": round(max(lat) * 1000, 3) if lat else None,
        "note": "includes one HTTP request on a new connection (the poll that saw it)",
    }
