"""The Faust app's consumer: the broker may hold a fetch only as long as the setting says."""

from __future__ import annotations

from app.faust_app import QuietWorker, create_app
from app.settings import load_settings


async def test_worker_consumer_fetch_wait_comes_from_the_setting():
    app = create_app(load_settings(worker={"fetch_max_wait": 0.07, "app_id": "t-fetch-wait"}))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 70  # Faust alone would say 1500
    default = create_app(load_settings(worker={"app_id": "t-fetch-default"}))
    thread = default.consumer._thread
    assert thread._create_worker_consumer(default.transport)._fetch_max_wait_ms == 50


def test_worker_class_has_no_spinner_to_force_debug_logging():
    app = create_app(load_settings(worker={"app_id": "t-quiet"}))
    assert app.conf.Worker is QuietWorker
