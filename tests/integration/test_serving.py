"""Read path, health, metrics, operator CLI and the status page on a running worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.producer import produce_events, produce_raw
from nearline_rec.schemas import validate
from nearline_rec.tools.localrun import free_port
from tests.integration.conftest import REPO, consume_all
from tests.integration.faults import poll_until, wait_shared_lists

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("NEARLINE_TEST_ARTIFACTS", REPO / "test-artifacts"))


class OwnRedis:
    """A redis-server of this test's own, so stopping it hurts no other test."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("own redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


def http(port: int, path: str, token: str | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_read_tiers_health_and_metrics(catalog_run, workers, own_redis):
    from prometheus_client.parser import text_string_to_metric_families

    from nearline_rec.serving import get_recommendations

    run = catalog_run
    env = {
        **run.env,
        "NEARLINE_REDIS__URL": own_redis.url,
        "NEARLINE_SERVE__CACHE_TTL_SECONDS": "60",
        "NEARLINE_DEGRADE__REFRESH_SECONDS": "1",
        "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.5",
    }
    worker = workers(env)
    worker.wait_ready()
    s = run.settings
    items = run.taste_items(3)
    events = [
        UserEvent(f"s-{u}-{i}", f"reader-{u}", items[i + u], "like", 1.7e9 + i)
        for u in range(3)
        for i in range(6)
    ]
    produce_events(s, events)
    worker.wait(lambda st: st["counters"].get("lists_written", 0) >= 3, 60, "lists written")
    import redis

    wait_shared_lists(redis.Redis.from_url(own_redis.url), s.redis.key_prefix, time.time())
    port = worker.port

    # Redis tier, then the in-process cache
    code, body = http(port, "/recommendations/reader-0?k=5")
    assert code == 200, body
    validate("recommendation-response", body)
    assert body["tier"] == "redis" and len(body["items"]) == 5 and body["mode"] == "personal"
    assert not body["degraded"] and not body["stale"]
    code, again = http(port, "/recommendations/reader-0?k=5")
    assert again["tier"] == "cache" and again["items"] == body["items"]
    # the client function reads the same list through the same tiers
    direct = get_recommendations("reader-0", k=5, url=own_redis.url, prefix=s.redis.key_prefix)
    validate("recommendation-response", direct)
    assert direct["tier"] == "redis" and direct["items"] == body["items"]
    # a user without a list gets the popularity list
    code, new = http(port, "/recommendations/someone-new?k=4")
    assert code == 200 and new["tier"] == "popular" and len(new["items"]) == 4
    assert new["mode"] == "cold_start" and not new["degraded"]
    validate("recommendation-response", new)
    assert (
        get_recommendations("someone-new", k=4, url=own_redis.url, prefix=s.redis.key_prefix)[
            "tier"
        ]
        == "popular"
    )

    # invalid input: JSON 4xx
    for path, code_want in [
        ("/recommendations/reader-0?k=0", 400),
        ("/recommendations/reader-0?k=abc", 400),
        ("/recommendations/reader-0?k=100000", 400),
        ("/no/such/route", 404),
    ]:
        code, err = http(port, path)
        assert code == code_want and isinstance(err, dict) and err["error"], (path, code, err)

    code, health = http(port, "/health")
    assert code == 200 and health["ready"], health

    # Redis down: cached users still answer from cache, others from the built-in default
    own_redis.stop()
    code, cached = http(port, "/recommendations/reader-0?k=5")
    assert code == 200 and cached["tier"] == "cache" and cached["items"] == body["items"]
    code, fallback = http(port, "/recommendations/reader-1?k=5")
    assert code == 200 and fallback["tier"] == "default" and fallback["stale"]
    assert len(fallback["items"]) == 5
    validate("recommendation-response", fallback)
    down = worker.wait(lambda st: True, 5, "status")  # status still answers
    assert down["app_id"] == run.env["NEARLINE_WORKER__APP_ID"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, health = http(port, "/health")
        if code == 503:
            break
        time.sleep(0.3)
    assert code == 503 and health["checks"]["redis"] is False and not health["ready"], health
    own_redis.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, health = http(port, "/health")
        if code == 200:
            break
        time.sleep(0.3)
    assert code == 200 and health["ready"], health

    # Prometheus text, parsed with the official parser
    code, text = http(port, "/metrics")
    assert code == 200 and isinstance(text, str)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "nearline_events_in",
        "nearline_dead_letters",
        "nearline_batch_size_events",
        "nearline_batch_processing_seconds",
        "nearline_event_to_list_seconds",
        "nearline_consumer_lag",
        "nearline_mode",
        "nearline_redis_errors",
        "nearline_redis_retries",
        "nearline_reads",
        "nearline_lists_written",
    ):
        assert name in families, f"{name} missing from /metrics"
    value = {
        (f.name, tuple(sorted(smp.labels.items()))): smp.value
        for f in families.values()
        for smp in f.samples
    }
    assert value[("nearline_events_in", ())] == len(events)
    assert value[("nearline_reads", (("tier", "cache"),))] >= 2
    assert value[("nearline_reads", (("tier", "default"),))] >= 1
    assert value[("nearline_mode", (("mode", "normal"),))] == 1.0
    batches = [
        smp for smp in families["nearline_batch_size_events"].samples if smp.name.endswith("_count")
    ]
    assert batches and batches[0].value >= 1


def test_operator_cli_and_dead_letter_redrive(catalog_run, workers):
    run = catalog_run
    s = run.settings
    worker = workers(run.env)
    worker.wait_ready()
    produce_events(s, [UserEvent("c-1", "cli-user", run.taste_items(0)[0], "click", 1.7e9)])
    produce_raw(s, s.topics.user_events, [(b"cli-user", b"broken {")])
    worker.wait_events(2)
    env = {**os.environ, **run.env, "NEARLINE_WORKER__WEB_PORT": str(worker.port)}

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "nearline_rec.tools.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=REPO,
        )
        assert (res.returncode == 0) == ok, (args, res.stdout, res.stderr)
        return res

    from nearline_rec.tools.ops import group_lag

    def committed() -> bool:
        info = group_lag(s)
        return info["total_lag"] == 0 and info["state"] == "Stable"

    poll_until(committed, 30, "the worker's offsets committed (lag 0, group stable)", every=0.5)
    lag = json.loads(cli("lag", "--json").stdout)
    assert lag["group"] == s.worker.app_id and len(lag["partitions"]) == 3
    assert lag["total_lag"] == 0 and lag["state"] == "Stable"
    assert "mode=normal" in cli("status").stdout
    out = cli("recs", "cli-user").stdout
    assert "mode=personal" in out and "embedding" in out
    assert "1 dead letters" in cli("dlq").stdout
    assert "re-drove 1" in cli("dlq", "--redrive").stdout
    worker.wait_events(3)  # the re-driven original bytes came back through the worker
    dlq = consume_all(s.topics.user_events_dlq, min_records=2)
    assert [json.loads(m.value)["payload_b64"] for m in dlq] == ["YnJva2VuIHs="] * 2
    # still broken, so dead-lettered again: the next run re-drives only that new one
    assert "re-drove 1 " in cli("dlq", "--redrive").stdout
    assert "re-drove 0 " in cli("dlq", "--redrive", "--reason", "schema").stdout
    bad = cli("status", "--url", f"http://127.0.0.1:{free_port()}", ok=False)
    assert bad.stderr.strip().count("\n") == 0 and "no worker" in bad.stderr
    bad = cli("recs", "nobody-at-all", ok=False)
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_status_page_in_headless_chromium(catalog_run, workers, tmp_path):
    """The operator's page, opened as an operator does with a token set: /status/page/?token=
    renders mode, lag and the chart from /status/ and /status/history/, which the page asks
    with the header. Without the token, or with a wrong one, no data. Failed before the page
    route took `?token=` (a browser sends no Authorization header: 401, an empty page)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is required for the status page test (scripts/test.sh installs it)")
    run = catalog_run
    token = f"page-token-{os.urandom(6).hex()}"
    env = {**run.env, "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.25", "NEARLINE_SERVE__TOKEN": token}
    worker = workers(env)  # its status() sends the token
    worker.wait_ready()
    s = run.settings
    items = run.taste_items(1)
    for burst in range(3):
        produce_events(
            s,
            [
                UserEvent(
                    f"p{burst}-{i}", f"page-{i % 30}", items[i % len(items)], "click", 1.7e9 + i
                )
                for i in range(400)
            ],
        )
        time.sleep(1.0)
    worker.wait_events(1200)

    def charted() -> bool:  # what the page draws: mode normal and some history
        history = worker.get("/status/history/")
        return history is not None and len(history["samples"]) >= 5

    worker.wait(lambda st: st["mode"] == "normal" and charted(), 20, "mode normal, history")
    page = f"http://127.0.0.1:{worker.port}/status/page/"
    url = f"{page}?token={token}"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=6000",
    ]

    def dump(address: str) -> str:
        return subprocess.run(
            [chromium, *flags, "--dump-dom", address], capture_output=True, text=True, timeout=90
        ).stdout

    for refused in (page, f"{page}?token=wrong-{token}"):
        dom = dump(refused)
        assert "missing or wrong bearer token" in dom and "data-ready" not in dom, dom[:2000]
        assert token not in dom
    dom = dump(url)
    assert 'data-ready="1"' in dom, dom[:2000]
    assert token not in dom  # the page keeps it in a request header, not in the DOM
    assert 'id="mode" class="big normal">normal<' in dom
    import re

    points = int(re.search(r'data-points="(\d+)"', dom).group(1))
    assert points >= 5, "the chart has no history"
    line = re.search(r'id="eps-line"[^>]*points="([^"]*)"', dom)
    assert line and len(line.group(1).split()) == points
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1100,700", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.stat().st_size > 10_000
