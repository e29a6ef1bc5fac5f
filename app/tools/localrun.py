"""Running locally: start services, isolated runs, worker processes (demo, bench, tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scripts" / "services.sh"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services(log: Callable[[str], None] = print) -> list[str]:
    """Start local Kafka/Redis when none is configured and none answers; return what started."""
    wanted = []
    if "NEARLINE_KAFKA__BOOTSTRAP_SERVERS" not in os.environ and not port_open("127.0.0.1", 9092):
        wanted.append("kafka")
    if "NEARLINE_REDIS__URL" not in os.environ and not port_open("127.0.0.1", 6379):
        wanted.append("redis")
    started = []
    for name in wanted:
        if not SERVICES.exists():
            raise OSError(
                f"{name} is not running and {SERVICES} is missing: start it yourself "
                "or set NEARLINE_KAFKA__BOOTSTRAP_SERVERS / NEARLINE_REDIS__URL"
            )
        log(f"starting local {name} (scripts/services.sh start {name}) ...")
        subprocess.run(["bash", str(SERVICES), "start", name], check=True)
        started.append(name)
    return started


def stop_services(names: list[str]) -> None:
    for name in names:
        subprocess.run(["bash", str(SERVICES), "stop", name], check=False)


def isolated_env(run: str, **extra: str) -> dict[str, str]:
    """Settings of one isolated run: its own app id (consumer group), topics and key prefix."""
    env = {
        "NEARLINE_WORKER__APP_ID": run,
        "NEARLINE_TOPICS__USER_EVENTS": f"{run}-user-events",
        "NEARLINE_TOPICS__ITEM_UPDATES": f"{run}-item-updates",
        "NEARLINE_TOPICS__RECOMMENDATIONS": f"{run}-recommendations",
        "NEARLINE_TOPICS__USER_EVENTS_DLQ": f"{run}-user-events-dlq",
        "NEARLINE_TOPICS__ITEM_UPDATES_DLQ": f"{run}-item-updates-dlq",
        "NEARLINE_TOPICS__USER_RELATIONS": f"{run}-user-relations",
        "NEARLINE_TOPICS__FRIEND_ACTIVITY": f"{run}-friend-activity",
        "NEARLINE_REDIS__KEY_PREFIX": f"{run[-20:]}:",
    }
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> Any:
    """The Settings a worker started with this env sees."""
    from nearline_rec.settings import load_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerProcess:
    """A real `nearline worker` process with its own settings, log file and web port."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        name: str = "worker",
        loglevel: str = "info",
        entry: Sequence[str] = ("-m", "nearline_rec.tools.cli"),
    ) -> None:
        """`entry`: what python runs with `worker -l LEVEL` (a test's own entry point that
        wraps the CLI, to inject a fault)."""
        self.port = free_port()
        self.entry = tuple(entry)
        self.env = {**os.environ, **env, "NEARLINE_WORKER__WEB_PORT": str(self.port)}
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.entry, "worker", "-l", self.loglevel],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
            if token := self.env.get("NEARLINE_SERVE__TOKEN"):
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, Any] | None:
        return self.get("/status/")

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"worker exited while waiting for {what}:\n{self.log_tail()}")
            last = self.status()
            if last is not None and pred(last):
                return last
            time.sleep(0.3)
        raise TimeoutError(
            f"timeout ({timeout:.0f}s) waiting for {what}; status={last}\n{self.log_tail()}"
        )

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        return self.wait(lambda s: bool(s.get("catalog_ready")), timeout, "catalog ready")

    def wait_events(self, n: int, timeout: float = 120) -> dict[str, Any]:
        # events_done moves after a batch's table, Redis and topic writes; events_in before
        return self.wait(
            lambda s: s["counters"].get("events_done", 0) >= n, timeout, f"{n} events handled"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class ServeProcess:
    """A real `nearline serve` process group (it pre-forks `processes` serve processes)."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        processes: int = 1,
        name: str = "serve",
        argv: list[str] | None = None,
    ):
        self.port = free_port()
        self.processes = processes
        self.argv = argv
        """Another server to run instead (its arguments, then the port): bench comparisons."""
        self.env = {**os.environ, **env}
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServeProcess:
        cmd = [sys.executable, "-m", "nearline_rec.tools.cli", "serve", "--port", str(self.port)]
        cmd += ["--processes", str(self.processes), "-l", "warning"]
        if self.argv is not None:
            cmd = [sys.executable, *self.argv, str(self.port)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nearline serve exited:\n{self.log_tail()}")
            if self.get("/health") is not None:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"nearline serve did not answer in {timeout:.0f}s\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def request(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one GET on a new connection."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request(path, self.env.get("NEARLINE_SERVE__TOKEN"))[1]
        except (OSError, ValueError):
            return None

    @property
    def pgid(self) -> int:
        """The process group of the server and every process it forked."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
