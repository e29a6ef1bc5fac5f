"""One settings object, read once from NEARLINE_* environment variables at the edge."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from enum import Enum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from nearline_rec.core.channels import REGISTRY
from nearline_rec.core.modes import ModeOverride
from nearline_rec.errors import ConfigurationError

ENV_PREFIX = "NEARLINE_"
ENV_NESTED = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of Kafka brokers."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the broker."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism when security_protocol is SASL_*."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (never logged or printed)."""
    ssl_cafile: str | None = None
    """CA bundle that signed the broker's certificate (SSL / SASL_SSL)."""
    ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""
    ssl_keyfile: str | None = None
    """Private key of the client certificate."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "NEARLINE_KAFKA__SASL_USERNAME and NEARLINE_KAFKA__SASL_PASSWORD are required"
                f" with security_protocol={self.security_protocol}"
            )
        return self


class TopicSettings(_Section):
    user_events: str = "user-events"
    """Input topic of user behaviour events (raw JSON bytes, key = user id)."""
    item_updates: str = "item-updates"
    """Compacted topic of item upserts/deletes (key = item id)."""
    recommendations: str = "recommendations"
    """Output topic of ranked per-user lists (key = user id)."""
    user_events_dlq: str = "user-events-dlq"
    """Dead letters of user-events: original bytes + reason + source position."""
    item_updates_dlq: str = "item-updates-dlq"
    """Dead letters of item-updates."""
    user_relations: str = "user-relations"
    """Compacted topic of friend-graph changes (key = follower TAB followee)."""
    friend_activity: str = "friend-activity"
    """Internal topic (key = user id): relations and friends' likes to the user's worker."""
    partitions: int = Field(4, ge=1, le=1024)
    """Partitions of user-events (and of every topic co-partitioned with it)."""
    replication_factor: int = Field(1, ge=1, le=16)
    """Replication factor used when the worker creates its topics."""
    min_insync_replicas: int | None = Field(None, ge=1, le=16)
    """min.insync.replicas of the topics the worker creates (unset: the broker's default);
    with acks=all a write is acknowledged once this many replicas have it. Use 2 with a
    replication factor of 3: one broker can fail with nothing acknowledged lost."""

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> TopicSettings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"NEARLINE_TOPICS__MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) cannot exceed"
                f" NEARLINE_TOPICS__REPLICATION_FACTOR ({self.replication_factor})"
            )
        return self


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (redis:// or rediss:// for TLS; add ?cluster=true for Redis Cluster)."""
    username: str | None = None
    """ACL user name (None = default user)."""
    password: SecretStr | None = None
    """Password of the ACL user (never logged or printed)."""
    ssl_ca_certs: str | None = None
    """CA bundle for rediss:// connections."""
    key_prefix: str = Field("nl:", min_length=1, max_length=32)
    """Prefix of every key this project writes."""
    list_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    """TTL of per-user lists and user embeddings in Redis."""
    socket_timeout: float = Field(2.0, gt=0, le=60)
    """Seconds before a Redis call times out."""
    retry_attempts: int = Field(6, ge=1, le=100)
    """Attempts per Redis write before the batch is retried as a whole."""
    retry_max_delay: float = Field(2.0, gt=0, le=60)
    """Cap of the exponential backoff between Redis attempts (seconds)."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{url!r} must start with redis://, rediss:// or unix://")
        return url


def cpu_list(text: str) -> set[int]:
    """The CPU numbers of a list as `taskset -c` takes it ("0,2-3"); empty for ""."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"{part!r} is not a CPU number or range (e.g. 1 or 2-3)")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _cpu_list_valid(value: str) -> str:
    cpu_list(value)  # a bad list: its one-line error when the settings load
    return value


CpuList = Annotated[str, AfterValidator(_cpu_list_valid)]
"""A CPU list as `taskset -c` takes it ("" = any CPU)."""


class WorkerSettings(_Section):
    app_id: str = Field("nearline-rec", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    """Faust app id = Kafka consumer group; workers with one id share the partitions."""
    batch_size: int = Field(1000, ge=1, le=100_000)
    """Most events handled in one micro-batch (bigger: fewer lists per event, staler lists)."""
    batch_within: float = Field(0.2, gt=0, le=60)
    """Seconds to wait for a micro-batch to fill."""
    fetch_max_wait: float = Field(0.05, gt=0, le=10)
    """Longest the broker holds a consumer fetch with no new data (Faust: 1.5 s)."""
    max_event_bytes: int = Field(64 * 1024, ge=256)
    """Events larger than this go to the dead-letter topic."""
    dead_letter_max_bytes: int = Field(256 * 1024, ge=1024, le=600 * 1024)
    """Most bytes of a record kept in its dead letter (more: cut, full length and sha256 kept)."""
    data_dir: str = "/tmp/nearline-rec"
    """Where Faust keeps per-app local data (one folder per app id below it)."""
    store: str = "memory://"
    """Faust table store (memory:// replays the changelog on start; rocksdb:// keeps it on
    local disk and reads only the changelog's tail; see docs/performance.md)."""
    rocksdb_block_cache_mb: int = Field(32, ge=1, le=1_000_000)
    """With rocksdb://: the read cache of each partition's database, in MB (Faust's own
    default is 2 GB each, enough to hold every state in memory again)."""
    rocksdb_write_buffer_mb: int = Field(16, ge=1, le=1_000_000)
    """With rocksdb://: each partition database's write buffer, in MB (up to 3 of them;
    Faust's own default is 64 MB)."""

    @field_validator("store")
    @classmethod
    def _store_usable(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("memory", "rocksdb"):
            raise ValueError(
                f"NEARLINE_WORKER__STORE: {scheme}:// is not a store; use memory:// or rocksdb://"
            )
        if scheme == "rocksdb" and not any(
            importlib.util.find_spec(m) is not None for m in ("rocksdict", "rocksdb")
        ):
            raise ValueError(
                "NEARLINE_WORKER__STORE=rocksdb:// needs rocksdict:"
                " pip install 'nearline-rec[rocksdb]'"
            )
        return value

    web_host: str = "127.0.0.1"
    """Address of the worker's web server."""
    web_port: int = Field(6066, ge=1, le=65535)
    """Port of the worker's web server."""
    faust_web_endpoints: bool = False
    """Serve Faust's /table/ and /router/ endpoints (table data, workers' URLs; no token)."""
    history_size: int = Field(200, ge=1, le=100_000)
    """Most recent events kept per user."""
    seen_size: int = Field(1000, ge=1, le=1_000_000)
    """Most items remembered as seen per user (never recommended again)."""
    dedupe_size: int = Field(500, ge=1, le=100_000)
    """Most recent event ids remembered per user for duplicate detection."""
    metadata_max_age: float = Field(10.0, ge=1, le=3600)
    """Seconds between metadata refreshes: how soon partitions added to a topic are used."""
    session_timeout: float = Field(10.0, ge=3, le=300)
    """Seconds without a heartbeat before the group hands a dead worker's partitions on."""
    cpus: CpuList = ""
    """The CPUs the worker may run on, as `taskset -c` takes them (`0`, `0-1`), so that on
    a host shared with `nearline serve` (NEARLINE_SERVE__CPUS on the others) reads keep off
    its core ("" = any CPU)."""


class ItemSettings(_Section):
    embedding_dim: int = Field(32, ge=2, le=4096)
    """Dimension of item embeddings; others are dead-lettered."""
    embedding_version: str = "v1"
    """Label of the item embeddings, recorded in every result."""


class EmbeddingUpdateSettings(_Section):
    half_life_seconds: float = Field(30 * 24 * 3600, gt=0)
    """Older engagement counts half as much after this long."""
    weight_click: float = 1.0
    """Pull of a click toward the item."""
    weight_view: float = 0.3
    """Pull of a view."""
    weight_like: float = 2.0
    """Pull of a like."""
    weight_purchase: float = 3.0
    """Pull of a purchase."""
    weight_dislike: float = -2.0
    """Push of a dislike (negative moves away)."""
    weight_skip: float = -0.3
    """Push of a skip."""
    rating_center: float = 3.0
    """Ratings above pull, below push; weight = (rating - center)."""
    like_threshold: float = Field(4.0, ge=0, le=5)
    """A rating at or above this counts as a liked item."""


class LSHSettings(_Section):
    w: float | None = Field(None, gt=0)
    """Bucket width (None = measured default for the catalog size)."""
    m: int | None = Field(None, ge=1, le=64)
    """Hash functions per table, ANDed (None = measured default)."""
    tables: int | None = Field(None, ge=1, le=512)
    """Tables L, ORed (None = measured default)."""
    probes: int | None = Field(None, ge=0, le=64)
    """Extra buckets probed per table on average, the nearest over all tables (None = default)."""
    combine: Literal["or", "and", "vote"] = "or"
    """How tables combine: any table, all tables, or at least vote_threshold."""
    vote_threshold: int = Field(2, ge=1)
    """Tables a candidate must appear in when combine=vote."""
    seed: int = 42
    """Seed of the projections: every replica must use the same one."""
    exact_below: int = Field(10_000, ge=0)
    """Below this many items, search exactly: as fast as LSH at 5-10k items (d=64), measured."""
    calibrate: bool = True
    """Measure recall on the catalogue and pick the setting (w, m, L, probes, sketch cut, cap or
    exact search) meeting target_recall: at start and after recalibrate_share of it changed."""
    target_recall: float = Field(0.95, gt=0, le=1)
    """Recall@10 against exact search the calibration must reach on taste-like queries."""
    calibration_queries: int = Field(400, ge=10, le=100_000)
    """Queries the calibration measures on; as many again, held out, give the recall shown."""
    calibration_budget_seconds: float = Field(60.0, gt=0)
    """Time a calibration may take for trying build settings (the first always completes)."""
    recalibrate_share: float = Field(0.2, gt=0)
    """Recalibrate in the background once this share of the items was added, moved or removed."""
    memory_ratio: float = Field(2.0, gt=1)
    """Most memory a calibrated index may hold, as a multiple of the raw float32 vectors."""
    calibration_in: Literal["process", "thread"] = "process"
    """Where a calibration runs: a child process (the vectors passed in shared memory, the
    index sent back) or a thread of the worker (shares the event loop's GIL and CPU)."""
    calibration_nice: int = Field(10, ge=0, le=19)
    """Niceness added to the calibration process, so the event loop gets a core first."""

    @model_validator(mode="after")
    def _probes_fit(self) -> LSHSettings:
        if self.probes is not None and self.m is not None and self.probes > 2 * self.m:
            raise ValueError(
                f"NEARLINE_LSH__PROBES ({self.probes}) must be at most 2 * NEARLINE_LSH__M"
                f" ({2 * self.m})"
            )
        return self


class ChannelSettings(_Section):
    enabled: bool = True
    """Whether the channel runs."""
    k: int = Field(50, ge=0, le=10_000)
    """Candidates the channel returns."""
    quota: int = Field(20, ge=0, le=10_000)
    """Most of its candidates kept after merging."""


def _ch(name: str) -> ChannelSettings:
    """A channel's section with the defaults its module registered (app/core/channels/)."""
    channel = REGISTRY[name]
    return ChannelSettings(k=channel.k, quota=channel.quota)


class RecallSettings(_Section):
    embedding: ChannelSettings = _ch("embedding")
    """User embedding -> nearest items (LSH)."""
    item2item: ChannelSettings = _ch("item2item")
    """Neighbours of the user's last liked items."""
    similar_users: ChannelSettings = _ch("similar_users")
    """Recent liked items of users in the same LSH buckets."""
    genre: ChannelSettings = _ch("genre")
    """Best-rated items of genres the user rated highly."""
    trending: ChannelSettings = _ch("trending")
    """Time-decayed popularity from the stream."""
    newest: ChannelSettings = _ch("newest")
    """Most recently released items."""
    short_term: ChannelSettings = _ch("short_term")
    """Recency-weighted sum of the last liked items' vectors -> nearest items."""
    friends: ChannelSettings = _ch("friends")
    """Items the user's friends liked recently (user-relations)."""
    item2item_seeds: int = Field(5, ge=1, le=100)
    """How many last liked items seed item-to-item."""
    item2item_cache: int = Field(10_000, ge=0, le=10_000_000)
    """Items whose neighbour lists stay in memory (~3 KB each; 0 = search every time)."""
    similar_users_n: int = Field(20, ge=1, le=1000)
    """How many similar users to draw items from."""
    similar_users_max: int = Field(200_000, ge=0, le=100_000_000)
    """Users the similar-users directory keeps, the most recently active (0 = every owned
    user; ~1 KB each at 32 dimensions)."""
    search_threads: int = Field(2, ge=1, le=64)
    """Threads a micro-batch's nearest-neighbour searches are split over (they run in
    compiled code without the GIL, so a second core serves them while one process drains a
    backlog; with one worker process per core they add little). 1 = on the event loop's
    thread."""
    friends_half_life_seconds: float = Field(7 * 24 * 3600, gt=0)
    """Half-life of a friend's like in the friends channel's score."""
    friends_max: int = Field(1000, ge=1, le=1_000_000)
    """Friends a user's state keeps; past it a fixed pseudo-random sample of them."""
    friends_followers_max: int = Field(1000, ge=1, le=1_000_000)
    """Followers a user's state keeps to forward likes to (sampled alike past it)."""
    friends_fanout_per_like: int = Field(100, ge=1, le=100_000)
    """Followers one like is forwarded to (a fresh pseudo-random sample per like)."""
    friends_likes_kept: int = Field(200, ge=1, le=100_000)
    """Friends' likes a user's state keeps, newest first (bounds the channel's work)."""
    friends_backfill: int = Field(20, ge=0, le=1000)
    """A new follower gets this many of the user's most recent likes at once."""
    genre_min_ratings: int = Field(3, ge=1)
    """Ratings an item needs before the genre rule trusts its average."""
    popularity_half_life_seconds: float = Field(30 * 24 * 3600, gt=0)
    """Half-life of trending scores."""


class RankingSettings(_Section):
    model_path: str | None = None
    """Ranking model: linear JSON, or learned .onnx with its .card.json (None = shipped)."""
    budget_ms: float = Field(50.0, gt=0, le=60_000)
    """Budget of one learned-model call (a batch); over it the linear model ranks."""
    cooldown_seconds: float = Field(30.0, ge=0, le=3600)
    """How long the linear model stands in after a learned-model call over budget."""
    reload_seconds: float = Field(5.0, gt=0, le=3600)
    """How often the worker checks the .onnx file and card for a new model (between batches)."""
    top_n: int = Field(20, ge=1, le=1000)
    """Length of each user's list."""
    max_per_genre: int = Field(8, ge=1, le=1000)
    """Diversity: most items sharing a primary genre in the list."""


class DegradeSettings(_Section):
    mode: ModeOverride = ModeOverride.AUTO
    """Start mode: auto follows lag; degraded/normal force it (changeable at run time)."""
    lag_high: int = Field(5000, ge=1)
    """Enter degraded mode when this worker's lag stays at or above this many events..."""
    lag_low: int = Field(500, ge=0)
    """...and leave it when lag falls to or below this (must be below lag_high)."""
    hold_seconds: float = Field(3.0, ge=0, le=3600)
    """How long lag must stay above lag_high before degrading (filters spikes)."""
    check_interval: float = Field(1.0, gt=0, le=60)
    """Seconds between lag measurements."""
    recompute_rate: float = Field(200.0, gt=0)
    """Dirty users recomputed per second after recovery (oldest first)."""
    popular_size: int = Field(100, ge=1, le=10_000)
    """Length of the precomputed popularity lists."""
    refresh_seconds: float = Field(5.0, gt=0, le=3600)
    """How often popularity and cold-start lists are refreshed into Redis."""
    shared_stats: bool = True
    """Count item statistics (popularity, ratings) in Redis for all workers together, so
    every worker ranks with, and one worker writes the shared lists from, the same figures
    (false: each worker counts its own partitions' events in memory)."""
    stats_interval: float = Field(1.0, gt=0, le=3600)
    """Seconds between reads of the shared item statistics' changes from Redis."""

    @model_validator(mode="after")
    def _low_below_high(self) -> DegradeSettings:
        if self.lag_low >= self.lag_high:
            raise ValueError(
                f"NEARLINE_DEGRADE__LAG_LOW ({self.lag_low}) must be below"
                f" NEARLINE_DEGRADE__LAG_HIGH ({self.lag_high})"
            )
        return self


class ServeSettings(_Section):
    cache_ttl_seconds: float = Field(2.0, ge=0, le=3600)
    """TTL of the in-process list cache (0 = none); `nearline serve`: while not invalidated."""
    tracked_cache_ttl_seconds: float = Field(300.0, gt=0, le=86400)
    """`nearline serve`: TTL of a cache entry while Redis invalidates it on every change."""
    cache_max_users: int = Field(100_000, ge=1)
    """`nearline serve`: most users in a process's cache (the oldest entry goes first)."""
    read_budget_ms: float = Field(50.0, gt=0, le=60_000)
    """`nearline serve`: longest wait for Redis; past it the shared/default tiers answer."""
    redis_connections: int = Field(32, ge=1, le=10_000)
    """`nearline serve`: Redis connections per process (more concurrent reads wait for one)."""
    health_interval_seconds: float = Field(0.5, gt=0, le=60)
    """`nearline serve`: seconds between Redis pings (a down Redis is not asked per read)."""
    host: str = "127.0.0.1"
    """`nearline serve`: address to listen on."""
    port: int = Field(6067, ge=1, le=65535)
    """`nearline serve`: port all of its processes share."""
    processes: int = Field(1, ge=0, le=256)
    """`nearline serve`: processes pre-forked on one port, each its own socket (0: one per CPU)."""
    backlog: int = Field(2048, ge=16, le=65535)
    """`nearline serve`: listen backlog of each process's socket."""
    keepalive_seconds: float = Field(75.0, gt=0, le=3600)
    """`nearline serve`: an idle client connection is closed after this many seconds."""
    nice: int = Field(0, ge=0, le=19)
    """`nearline serve`: CPU priority lowered by this much (as `nice`), so that on a host
    shared with a worker, reads take the CPU the worker leaves (0: same priority)."""
    sched_idle: bool = False
    """`nearline serve`: run its processes under Linux's SCHED_IDLE policy: they get a CPU
    only when nothing of normal priority wants it (a worker's thread that wakes up takes
    the CPU at once, which a nice value does not promise), so that on a host shared with a
    worker, reads use only the CPU the worker leaves idle."""
    cpus: CpuList = ""
    """`nearline serve`: the CPUs its processes may run on, as `taskset -c` takes them
    (`1`, `2-3`, `0,2`), so that on a host shared with a worker the reads keep off the
    worker's core ("" = any CPU)."""

    stale_after_seconds: float = Field(3600.0, gt=0)
    """A list older than this is reported stale."""
    default_k: int = Field(10, ge=1, le=1000)
    """Items returned when the request has no k."""
    token: SecretStr | None = None
    """When set, endpoints other than /health want `Authorization: Bearer <token>` (secret)."""
    log_json: bool = False
    """Log one JSON object per line (with user_id, partition, offset, mode where they apply)."""


class VariantSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,40}$")
    """Variant name, recorded in every list and result."""
    share: float = Field(gt=0, le=1)
    """Fraction of users assigned to the variant (shares sum to 1)."""
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-variant settings: {"recall": {...}, "ranking": {...}} in the sections' own shape,
    e.g. {"ranking": {"top_n": 10, "model_path": "b.json"}, "recall": {"genre": {"quota": 40}}}."""

    @model_validator(mode="after")
    def _known_sections(self) -> VariantSettings:
        unknown = set(self.overrides) - {"recall", "ranking"}
        if unknown:
            raise ValueError(
                f"variant {self.name!r} overrides {sorted(unknown)}: only recall and ranking"
                " settings can differ by variant (state and index are shared)"
            )
        return self


class ExperimentSettings(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9._-]{1,40}$")
    """Experiment name: part of the assignment hash, so a new name reshuffles users."""
    variants: list[VariantSettings] = Field(
        default_factory=lambda: [VariantSettings(name="control", share=1.0)]
    )
    """JSON list of variants with traffic shares and overrides (default: one, `control`)."""

    @model_validator(mode="after")
    def _shares(self) -> ExperimentSettings:
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError("NEARLINE_EXPERIMENTS__VARIANTS needs distinct variant names")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"NEARLINE_EXPERIMENTS__VARIANTS shares sum to {total:g}, not 1")
        return self


class Settings(BaseSettings):
    """Everything the worker and the CLI can be told; NEARLINE_<SECTION>__<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    items: ItemSettings = ItemSettings()
    embedding: EmbeddingUpdateSettings = EmbeddingUpdateSettings()
    lsh: LSHSettings = LSHSettings()
    recall: RecallSettings = RecallSettings()
    ranking: RankingSettings = RankingSettings()
    degrade: DegradeSettings = DegradeSettings()
    serve: ServeSettings = ServeSettings()
    experiments: ExperimentSettings = ExperimentSettings()


class SettingsError(ConfigurationError):
    """A setting is invalid; the message is one line naming it."""


def _env_name(loc: tuple[object, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(str(p).upper() for p in loc)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError with a one-line message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        from nearline_rec.security import mask_secrets

        err = exc.errors()[0]
        # a validator may quote the value, and a URL's value may hold a password
        msg = mask_secrets(err["msg"].removeprefix("Value error, "))
        raise SettingsError(f"invalid setting {_env_name(err['loc'])}: {msg}") from None
    except _SourceError as exc:
        # pydantic-settings fails before validation when a section's value is not JSON.
        found = re.search(r'field "([^"]+)"', str(exc))
        name = _unparsable_section_var(found.group(1) if found else "")
        raise SettingsError(f"invalid setting {name}: a section must be a JSON object") from None


def _unparsable_section_var(section: str) -> str:
    """The env var under `section` that sets a whole (sub)section to a non-object value."""
    prefix = _env_name((section,))
    for name in sorted(os.environ):
        upper = name.upper()
        if upper != prefix and not upper.startswith(prefix + ENV_NESTED):
            continue
        model: type[BaseModel] = Settings
        for part in upper.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED):
            field = model.model_fields.get(part)
            ann = None if field is None else field.annotation
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                break
            model = ann
        else:
            try:
                if isinstance(json.loads(os.environ[name]), dict):
                    continue
            except ValueError:
                pass
            return name
    return prefix


def secret_setting_names() -> set[str]:
    """Env vars of the SecretStr settings: their values are never printed."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: list[str]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, [*prefix, name])
            elif ann is SecretStr or SecretStr in get_args(ann):
                names.add(_env_name((*prefix, name)))

    walk(Settings, [])
    return names


def iter_setting_docs() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting: docs/settings.md's table."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], defaults: BaseModel | None, prefix: list[str]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            # a section's default instance may differ from its class defaults (channel k/quota)
            default = getattr(defaults, name) if defaults is not None else field.default
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, default if isinstance(default, BaseModel) else None, [*prefix, name])
                continue
            if isinstance(default, SecretStr):
                default = "***"
            elif isinstance(default, Enum):
                default = default.value  # the value an environment variable spells
            doc = " ".join((field.description or "").split())  # one line, however written
            rows.append((_env_name((*prefix, name)), repr(default), doc))

    walk(Settings, None, [])
    return rows
