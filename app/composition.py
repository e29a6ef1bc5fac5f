"""The composition root of the worker: settings -> the faust.App, its topics and the user
table (what `faust -A nearline_rec.worker` needs to register agents), and the Runtime (catalogue,
recommender, store, ranker, calibration), which is built when the worker starts
(`nearline_rec.worker`'s start-up hook) or on first use, never at import.

Importing this module (and so any agent module) reads the settings and builds the App;
it does not build a recommender, read a catalogue or open a store. A bad setting raises
`SettingsError`; the entry points (`nearline_rec.worker`, the CLI) print it on one line."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nearline_rec.commit_guard import CommitGuard
from nearline_rec.core.user_state import UserState
from nearline_rec.faust_app import UserStateTable, create_app, rocksdb_options
from nearline_rec.runtime import Runtime
from nearline_rec.settings import load_settings
from nearline_rec.sink import Publish, Sink, broker_publisher

log = logging.getLogger("nearline")

settings = load_settings()
app = create_app(settings)
assert app.guard is not None
guard: CommitGuard = app.guard
"""At-least-once for user-events: the consumer's hooks, the frontier, gap refill, commit."""

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
events_topic = app.topic(settings.topics.user_events, partitions=settings.topics.partitions, **raw)
recommendations_topic = app.topic(
    settings.topics.recommendations, partitions=settings.topics.partitions, **raw
)
events_dlq_topic = app.topic(
    settings.topics.user_events_dlq, partitions=settings.topics.partitions, **raw
)
items_dlq_topic = app.topic(settings.topics.item_updates_dlq, partitions=1, **raw)
# The friend graph: relations are read by any worker and split into friend-activity
# records keyed by the user they belong to; friend-activity is co-partitioned with
# user-events (same partition count, key = user id), so the owner of a user reads both.
relations_topic = app.topic(
    settings.topics.user_relations, partitions=settings.topics.partitions, **raw
)
activity_topic = app.topic(
    settings.topics.friend_activity, partitions=settings.topics.partitions, **raw
)

# Changelog-backed: a restarted or rebalanced worker replays it to recover every user.
user_table = app.tables.add(
    UserStateTable(
        app,
        name="user-state",
        beacon=app.tables.beacon,
        partitions=settings.topics.partitions,
        key_type=bytes,  # bytes types make Faust use the raw codec for the changelog
        value_type=bytes,
        options=rocksdb_options(settings.worker),
    )
)

_runtime: Runtime | None = None
_sink: Sink | None = None
_publish: Publish | None = None


def runtime() -> Runtime:
    """The worker's Runtime, built from the settings on first use (the worker builds it in
    its start-up hook, so a bad setting stops it before any agent runs)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime


def use_runtime(rt: Runtime | None, publish: Publish | None = None) -> None:
    """Install a Runtime built elsewhere (the agent tests: an in-memory store) and, with
    `publish`, what the sink sends records with (instead of the worker's producer); None:
    built from the settings on next use."""
    global _runtime, _sink, _publish
    _runtime, _sink, _publish = rt, None, publish


def sink() -> Sink:
    """The sink of the user-events and friend-activity batches (nearline_rec.sink)."""
    global _sink
    if _sink is None:
        _sink = Sink(
            runtime(),
            table=user_table,
            publish=_publish
            or broker_publisher(lambda: app.producer._ensure_producer(), user_table),
            recommendations=recommendations_topic.get_topic_name(),
            dead_letters=events_dlq_topic.get_topic_name(),
            activity=activity_topic.get_topic_name(),
            rebalancing=lambda: bool(app.rebalancing),
        )
    return _sink


def load_user(user_id: str) -> UserState | None:
    raw_state = user_table.get_state(user_id.encode())
    return None if raw_state is None else UserState.from_bytes(raw_state)


async def counting_crashes(agent: str, body: Callable[[], Awaitable[None]]) -> None:
    """Run an agent's or task's body; an exception that escapes it (Faust's supervisor then
    restarts the agent) is counted in /status/ and /metrics and logged before it goes on."""
    try:
        await body()
    except Exception as exc:
        runtime().counters[f"agent_crashes_{agent}"] += 1
        log.exception("%s crashed (%s); Faust restarts it", agent, type(exc).__name__)
        raise
