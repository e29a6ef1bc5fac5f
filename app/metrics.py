"""Prometheus metrics of one worker: hot-path histograms plus values read from the runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nearline_rec.core.modes import ListMode, WorkerMode
from nearline_rec.storage.redis_client import REFUSALS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def labelled_counter(name: str, doc: str, label: str, values: dict[str, float]) -> Any:
    """One counter family with a sample per label value."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family


class RuntimeCollector(Collector):
    """Counters and gauges the worker already keeps, read at scrape time (no hot-path cost)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        s = self.snapshot()
        c = s["counters"]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter("nearline_events_in", "User events consumed.", c.get("events_in", 0))
        yield counter(
            "nearline_events_applied", "Events applied to user state.", c.get("events_applied", 0)
        )
        yield counter(
            "nearline_events_duplicate",
            "Redelivered or duplicate events that changed nothing.",
            c.get("events_duplicate", 0),
        )
        yield counter(
            "nearline_offset_gaps",
            "Ranges of user-events offsets the stream skipped, read back and applied.",
            c.get("offset_gaps", 0),
        )
        yield counter(
            "nearline_events_refetched",
            "Events read back from Kafka because the stream skipped them.",
            c.get("events_refetched", 0),
        )
        yield counter(
            "nearline_partitions_reread",
            "user-events partitions read again from the frontier: fetched past it, and nothing"
            " reached the agent for a while (records dropped before the stream).",
            c.get("partitions_reread", 0),
        )
        lists = CounterMetricFamily(
            "nearline_lists_written",
            "Per-user lists written to Redis and published.",
            labels=["mode"],
        )
        written, degraded = c.get("lists_written", 0), c.get("lists_degraded", 0)
        lists.add_metric([ListMode.PERSONAL], written - degraded)
        lists.add_metric([ListMode.DEGRADED], degraded)
        lists.add_metric(["recomputed"], c.get("dirty_recomputed", 0))
        yield lists
        yield labelled_counter(
            "nearline_dead_letters",
            "Records sent to a dead-letter topic.",
            "reason",
            dict(sorted(s["dead_letters"].items())),
        )
        crashes = CounterMetricFamily(
            "nearline_agent_crashes",
            "Exceptions that escaped an agent or task (Faust restarts the agent); 0 expected.",
            labels=["agent"],
        )
        for agent in ("ingest", "items", "recompute"):
            crashes.add_metric([agent], s["agent_crashes"].get(agent, 0))
        yield crashes
        yield counter(
            "nearline_processing_errors",
            "Records dead-lettered with reason processing_error (the core or an effect raised).",
            c.get("processing_errors", 0),
        )
        yield counter(
            "nearline_list_errors",
            "Lists that could not be made (the user was served the degraded list).",
            c.get("list_errors", 0),
        )
        yield counter(
            "nearline_batch_holds",
            "Retries of a batch none of whose records could be written (the worker's fault).",
            c.get("batch_holds", 0),
        )
        yield counter(
            "nearline_rebuilds",
            "Rebuilds of every owned user's list (Redis lost its data, or nearline rebuild-lists).",
            c.get("rebuilds", 0),
        )
        yield counter(
            "nearline_batches_abandoned",
            "Batches held for Redis or the broker that gave way to a rebalance (redone).",
            c.get("batches_abandoned", 0),
        )
        yield counter(
            "nearline_batch_errors",
            "Batches whose effects failed and were retried one record at a time.",
            c.get("batch_errors", 0),
        )
        refused = CounterMetricFamily(
            "nearline_redis_refusals",
            "Batch writes Redis refused with an error reply no retry can fix (held, retried).",
            labels=["code"],
        )
        for code in REFUSALS:
            refused.add_metric([code], c.get(f"redis_refused_{code}", 0))
        yield refused
        yield counter(
            "nearline_item_updates",
            "Item updates applied to the catalog.",
            c.get("item_updates", 0),
        )
        yield counter(
            "nearline_redis_errors",
            "Redis writes that failed after all retries.",
            s["redis_errors"],
        )
        yield counter(
            "nearline_redis_retries", "Redis attempts retried with backoff.", s["redis_retries"]
        )
        reads = CounterMetricFamily(
            "nearline_reads", "List reads by the tier that served them.", labels=["tier"]
        )
        for tier, n in sorted(s["reads"].items()):
            reads.add_metric([tier], n)
        yield reads
        lag = GaugeMetricFamily(
            "nearline_consumer_lag", "High-water mark minus committed offset.", labels=["partition"]
        )
        for part, value in sorted(s["lag_by_partition"].items()):
            lag.add_metric([str(part)], value)
        yield lag
        ranker = s.get("ranker") or {}
        fallbacks = CounterMetricFamily(
            "nearline_ranker_fallbacks",
            "Batches ranked by the linear model instead of the learned one, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted((ranker.get("fallbacks") or {}).items()):
            fallbacks.add_metric([reason], n)
        yield fallbacks
        yield counter(
            "nearline_ranker_reloads",
            "New learned models picked up from the model file without a restart.",
            ranker.get("reloads", 0),
        )
        yield counter(
            "nearline_ranker_reload_errors",
            "Changed model files that did not load (the previous model was kept).",
            ranker.get("reload_errors", 0),
        )
        yield counter(
            "nearline_ranker_seconds",
            "Time spent in learned-model calls (one per micro-batch).",
            ranker.get("seconds", 0.0),
        )
        mode = GaugeMetricFamily("nearline_mode", "1 for the current mode.", labels=["mode"])
        for wm in WorkerMode:
            mode.add_metric([wm], 1.0 if s["mode"] == wm else 0.0)
        yield mode
        yield GaugeMetricFamily(
            "nearline_degraded",
            "1 while serving degraded lists.",
            value=1.0 if s["mode"] == WorkerMode.DEGRADED else 0.0,
        )
        yield GaugeMetricFamily(
            "nearline_dirty_users", "Users waiting for a normal recompute.", value=s["dirty_users"]
        )
        yield GaugeMetricFamily(
            "nearline_catalog_items", "Items in the in-memory catalog.", value=s["items"]
        )
        cal = s.get("calibration") or {}
        if cal.get("recall") is not None:
            yield GaugeMetricFamily(
                "nearline_lsh_measured_recall",
                "Recall@k against exact search of the index in use, measured by the last"
                " calibration on held-out taste queries (1 for exact search).",
                value=cal["recall"],
            )
            yield GaugeMetricFamily(
                "nearline_lsh_target_recall",
                "Recall the calibration aims at.",
                value=cal["target_recall"],
            )
            yield GaugeMetricFamily(
                "nearline_lsh_measured_queries",
                "Held-out queries the measured recall is the mean over.",
                value=cal["heldout_queries"],
            )
            yield GaugeMetricFamily(
                "nearline_lsh_measured_at_seconds",
                "Unix time of the last calibration.",
                value=cal["measured_at"] or 0.0,
            )
            setting = GaugeMetricFamily(
                "nearline_lsh_setting",
                "1 for the index setting in use (index exact or lsh, and the LSH knobs).",
                labels=["index", "w", "m", "L", "probes", "sketch_keep", "max_candidates"],
            )
            p = cal.get("setting") or {}
            knobs = ("w", "m", "L", "probes", "sketch_keep", "max_candidates")
            setting.add_metric([cal["index"], *(str(p.get(f, "")) for f in knobs)], 1.0)
            yield setting
        if cal:
            yield counter("nearline_lsh_calibrations", "Calibrations installed.", cal["runs"])
            yield GaugeMetricFamily(
                "nearline_lsh_calibration_loop_stall_seconds",
                "Longest the event loop woke late while the last calibration ran.",
                value=cal["loop_stall_max_ms"] / 1000,
            )
            yield GaugeMetricFamily(
                "nearline_lsh_calibration_loop_stall_before_seconds",
                "Longest the event loop woke late in as long a time just before it (baseline).",
                value=cal["loop_stall_before_max_ms"] / 1000,
            )
        yield GaugeMetricFamily(
            "nearline_redis_up",
            "1 when the last Redis write and the last ping succeeded.",
            value=1.0 if s["redis_ok"] else 0.0,
        )
        exp = s.get("experiment")
        if exp:
            counts = CounterMetricFamily(
                "nearline_experiment_events",
                "Online A/B metric counts per variant: events, events_on_list, positives, hits,"
                " lists.",
                labels=["variant", "metric"],
            )
            rate = GaugeMetricFamily(
                "nearline_experiment_hit_rate",
                "Share of positive events whose item was in the user's current list.",
                labels=["variant"],
            )
            for row in exp["variants"]:
                for m in ("events", "events_on_list", "positives", "hits", "lists"):
                    counts.add_metric([row["variant"], m], row[m])
                rate.add_metric([row["variant"]], row["hit_rate"])
            yield counts
            yield rate
        age = s.get("newest_event_age_s")
        if age is not None:
            yield GaugeMetricFamily(
                "nearline_newest_event_age_seconds",
                "Age of the newest processed event (Kafka timestamp).",
                value=age,
            )


class Metrics:
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "nearline_batch_size_events",
            "Events per micro-batch.",
            registry=self.registry,
            buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000),
        )
        self.batch_seconds = Histogram(
            "nearline_batch_processing_seconds",
            "Wall time of one micro-batch: decode, state, lists, Redis, publish.",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.waited = Histogram(
            "nearline_event_wait_seconds",
            "From an event's Kafka timestamp to the start of its micro-batch (time in Kafka "
            "and the consumer's buffers; the rest of event_to_list is the batch itself).",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.freshness = Histogram(
            "nearline_event_to_list_seconds",
            "From an event's Kafka timestamp to its user's list being in Redis.",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.registry.register(RuntimeCollector(snapshot))

    def observe_batch(
        self, n: int, seconds: float, freshness: list[float], waited: float | None = None
    ) -> None:
        if waited is not None:
            self.waited.observe(max(waited, 0.0))
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)
        for f in freshness:
            self.freshness.observe(max(f, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


FALLBACK_REASONS = ("redis_down", "budget", "error")
"""Why `nearline serve` answered from the shared/default tiers."""


class ServeCollector(Collector):
    """One `nearline serve` process's counters, read at scrape time."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        s = self.snapshot()
        c = s["counters"]
        reads = dict(sorted(s["reads"].items()))
        yield labelled_counter("nearline_serve_reads", "Reads answered, by tier.", "tier", reads)
        yield labelled_counter(
            "nearline_serve_fallbacks",
            "Reads answered from the shared/default tiers because Redis was down, the read"
            " budget ran out, or the read failed.",
            "reason",
            {r: s["fallbacks"].get(r, 0) for r in FALLBACK_REASONS},
        )
        yield CounterMetricFamily(
            "nearline_serve_invalidations",
            "Invalidation messages received from Redis.",
            value=c.get("invalidations", 0),
        )
        yield CounterMetricFamily(
            "nearline_serve_cache_flushes",
            "Whole-cache flushes (channel (re)started, Redis flushed, code registry changed).",
            value=c.get("flushes", 0),
        )
        yield GaugeMetricFamily(
            "nearline_serve_cache_entries", "Users in the cache.", value=s["cache_entries"]
        )
        yield GaugeMetricFamily(
            "nearline_serve_invalidation_up",
            "1 while the invalidation channel is established.",
            value=int(s["tracking"]),
        )
        yield GaugeMetricFamily(
            "nearline_serve_redis_up", "1 while Redis answers.", value=int(s["redis_ok"])
        )


def serve_registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ServeCollector(snapshot))
    return registry
