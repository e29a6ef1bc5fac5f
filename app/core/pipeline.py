"""The recommendation pipeline: user state -> recall channels -> merge/filter -> rank -> list."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.channels import build_channels, default_configs
from nearline_rec.core.channels.newest import newest_recall
from nearline_rec.core.channels.trending import trending_recall
from nearline_rec.core.events import UserEvent
from nearline_rec.core.modes import ListMode
from nearline_rec.core.popularity import ItemStats, top_keys
from nearline_rec.core.rank import RankModel, diversify, learned_features, rank
from nearline_rec.core.recall import Candidate, ChannelConfig, RecallContext, _want, merge
from nearline_rec.core.social import (
    Activity,
    SocialChange,
    SocialPolicy,
    apply_activity,
    like_forwards,
)
from nearline_rec.core.user_state import UpdatePolicy, UserState, apply_event
from nearline_rec.core.users import UserDirectory


@dataclass(frozen=True)
class PipelineConfig:
    channels: tuple[ChannelConfig, ...] = field(default_factory=default_configs)
    channel_options: Mapping[str, Any] = field(default_factory=dict)
    """Options the channels read by name (the recall settings: `item2item_seeds`, ...)."""
    top_n: int = 20
    max_per_genre: int = 8
    like_threshold: float = 4.0


class ListRow(NamedTuple):
    """A row of a list before it is finished: catalogue key, score, recall channel. The
    precomputed popularity rows travel like this from the pipeline through the runtime to
    the degraded lists."""

    key: int
    score: float
    channel: str


class RecItem(NamedTuple):
    item_id: str
    score: float
    channel: str
    title: str


@dataclass(frozen=True)
class RecList:
    user_id: str
    items: tuple[RecItem, ...]
    mode: ListMode
    model_version: str
    embedding_version: str
    event_time: float
    variant: str = "control"

    @property
    def degraded(self) -> bool:
        return self.mode == ListMode.DEGRADED

    def to_json(self, *, version: int, generated_at: float) -> dict[str, Any]:
        """The Redis list value (schemas/redis-user-list.schema.json)."""
        return {
            "user_id": self.user_id,
            "items": [
                {"item_id": i.item_id, "score": i.score, "channel": i.channel, "title": i.title}
                for i in self.items
            ],
            "degraded": self.degraded,
            "mode": self.mode,
            "model_version": self.model_version,
            "embedding_version": self.embedding_version,
            "generated_at": generated_at,
            "version": version,
            "event_time": self.event_time,
            "variant": self.variant,
        }


def own_likes(state: UserState) -> list[tuple[str, float]]:
    """The user's likes still standing, (item, time of the last event on it), oldest first."""
    liked = set(state.liked)
    when: dict[str, float] = {}
    for item_id, _, ts, _ in state.history:
        if item_id in liked:
            when[item_id] = ts
    return [(i, when.get(i, state.last_event_time)) for i in state.liked]


PREFETCH_CHUNK = 64
"""Users whose searches `recommend_many` makes in one call (and whose masks it holds)."""


