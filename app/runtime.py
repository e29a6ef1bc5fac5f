"""The worker's mutable per-process state (the Runtime): the core, the store, the ranker,
the calibration, counters. Built by nearline_rec.composition when the worker starts, not at
import."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, OrderedDict, deque
from typing import Any

from nearline_rec.calibration import CalibrationRunner
from nearline_rec.core.degrade import LagPolicy, LagThresholds
from nearline_rec.core.experiments import Variant, summarize
from nearline_rec.core.popularity import ItemCount
from nearline_rec.core.rank import load_model
from nearline_rec.factory import build_recommender, build_variants
from nearline_rec.logs import log_fields
from nearline_rec.metrics import Metrics
from nearline_rec.processing import BatchProcessor
from nearline_rec.ranking import ServedRanker, is_onnx
from nearline_rec.serving import ListReader
from nearline_rec.settings import Settings
from nearline_rec.storage.store import WorkerStore

log = logging.getLogger("nearline")


@dataclasses.dataclass
class SharedStatsView:
    """Where this worker is in the shared item statistics (app/storage, {stats} keys)."""

    seq: int = 0
    """Sequence number of the last count read."""
    counts: dict[str, ItemCount] = dataclasses.field(default_factory=dict)
    """Every item's totals read so far (items the catalog does not hold yet included)."""
    catalog_seen: tuple[int, int] = (-1, -1)
    read_at: float = 0.0
    writer: bool = False
    """This worker writes the shared lists (popular, cold start, per genre)."""

    def reset(self) -> None:
        self.seq, self.catalog_seen = 0, (-1, -1)
        self.counts.clear()

    def status(self) -> dict[str, Any]:
        return {
            "items": len(self.counts),
            "sequence": self.seq,
            "read_at": self.read_at,
            "writes_shared_lists": self.writer,
        }


