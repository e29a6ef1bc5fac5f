"""The Faust app's consumer: the broker may hold a fetch only as long as the setting says."""

from __future__ import annotations

from nearline_rec.faust_app import QuietWorker, create_app
from nearline_rec.settings import load_settings


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


async def test_fetch_loop_handoff_runs_the_callback_once_and_races_only_when_it_blocks():
    """The consumer's per-message wait_first fast path: a callback that finishes in its
    first step is run exactly once with no race; one that blocks is raced against the flow
    being suspended, and loses (is cancelled) when the flow is suspended first."""
    import asyncio

    app = create_app(load_settings(worker={"app_id": "t-handoff"}))
    consumer = app.consumer
    calls = []

    async def quick(x):
        calls.append(x)
        return x * 2

    got = await consumer.wait_first(quick(21), consumer.suspend_flow.wait())
    assert calls == [21] and got.done and got.results == [42] and not got.stopped

    gate = asyncio.Event()
    finished = []

    async def blocked():
        await gate.wait()
        finished.append(True)

    async def suspend_soon():
        await asyncio.sleep(0.05)
        consumer.suspend_flow.set()

    asyncio.ensure_future(suspend_soon())
    got = await asyncio.wait_for(
        consumer.wait_first(blocked(), consumer.suspend_flow.wait()), timeout=5
    )
    gate.set()
    await asyncio.sleep(0.01)
    assert finished == []  # cancelled when the flow was suspended, as Faust's race does
    consumer.suspend_flow.clear()
    # anything else still goes through Faust's own wait_first
    other = asyncio.Event()
    other.set()
    got = await consumer.wait_first(quick(1), other.wait())
    assert got.done


def test_rocksdb_store_gets_bounded_caches_and_the_memory_store_no_options(tmp_path):
    from faust.stores.rocksdb import RocksDBOptions

    from nearline_rec.faust_app import UserStateTable, rocksdb_options

    assert rocksdb_options(load_settings().worker) is None
    w = load_settings(
        worker={"store": "rocksdb://", "rocksdb_block_cache_mb": 8, "rocksdb_write_buffer_mb": 4}
    ).worker
    options = rocksdb_options(w)
    assert options == {"block_cache_size": 8 << 20, "write_buffer_size": 4 << 20}
    # what Faust's store makes of them (its own defaults: 2 GB cache, 64 MB buffers)
    opened = RocksDBOptions(**options)
    assert (opened.block_cache_size, opened.write_buffer_size) == (8 << 20, 4 << 20)
    app = create_app(
        load_settings(
            worker={"app_id": "t-rocks", "store": "rocksdb://", "data_dir": str(tmp_path)}
        )
    )
    table = app.tables.add(
        UserStateTable(app, name="t", key_type=bytes, value_type=bytes, options=rocksdb_options(w))
    )
    assert table.data.rocksdb_options.block_cache_size == 8 << 20