class Recommender:
    """Holds the shared in-process state (catalog, stream statistics, user directory) and
    turns one user's state into a ranked list. Pure: no I/O, deterministic for equal inputs."""

    def __init__(
        self,
        catalog: ItemCatalog,
        model: RankModel,
        *,
        config: PipelineConfig | None = None,
        policy: UpdatePolicy | None = None,
        popularity_half_life: float = 24 * 3600,
        user_index: IndexConfig | None = None,
        embedding_version: str = "v1",
        social: SocialPolicy | None = None,
        users_max: int = 0,
        search_threads: int = 1,
    ) -> None:
        self.catalog = catalog
        self.model = model
        self.config = config or PipelineConfig()
        self.policy = policy or UpdatePolicy(like_threshold=self.config.like_threshold)
        self.stats = ItemStats(popularity_half_life)
        self.count_locally = True
        """False: the item statistics are counted elsewhere (by every worker together, in
        Redis) and set into `stats`; applying an event then leaves them alone."""
        self.users = UserDirectory(
            catalog.dim, user_index or catalog.config, item_key=catalog.key, max_users=users_max
        )
        self.embedding_version = embedding_version
        self.social = social or SocialPolicy()
        self.variant = "control"
        """Experiment variant whose recall/ranking settings this instance uses."""
        self.channels = build_channels(list(self.config.channels), self.config.channel_options)
        self.search_threads = search_threads
        """Threads the searches of a micro-batch's lists are split over (`recommend_many`)."""

    def as_variant(self, name: str, config: PipelineConfig, model: RankModel) -> Recommender:
        """A view with other recall/ranking settings over the same catalog, statistics and
        user directory (the shared state is never copied)."""
        other = copy.copy(self)
        other.variant = name
        other.config = config
        other.model = model
        other.channels = build_channels(list(config.channels), config.channel_options)
        return other

    # -- state ----------------------------------------------------------------------------
    def apply(
        self, state: UserState, event: UserEvent, offset: int, partition: int = 0, source: str = ""
    ) -> bool:
        """Apply one event to the user's state and the stream statistics (idempotent; the
        offset is the event's in its source `partition` of topic incarnation `source`)."""
        applied = apply_event(
            state, event, offset, self.catalog.vector, self.policy, partition, source
        )
        if applied and self.count_locally:
            key = self.catalog.key(event.item_id)
            if key is not None:
                self.stats.add(key, self.count_weight(event), event.timestamp, event.rating)
        return applied

    def count_weight(self, event: UserEvent) -> float:
        """What an event adds to its item's popularity (a rating: its share of 5 stars)."""
        if event.type == "rating":
            return max(event.rating or 0.0, 0.0) / 5.0
        return self.policy.weight(event)

    def counts(self, event: UserEvent) -> bool:
        """The event is one the item statistics count (its item is in the catalog)."""
        return self.catalog.key(event.item_id) is not None

    def reapply(
        self, state: UserState, event: UserEvent, offset: int, partition: int = 0, source: str = ""
    ) -> bool:
        """Apply an event to the user's state only, its statistics already counted (a state
        rebuilt after another event of the batch failed half way)."""
        return apply_event(
            state, event, offset, self.catalog.vector, self.policy, partition, source
        )

    def apply_social(self, state: UserState, act: Activity) -> SocialChange:
        """Apply one friend-activity record (idempotent: last writer wins per edge, one like
        per friend and item). A change moves the user's list position on, so a list made
        from it outranks the one before."""
        # the user's own likes are a new follower's backfill: read only for that record
        likes = own_likes(state) if act.kind == "follower" and act.action == "add" else []
        change = apply_activity(state, act, self.social, likes)
        if change.changed:
            state.last_offset += 1
        return change

    def friends_top(self, state: UserState) -> tuple[int, ...]:
        """The items the friends channel gives the merge for this user (its quota), in
        order; empty when the channel is off."""
        for cfg, fn in self.channels:
            if cfg.name == "friends":
                return tuple(c.key for c in fn(self.context(state), cfg.quota))
        return ()

    def like_forwards(self, state: UserState, event: UserEvent) -> list[Activity]:
        """The records a like becomes for the user's followers (none for other events)."""
        if not state.followers or not self.policy.is_like(event):
            return []
        return like_forwards(state, event.item_id, event.timestamp, event.event_id, self.social)

    def touch(self, state: UserState) -> None:
        """Move the user in the similar-users buckets after its embedding changed."""
        self.users.update(state.user_id, state.embedding, state.liked, state.last_event_time)

    # -- lists ----------------------------------------------------------------------------
    def context(self, state: UserState) -> RecallContext:
        exclude = self.catalog.keys_of(state.seen)
        now = max(self.stats.now, state.last_event_time)
        if now <= 0.0 and len(self.catalog):
            # No event seen yet (a fresh or restarted worker): without a stream clock nothing
            # counts as released and the cold-start list would be empty, so the newest
            # release in the catalog stands in for the clock until the first event.
            now = float(self.catalog.release_ts[self.catalog.live_keys()].max())
        return RecallContext(
            user=state,
            embedding=state.embedding,
            catalog=self.catalog,
            stats=self.stats,
            users=self.users,
            now=now,
            like_threshold=self.config.like_threshold,
            exclude=exclude,
        )

    def recall(self, state: UserState) -> list[tuple[ChannelConfig, list[Candidate]]]:
        ctx = self.context(state)
        return [(cfg, fn(ctx, cfg.k)) for cfg, fn in self.channels]

    def recommend(self, state: UserState) -> RecList:
        if self.model.scorer is not None:  # one batch of one: the learned path and fallback
            got = self.recommend_many([state])[0]
            if isinstance(got, Exception):
                raise got
            return got
        ctx = self.context(state)
        if ctx.embedding is None and not state.liked and not state.friend_likes:
            return self._finish(state, self.cold_start(ctx), ListMode.COLD_START)
        cands = merge([(cfg, fn(ctx, cfg.k)) for cfg, fn in self.channels])
        return self._ranked(state, cands, ctx, self.model)

    def _ranked(
        self, state: UserState, cands: list[Candidate], ctx: RecallContext, model: RankModel
    ) -> RecList:
        ranked = rank(
            cands, ctx, model, top_n=self.config.top_n, max_per_genre=self.config.max_per_genre
        )
        return self._finish(
            state, [ListRow(r.key, r.score, r.channel) for r in ranked], ListMode.PERSONAL
        )

    def prefetch(self, contexts: list[RecallContext]) -> None:
        """Run the searches the channels of these users' lists will make, all at once (one
        compiled call per kind, split over `search_threads`): each user's nearest items to
        its embedding and to its short-term taste, its similar users, and the neighbours of
        the micro-batch's seed items the cache lacks. The channels read the answers from
        the contexts (`RecallContext.found`); the lists are the same as without."""
        if len(contexts) < 2:
            return
        enabled = {cfg.name: cfg for cfg, _ in self.channels}
        options = self.config.channel_options
        threads = self.search_threads
        cat = self.catalog
        masks = np.empty((len(contexts), len(cat.recommendable_mask)), dtype=np.bool_)
        for row, ctx in enumerate(contexts):
            ctx.admissible_into(masks[row])
        queries: list[np.ndarray] = []
        ks: list[int] = []
        owners: list[tuple[int, str]] = []
        for name, query_of in (
            ("embedding", lambda c: c.embedding),
            ("short_term", RecallContext.short_term),
        ):
            if name in enabled and enabled[name].k > 0:
                for row, ctx in enumerate(contexts):
                    q = query_of(ctx)
                    if q is not None:
                        queries.append(q)
                        ks.append(enabled[name].k)
                        owners.append((row, name))
        if queries:
            found = cat.search_many(
                queries,
                ks,
                allowed=masks,
                allowed_of=np.fromiter((r for r, _ in owners), np.int64, len(owners)),
                threads=threads,
            )
            for (row, name), q, k, (keys, scores) in zip(owners, queries, ks, found, strict=True):
                contexts[row].found[(name, k)] = (q, keys, scores)
        if "similar_users" in enabled and enabled["similar_users"].k > 0:
            n = int(options.get("similar_users_n", 20))
            with_emb = [ctx for ctx in contexts if ctx.embedding is not None]
            lists = self.users.similar_many(
                [c.user.user_id for c in with_emb],
                [c.embedding for c in with_emb],  # type: ignore[misc]
                n,
                threads,
            )
            for ctx, got in zip(with_emb, lists, strict=True):
                ctx.found[("similar_users", n)] = got
        if "item2item" in enabled and enabled["item2item"].k > 0:
            seeds = int(options.get("item2item_seeds", 5))
            keys = [
                key
                for ctx in contexts
                for item_id in ctx.user.liked[-seeds:]
                if (key := cat.key(item_id)) is not None
            ]
            cat.prefetch_neighbours(keys, _want(contexts[0], enabled["item2item"].k), threads)

    def recommend_many(self, states: list[UserState]) -> list[RecList | Exception]:
        """Lists for several users with one call of a learned model over all their
        candidates (a micro-batch); the linear ranker is used as it is. A user whose recall
        raises gets the exception in its place. When the learned scorer raises (missing,
        invalid or slow model: the serving wrapper decides), the batch is ranked by
        `model.fallback` and its lists record that model's version."""
        model = self.model
        out: list[RecList | Exception] = []
        pending: list[tuple[int, list[Candidate], RecallContext]] = []
        contexts: dict[int, RecallContext] = {}
        for i, state in enumerate(states):
            try:
                ctx = self.context(state)
                cold = ctx.embedding is None and not state.liked
                if model.scorer is None:
                    cold = cold and not state.friend_likes
                if cold:
                    out.append(self._finish(state, self.cold_start(ctx), ListMode.COLD_START))
                else:
                    out.append(Exception("pending"))
                    contexts[i] = ctx
            except Exception as exc:  # contained to the user, as recommend() is
                out.append(exc)
        order = list(contexts)
        # in chunks: a user's admissible mask is a byte an item (1 MB at 1M items), and a
        # chunk's masks live together until its recall is done
        for start in range(0, len(order), PREFETCH_CHUNK):
            chunk = order[start : start + PREFETCH_CHUNK]
            self.prefetch([contexts[i] for i in chunk])
            for i in chunk:
                ctx = contexts[i]
                try:
                    cands = merge([(cfg, fn(ctx, cfg.k)) for cfg, fn in self.channels])
                    if model.scorer is None:
                        out[i] = self._ranked(states[i], cands, ctx, model)
                    else:
                        pending.append((i, cands, ctx))
                except Exception as exc:  # contained to the user, as recommend() is
                    out[i] = exc
                finally:
                    ctx.release()
        if not pending:
            return out
        used = model
        try:
            blocks = [learned_features(c, ctx, model) for _, c, ctx in pending]
            scores = np.asarray(model.scorer(np.vstack(blocks)), np.float64).ravel()  # type: ignore[misc]
            if len(scores) != sum(len(b) for b in blocks) or not np.isfinite(scores).all():
                raise ValueError("the learned model gave a wrong number of scores or non-finite")
        except Exception as exc:
            if model.fallback is None:
                for i, _, _ in pending:
                    out[i] = exc
                return out
            used = model.fallback
            scores = None
        start = 0
        for i, cands, ctx in pending:
            try:
                if scores is not None:
                    part = scores[start : start + len(cands)]
                    start += len(cands)
                    keys = np.fromiter((c.key for c in cands), np.int64, len(cands))
                    ranked = diversify(
                        cands,
                        keys,
                        part,
                        ctx,
                        top_n=self.config.top_n,
                        max_per_genre=self.config.max_per_genre,
                    )
                else:
                    ranked = rank(
                        cands,
                        ctx,
                        used,
                        top_n=self.config.top_n,
                        max_per_genre=self.config.max_per_genre,
                    )
                rows = [ListRow(r.key, r.score, r.channel) for r in ranked]
                out[i] = replace(
                    self._finish(states[i], rows, ListMode.PERSONAL), model_version=used.version
                )
            except Exception as exc:
                out[i] = exc
        return out

    def recommend_variants(
        self, state: UserState, variants: Mapping[str, tuple[frozenset[str], RankModel | None]]
    ) -> dict[str, RecList]:
        """Lists of pipeline variants from one recall: each variant drops some channels'
        candidates and ranks the rest with its model (None: this pipeline's). Equal to a
        Recommender configured without those channels, at the cost of one recall."""
        ctx = self.context(state)
        if ctx.embedding is None and not state.liked:
            cold = self._finish(state, self.cold_start(ctx), ListMode.COLD_START)
            return dict.fromkeys(variants, cold)
        per_channel = [(cfg, fn(ctx, cfg.k)) for cfg, fn in self.channels]
        out = {}
        for name, (dropped, model) in variants.items():
            cands = merge([(cfg, c) for cfg, c in per_channel if cfg.name not in dropped])
            m = model or self.model
            ranked = rank(
                cands, ctx, m, top_n=self.config.top_n, max_per_genre=self.config.max_per_genre
            )
            rows = [ListRow(r.key, r.score, r.channel) for r in ranked]
            out[name] = replace(
                self._finish(state, rows, ListMode.PERSONAL), model_version=m.version
            )
        return out

    def cold_start_list(self) -> RecList:
        """The list served to a user with no history (same for everyone)."""
        blank = UserState(user_id="__cold_start__")
        return self._finish(blank, self.cold_start(self.context(blank)), ListMode.COLD_START)

    def cold_start(self, ctx: RecallContext) -> list[ListRow]:
        """Precomputable list for users without signal: trending, topped up with newest."""
        n = self.config.top_n
        picked = trending_recall(ctx, n)
        keys = {c.key for c in picked}
        for c in newest_recall(ctx, n):
            if len(picked) >= n:
                break
            if c.key not in keys:
                picked.append(c)
                keys.add(c.key)
        return [ListRow(c.key, round(c.score, 6), "cold_start") for c in picked[:n]]

    # -- degraded mode: zero-compute lists ------------------------------------------------
    def popular_rows(self, n: int) -> list[ListRow]:
        """Top-n items by decayed popularity (cold-start list while the stream is empty)."""
        keys = self.stats.top_popular(self.catalog, n)
        if len(keys) == 0:
            return self.cold_start(self.context(UserState(user_id="__popular__")))[:n]
        pop = self.stats.popularity(self.catalog.capacity)
        return [ListRow(int(k), round(float(pop[k]), 6), "popular") for k in keys.tolist()]

    def popular_list(self, n: int) -> RecList:
        """The precomputed popularity list: what a degraded user is served."""
        return self._finish(
            UserState(user_id="__popular__"), self.popular_rows(n), ListMode.DEGRADED
        )

    def genre_popular_lists(self, n: int) -> dict[str, RecList]:
        """Most popular recommendable items per genre (ready-to-serve cold-start lists)."""
        cap = self.catalog.capacity
        pop = self.stats.popularity(cap)
        ok = self.catalog.recommendable_mask[:cap]
        blank = UserState(user_id="__genre__")
        out = {}
        for g in self.catalog.genres():
            keys = top_keys(pop, ok & self.catalog.genre_mask(g)[:cap], n, positive=True)
            if len(keys):
                rows = [ListRow(k, round(float(pop[k]), 6), "popular") for k in keys.tolist()]
                out[g] = self._finish(blank, rows, ListMode.COLD_START)
        return out

    def degraded_list(self, state: UserState, popular: list[ListRow]) -> RecList:
        """The precomputed popularity list minus what the user has seen: no recall, no ranking."""
        seen, ok = state.seen, self.catalog.recommendable_mask
        rows = [r for r in popular if ok[r.key] and self.catalog.item_id(r.key) not in seen]
        rows = rows[: self.config.top_n]
        return self._finish(state, rows, ListMode.DEGRADED)

    def _finish(self, state: UserState, rows: Iterable[ListRow], mode: ListMode) -> RecList:
        items = tuple(
            RecItem(self.catalog.item_id(k), s, ch, self.catalog.meta(k).title) for k, s, ch in rows
        )
        return RecList(
            user_id=state.user_id,
            items=items,
            mode=mode,
            model_version=self.model.version,
            embedding_version=self.embedding_version,
            event_time=state.last_event_time,
            variant=self.variant,
        )