class Runtime:
    """Mutable per-process state shared by the agents; one per worker process."""

    def __init__(self, settings: Settings, store: WorkerStore | None = None) -> None:
        """`store`: the store to write to (tests: an in-memory one); by default the Redis
        store of the settings, made on first use."""
        self.settings = settings
        # a bad setting raises SettingsError: the entry points print it on one line
        self.recommender = build_recommender(settings, learned_required=False)
        variants = build_variants(settings, self.recommender, learned_required=False)
        self.ranker: ServedRanker | None = None
        """The learned model file being served (NEARLINE_RANKING__MODEL_PATH is an .onnx)."""
        r = settings.ranking
        if is_onnx(r.model_path):
            self.ranker = ServedRanker(
                r.model_path,  # type: ignore[arg-type]
                load_model(None),
                budget_ms=r.budget_ms,
                reload_seconds=r.reload_seconds,
                cooldown_seconds=r.cooldown_seconds,
            )
            if self.ranker.error:
                log.error("ranking model: %s; ranking with the linear model", self.ranker.error)
        self.processor = BatchProcessor(
            self.recommender,
            max_event_bytes=settings.worker.max_event_bytes,
            dead_letter_max_bytes=settings.worker.dead_letter_max_bytes,
            source_topic=settings.topics.user_events,
            variants=variants,
            experiment=settings.experiments.name,
            activity_topic=settings.topics.friend_activity,
        )
        self.shared_stats = SharedStatsView()
        if settings.degrade.shared_stats:  # counted in Redis by all workers, read back
            for rec in {id(r): r for r in (self.recommender, *variants.values())}.values():
                rec.count_locally = False
        self.processor.set_shares({v.name: v.share for v in settings.experiments.variants})
        self._flushed_experiment: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.started_at = time.time()
        self.redis_ok = True
        self.redis_ping_ok = True
        self.redis_refusal: str | None = None
        self.effects_error: str | None = None
        """Why no record of the held batch can be written (the worker's fault), or None."""
        self.rebuild_token: str | None = None
        """The last `nearline rebuild-lists` token seen (a new one starts a rebuild)."""
        self.rebuild_token_seen = False
        self.last_rebuild: dict[str, Any] | None = None
        """Code of the error reply with which Redis refuses writes now (OOM, READONLY, ...)."""
        """Result of the last Redis ping by the lag monitor (readiness, even without traffic)."""
        self.last_batch_at = 0.0
        self.last_event_time = 0.0
        self.last_message_time = 0.0
        """Kafka timestamp of the newest processed event (its age is the freshness lag)."""
        self._store: WorkerStore | None = store
        self._catalog_ready: asyncio.Event | None = None
        d = settings.degrade
        self.policy = LagPolicy(LagThresholds(d.lag_high, d.lag_low, d.hold_seconds), d.mode)
        self.popular_rows: list[tuple[int, float, str]] = []
        """Precomputed popular items (key, score, channel): the degraded list before filtering."""
        self.retired: set[str] = set()
        """Items retired since the last scan for users whose list holds them."""
        self.dirty: OrderedDict[str, float] = OrderedDict()
        """Users served degraded lists, oldest first, waiting for a normal recompute."""
        self.lag: dict[int, int] = {}
        """Lag per assigned user-events partition at the last measurement."""
        self.lag_measured_at = 0.0
        self.calibration = CalibrationRunner(
            self.recommender.catalog,
            settings.lsh,
            events_done=lambda: self.counters.get("events_done", 0),
        )
        self.metrics = Metrics(self.status)
        self._reader: ListReader | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=3600)
        """One sample per lag check: time, lag, mode, events/s (for the status page)."""

    def refresh_model(self) -> None:
        """Between batches: pick up a changed model file, and set the model the next batch
        is ranked with (so every list of a batch records one model version)."""
        if self.ranker is None:
            return
        error = self.ranker.error
        if self.ranker.check():
            log_event("ranking model loaded", version=self.ranker.learned.version)  # type: ignore[union-attr]
        elif self.ranker.error and self.ranker.error != error:
            log.error("ranking model: %s; keeping the previous model", self.ranker.error)
        self.recommender.model = self.ranker.model_for_batch()

    @property
    def store(self) -> WorkerStore:
        # Created on first use so the client binds to the worker's running loop.
        if self._store is None:
            from nearline_rec.storage.redis_store import RedisStore

            self._store = RedisStore(self.settings.redis)
        return self._store

    @property
    def experiment_variants(self) -> list[Variant]:
        return [Variant(v.name, v.share) for v in self.settings.experiments.variants]

    def experiment_delta(self) -> dict[str, int]:
        """Online-metric counts since the last flush (to add to the shared Redis hash)."""
        counts = self.processor.metric.counts
        delta = {
            k: v - self._flushed_experiment[k]
            for k, v in counts.items()
            if v != self._flushed_experiment[k]
        }
        return delta

    def experiment_flushed(self, delta: dict[str, int]) -> None:
        self._flushed_experiment.update(delta)

    @property
    def reader(self) -> ListReader:
        if self._reader is None:
            self._reader = ListReader(
                self.store,
                cache_ttl=self.settings.serve.cache_ttl_seconds,
                default=self.default_list,
            )
        return self._reader

    def default_list(self) -> dict[str, Any]:
        """Built-in last resort: the in-memory popular list (works with Redis down)."""
        rec = self.recommender
        if not len(rec.catalog):
            return {"items": [], "mode": "cold_start", "degraded": False, "version": 0}
        shared = dataclasses.replace(rec.popular_list(rec.config.top_n), mode="cold_start")
        return shared.to_json(version=0, generated_at=time.time())

    @property
    def catalog_ready(self) -> asyncio.Event:
        if self._catalog_ready is None:
            self._catalog_ready = asyncio.Event()
        return self._catalog_ready

    def status(self) -> dict[str, Any]:
        cat = self.recommender.catalog
        params = cat.lsh_params
        return {
            "app_id": self.settings.worker.app_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "catalog_ready": self._catalog_ready is not None and self._catalog_ready.is_set(),
            "items": len(cat),
            "index": "lsh" if params else "exact",
            "lsh": None
            if params is None
            else {
                "w": params.w,
                "m": params.m,
                "L": params.L,
                "probes": params.probes,
                "combine": params.combine,
                "sketch_keep": params.sketch_keep,
                "max_candidates": params.max_candidates,
            },
            "calibration": self.calibration.status(),
            "users_indexed": len(self.recommender.users),
            "item2item_cache": {
                "entries": len(cat.neighbour_cache),
                "hits": cat.neighbour_cache.hits,
                "misses": cat.neighbour_cache.misses,
                "dropped": cat.neighbour_cache.dropped,
            },
            "mode": self.policy.mode,
            "override": self.policy.override,
            "lag": sum(self.lag.values()),
            "lag_by_partition": {str(p): v for p, v in sorted(self.lag.items())},
            "lag_measured_at": self.lag_measured_at,
            "newest_event_age_s": (
                round(time.time() - self.last_message_time, 3) if self.last_message_time else None
            ),
            "dirty_users": len(self.dirty),
            "transitions": [
                {"at": t.at, "mode": t.mode, "lag": t.lag, "reason": t.reason}
                for t in self.policy.transitions[-20:]
            ],
            # the last batch write and the last ping (a quiet worker notices an outage too)
            "redis_ok": self.redis_ok and self.redis_ping_ok,
            "redis_refusal": self.redis_refusal,
            "last_rebuild": self.last_rebuild,
            "effects_error": self.effects_error,
            "redis_errors": self._store.errors if self._store else 0,
            "redis_retries": self._store.retries if self._store else 0,
            "reads": dict(self._reader.reads) if self._reader else {},
            "throughput_eps": self.history[-1]["eps"] if self.history else 0.0,
            "agent_crashes": {
                k.removeprefix("agent_crashes_"): v
                for k, v in self.counters.items()
                if k.startswith("agent_crashes_")
            },
            "processing_errors": self.counters["processing_errors"],
            "counters": dict(self.counters),
            "dead_letters": dict(self.dead_letters),
            "last_batch_at": self.last_batch_at,
            "model_version": self.recommender.model.version,
            "ranker": (
                self.ranker.status()
                if self.ranker is not None
                else {"learned_version": None, "fallback_version": self.recommender.model.version}
            ),
            "experiment": {
                "name": self.settings.experiments.name,
                "variants": summarize(self.processor.metric.counts, self.experiment_variants),
            },
            "embedding_version": self.recommender.embedding_version,
            "shared_stats": self.shared_stats.status()
            if self.settings.degrade.shared_stats
            else None,
        }


def log_event(msg: str, **fields: Any) -> None:
    """Structured log line: message plus fields (user_id=, partition=, offset=, mode=...)."""
    log_fields(log, msg, **fields)
