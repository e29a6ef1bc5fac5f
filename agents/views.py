"""Web views of the worker: status as JSON, and a user's list from Redis."""

from __future__ import annotations

from typing import Any

from app.runtime import app, runtime


@app.page("/status/")
async def status(web: Any, request: Any) -> Any:
    return web.json(runtime.status())


@app.page("/recommendations/{user_id}/")
async def recommendations(web: Any, request: Any, user_id: str) -> Any:
    value = await runtime.store.read_list(user_id)
    if value is None:
        value = await runtime.store.read_cold_start()
        if value is None:
            return web.json({"error": "no list for user and no cold-start list yet"}, status=404)
        value = dict(value, user_id=user_id)
    return web.json(value)
