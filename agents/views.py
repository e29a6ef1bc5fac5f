"""Web views of the worker: read path, health, status (JSON and page), Prometheus metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from nearline_rec.composition import app, events_topic, runtime, settings
from nearline_rec.logs import use_json_logs
from nearline_rec.metrics import CONTENT_TYPE
from nearline_rec.security import cleartext_secrets, token_ok
from nearline_rec.serving import BadRequest, check_user_id, parse_k

log = logging.getLogger("nearline.security")

STATUS_PAGE = Path(__file__).resolve().parent / "status_page.html"


def _error(web: Any, status: int, message: str) -> Any:
    return web.json({"error": message, "status": status}, status=status)


def _denied(web: Any, request: Any, *, query: bool = False) -> Any | None:
    """401 unless the request carries the configured bearer token (no token: open).
    With `query`, `?token=` counts too: a browser opening the status page sends no header
    (the page then sends the header on its own requests)."""
    token = settings.serve.token
    if token is None:
        return None
    sent = request.headers.get("Authorization", "")
    if token_ok(token, sent, request.query.get("token", "") if query else None):
        return None
    return _error(web, 401, "missing or wrong bearer token")


async def _recommendations(web: Any, request: Any, user_id: str) -> Any:
    if (denied := _denied(web, request)) is not None:
        return denied
    try:
        check_user_id(user_id)
        k = parse_k(request.query.get("k"), settings.serve.default_k)
    except BadRequest as exc:
        return _error(web, 400, str(exc))
    result = await runtime().reader.read(user_id)
    return web.json(
        result.response(
            k, time.time(), settings.serve.stale_after_seconds, titles=_title, keep=_recommendable
        )
    )


def _recommendable(item_id: str) -> bool:
    """Still in the catalog and recommendable: a list written before an item was retired
    (deleted, or updated with recommendable false) still names it."""
    catalog = runtime().recommender.catalog
    key = catalog.key(item_id)
    return key is not None and bool(catalog.recommendable_mask[key])


def _title(item_id: str) -> str | None:
    """An item's title from the worker's catalog (lists in Redis store no titles)."""
    catalog = runtime().recommender.catalog
    key = catalog.key(item_id)
    return None if key is None else catalog.meta(key).title


@app.page("/recommendations/{user_id}")
async def recommendations(web: Any, request: Any, user_id: str) -> Any:
    return await _recommendations(web, request, user_id)


@app.page("/recommendations/{user_id}/")
async def recommendations_slash(web: Any, request: Any, user_id: str) -> Any:
    return await _recommendations(web, request, user_id)


def health_checks() -> dict[str, bool]:
    topic = events_topic.get_topic_name()
    assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic]
    recovery = getattr(app.tables, "recovery", None)
    check_every = settings.degrade.check_interval
    return {
        # the lag monitor asks the broker every check: a recent answer means it is reachable
        "broker": runtime().lag_measured_at > time.time() - max(5.0, 5 * check_every),
        "redis": runtime().redis_ok and runtime().redis_ping_ok,
        "partitions_assigned": bool(assigned),
        "recovery_done": bool(recovery is not None and recovery.completed.is_set()),
        "catalog_loaded": runtime().catalog_ready.is_set(),
        # a batch held because none of its records can be written (not a record's fault)
        "effects": runtime().effects_error is None,
    }


async def _health(web: Any, request: Any) -> Any:
    checks = health_checks()
    ready = all(checks.values())
    return web.json(
        {
            "live": True,
            "ready": ready,
            "checks": checks,
            "mode": runtime().policy.mode,
            # why Redis is not ready when it answers but refuses writes (OOM, READONLY, ...)
            "redis_refusal": runtime().redis_refusal,
        },
        status=200 if ready else 503,
    )


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    return await _health(web, request)


@app.page("/health/")
async def health_slash(web: Any, request: Any) -> Any:
    return await _health(web, request)


@app.page("/status/")
async def status(web: Any, request: Any) -> Any:
    if (denied := _denied(web, request)) is not None:
        return denied
    return web.json(runtime().status())


@app.page("/status/history/")
async def status_history(web: Any, request: Any) -> Any:
    if (denied := _denied(web, request)) is not None:
        return denied
    since = request.query.get("since")
    try:
        floor = float(since) if since else 0.0
    except ValueError:
        return _error(web, 400, "since must be a unix time in seconds")
    return web.json({"samples": [s for s in runtime().history if s["t"] > floor]})


@app.page("/status/page/")
async def status_page(web: Any, request: Any) -> Any:
    if (denied := _denied(web, request, query=True)) is not None:
        return denied
    # the URL may hold the token: not to be cached, nor sent on as a referrer
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return web.html(STATUS_PAGE.read_text(encoding="utf-8"), headers=headers)


@app.page("/metrics")
async def metrics(web: Any, request: Any) -> Any:
    if (denied := _denied(web, request)) is not None:
        return denied
    return web.bytes(runtime().metrics.render(), headers={"Content-Type": CONTENT_TYPE})


@app.task
async def structured_logs() -> None:
    """NEARLINE_SERVE__LOG_JSON=true: one JSON object per log line from here on; then a
    warning for each secret the settings send in cleartext."""
    if settings.serve.log_json:
        use_json_logs()
    for line in cleartext_secrets(settings):
        log.warning("%s", line)


# aiohttp matches the longest path prefix first, so Faust's /table/ and /router/ win over
# this catch-all when they are on (NEARLINE_WORKER__FAUST_WEB_ENDPOINTS); off, they 404 here
@app.page("/{tail:.*}")
async def not_found(web: Any, request: Any, tail: str) -> Any:
    return _error(web, 404, f"no such endpoint: /{tail[:100]}")
