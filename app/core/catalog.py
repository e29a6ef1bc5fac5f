"""Item catalog: every item's metadata and embedding in memory, with its nearest-neighbour index."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nearline_rec.core.events import ItemUpdate
from nearline_rec.core.lsh import ExactIndex, LSHIndex, LSHParams, default_params
from nearline_rec.core.lsh.calibrate import Calibration, CalibrationConfig, calibrate
from nearline_rec.core.neighbours import NeighbourCache


@dataclass(frozen=True, slots=True)
class ItemMeta:
    item_id: str
    title: str
    genres: tuple[str, ...]
    year: int | None
    recommendable: bool
    release_ts: float | None


@dataclass(frozen=True)
class IndexConfig:
    """LSH knobs; None fields take the measured default for the catalog size."""

    w: float | None = None
    m: int | None = None
    tables: int | None = None
    probes: int | None = None
    combine: str = "or"
    vote_threshold: int = 2
    seed: int = 42
    exact_below: int = 10_000
    neighbour_cache: int = 10_000
    """Seed items whose neighbour lists `ItemCatalog.neighbours` keeps (0 = none)."""

    def params_for(self, n_items: int, dim: int) -> LSHParams:
        base = default_params(max(n_items, 1), dim)
        return LSHParams(
            dim=dim,
            w=self.w if self.w is not None else base.w,
            m=self.m if self.m is not None else base.m,
            L=self.tables if self.tables is not None else base.L,
            probes=self.probes if self.probes is not None else base.probes,
            combine=self.combine,
            vote_threshold=min(self.vote_threshold, self.tables or base.L),
            max_candidates=base.max_candidates,
            sketch_keep=base.sketch_keep,
            seed=self.seed,
        )


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class ItemCatalog:
    """Items keyed by a dense int key (stable per item id) so numpy arrays can index them.

    Embeddings are stored L2-normalised: inner product is cosine similarity, and the
    E2LSH bucket width then means the same thing for every catalog.
    """

    def __init__(self, dim: int, index_config: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = index_config or IndexConfig()
        self._ids: list[str] = []
        self._key: dict[str, int] = {}
        self._meta: dict[int, ItemMeta] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._has_vector = np.zeros(0, dtype=bool)
        """Live items with an embedding (in the index); the others serve the rules only."""
        self._recommendable = np.zeros(0, dtype=bool)
        self._release = np.zeros(0, dtype=np.float64)
        self._genre_n = np.zeros(0, dtype=np.int32)
        """How many genres each key carries."""
        self._primary = np.zeros(0, dtype=np.int32)
        """Code of each key's first genre (-1: none); `genre_names` maps codes back."""
        self._genre_codes: dict[str, int] = {}
        self._exact = ExactIndex(dim)
        self._lsh: LSHIndex | None = None
        self.version = 0
        """Bumped on every change (caches that only depend on what ranking rules read key on
        `ranking_version`; the newest order and the neighbour cache are updated in place)."""
        self._newest: tuple[np.ndarray, np.ndarray] | None = None
        """Recommendable keys newest first and their negated release times; kept up to date
        item by item (a re-sort of every item on each new item cost ~10 ms at 100k)."""
        self.ranking_version = 0
        """Bumped when an item that may carry statistics changes what the popularity and genre
        rules may return: it leaves, returns, is retired or un-retired, or changes genres.
        Not bumped by a brand-new item (no statistics yet) or a moved vector."""
        self._genre_masks: dict[str, np.ndarray] = {}
        self._neighbours = NeighbourCache(dim, self.config.neighbour_cache)
        self.calibration: Calibration | None = None
        """The last calibration installed (`install_calibration`); None before the first."""
        self._calibrated: LSHParams | None = None
        """Its setting, which `reindex` then builds instead of the size default."""
        self._pinned_exact = False
        """The calibration chose exact search: growth past exact_below does not build LSH."""
        self.changed = 0
        """Items added, moved or removed since the last calibration was installed."""
        self._since_snapshot: set[int] | None = None
        self._log_lock = threading.Lock()
        """Guards the change log against `replay_changes` on the calibration's thread."""
        self._replayed_early = 0
        """Changes `replay_changes` replayed since the snapshot (counted at the install)."""
        """Keys changed since `calibration_snapshot` (replayed onto the new index)."""
        """Per genre, which keys carry it; kept up to date on every change (a rebuild walked
        every item in Python on each catalog change, ~1 s at 100k items)."""

    # -- lookups --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, item_id: object) -> bool:
        key = self._key.get(item_id)  # type: ignore[arg-type]
        return key is not None and key in self._meta

    def key(self, item_id: str) -> int | None:
        key = self._key.get(item_id)
        return key if key is not None and key in self._meta else None

    def keys_of(self, item_ids: Iterable[str]) -> set[int]:
        """Keys of the items that are in the catalog (`key` for many, without a call each)."""
        meta = self._meta
        return {k for k in map(self._key.get, item_ids) if k is not None and k in meta}

    def item_id(self, key: int) -> str:
        return self._ids[key]

    def meta(self, key: int) -> ItemMeta:
        return self._meta[key]

    def vector(self, item_id: str) -> np.ndarray | None:
        """The item's unit vector; None for an unknown item or one without an embedding."""
        key = self.key(item_id)
        return None if key is None or not self._has_vector[key] else self._vectors[key]

    def has_vector(self, key: int) -> bool:
        return bool(self._has_vector[key])

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        return self._vectors[keys]

    @property
    def capacity(self) -> int:
        """Size of the key space (arrays indexed by key have this length)."""
        return len(self._ids)

    @property
    def recommendable_mask(self) -> np.ndarray:
        return self._recommendable

    @property
    def release_ts(self) -> np.ndarray:
        return self._release

    def live_keys(self) -> np.ndarray:
        return np.flatnonzero(self._live)

    def indexed_keys(self) -> np.ndarray:
        """Live keys with an embedding (what the nearest-neighbour index holds)."""
        return np.flatnonzero(self._has_vector)

    def genre_mask(self, genre: str) -> np.ndarray:
        """Boolean array over keys [0, capacity): the live items of `genre`."""
        mask = self._genre_masks.get(genre)
        if mask is None:
            return np.zeros(self.capacity, dtype=bool)
        if len(mask) < self.capacity:
            mask = self._genre_masks[genre] = _grown(mask, self.capacity)
        return mask[: self.capacity]

    def _set_genres(self, key: int, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        self._genre_n[key] = len(new)
        self._primary[key] = (
            self._genre_codes.setdefault(new[0], len(self._genre_codes)) if new else -1
        )
        for g in old:
            if g not in new:
                self._genre_masks[g][key] = False
        for g in new:
            mask = self._genre_masks.get(g)
            if mask is None or len(mask) <= key:
                mask = self._genre_masks[g] = _grown(
                    mask if mask is not None else np.zeros(0, bool), max(key + 1, self.capacity)
                )
            mask[key] = True

    def genres(self) -> list[str]:
        """Every genre an item has carried, sorted."""
        return sorted(self._genre_masks)

    def genre_counts(self, keys: np.ndarray) -> np.ndarray:
        """How many genres each of `keys` carries."""
        return self._genre_n[keys]

    def primary_genres(self, keys: np.ndarray) -> np.ndarray:
        """A code for the first genre of each of `keys` (-1: none): equal codes, equal genre."""
        return self._primary[keys]

    def newest_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Recommendable keys, newest release first (ties by key), and their negated release
        times (ascending, for searchsorted); cached until the catalog changes, since sorting
        every item per user list was the costliest step of a recommendation."""
        if self._newest is None:
            keys = np.flatnonzero(self._recommendable[: self.capacity])
            release = self._release[keys]
            order = np.lexsort((keys, -release))
            self._newest = (keys[order], -release[order])
        return self._newest

    def _renew(self, keys: np.ndarray) -> None:
        """Re-place `keys` in the newest-first order after their release or flag changed."""
        if self._newest is None:
            return
        if len(keys) > 256:
            self._newest = None  # a bulk change: one sort later is cheaper
            return
        order, neg = self._newest
        gone = np.isin(order, keys)
        if gone.any():
            order, neg = order[~gone], neg[~gone]
        for key in sorted(keys.tolist()):
            if not self._recommendable[key]:
                continue
            v = -self._release[key]
            lo = int(np.searchsorted(neg, v, side="left"))
            hi = int(np.searchsorted(neg, v, side="right"))
            at = lo + int(np.searchsorted(order[lo:hi], key))  # ties by key
            order, neg = np.insert(order, at, key), np.insert(neg, at, v)
        self._newest = (order, neg)

    @property
    def uses_lsh(self) -> bool:
        return self._lsh is not None

    @property
    def lsh_params(self) -> LSHParams | None:
        return None if self._lsh is None else self._lsh.params

    # -- changes --------------------------------------------------------------------------
    def _ensure_key(self, item_id: str) -> int:
        key = self._key.get(item_id)
        if key is not None:
            return key
        key = len(self._ids)
        self._ids.append(item_id)
        self._key[item_id] = key
        if key >= len(self._vectors):
            grow = max(1024, len(self._vectors))
            self._vectors = np.vstack([self._vectors, np.zeros((grow, self.dim), np.float32)])
            self._live = np.concatenate([self._live, np.zeros(grow, bool)])
            self._has_vector = np.concatenate([self._has_vector, np.zeros(grow, bool)])
            self._recommendable = np.concatenate([self._recommendable, np.zeros(grow, bool)])
            self._release = np.concatenate([self._release, np.zeros(grow)])
            self._genre_n = np.concatenate([self._genre_n, np.zeros(grow, np.int32)])
            self._primary = np.concatenate([self._primary, np.full(grow, -1, np.int32)])
        return key

    def apply(self, update: ItemUpdate) -> bool:
        """Apply one item update; False when it was a delete of an unknown item."""
        if update.op == "delete":
            return self.remove(update.item_id)
        self.upsert_many([update])
        return True

    def upsert_many(self, updates: Iterable[ItemUpdate]) -> int:
        """Insert or replace items. An update without an embedding keeps (or puts) the item
        in the catalogue for the rules that need no vector (genre, trending, newest) and out
        of the nearest-neighbour index."""
        ups = [u for u in updates if u.op == "upsert"]
        if not ups:
            return 0
        known = len(self._ids)  # keys below this existed before: they may carry statistics
        keys = np.fromiter(
            (self._ensure_key(u.item_id) for u in ups), dtype=np.int64, count=len(ups)
        )
        ranking_changed = False
        for key, u in zip(keys.tolist(), ups, strict=True):
            before = self._meta.get(key)
            if key < known and (
                before is None
                or before.recommendable != u.recommendable
                or before.genres != tuple(u.genres)
            ):
                ranking_changed = True
            self._set_genres(key, before.genres if before else (), tuple(u.genres))
            self._meta[key] = ItemMeta(
                u.item_id, u.title, tuple(u.genres), u.year, u.recommendable, u.release_ts
            )
            self._recommendable[key] = u.recommendable
            self._release[key] = u.release_ts if u.release_ts is not None else _year_ts(u.year)
        # a later duplicate of the same key in one batch wins, as it would one by one
        _, last = np.unique(keys[::-1], return_index=True)
        sel = np.sort(len(keys) - 1 - last)
        with_vec = np.array([ups[i].embedding is not None for i in sel.tolist()], dtype=bool)
        self._index_vectors(
            keys[sel[with_vec]],
            [ups[i].embedding for i in sel[with_vec].tolist()],
        )
        self._drop_vectors(keys[sel[~with_vec]])
        self._live[keys] = True
        self._renew(keys[sel])
        self.ranking_version += ranking_changed
        self.version += 1
        return len(ups)

    def _index_vectors(self, keys: np.ndarray, vectors: list[np.ndarray | None]) -> None:
        if not len(keys):
            return
        mat = np.vstack([unit(v) for v in vectors])  # type: ignore[arg-type]
        if len(self._neighbours):
            # a neighbour list may change where the new vectors arrive or the old ones left
            moved = keys[self._has_vector[keys]]
            self._neighbours.drop_seeds(moved)
            self._neighbours.changed(np.vstack([self._vectors[moved], mat]))
        self._vectors[keys] = mat
        self._has_vector[keys] = True
        self._note_changed(keys)
        self._exact.upsert_many(keys, mat)
        if self._lsh is not None:
            self._lsh.upsert_many(keys, mat)
        elif len(self._meta) >= max(self.config.exact_below, 1) and not self._pinned_exact:
            self.reindex()  # 0 = always LSH

    def _drop_vectors(self, keys: np.ndarray) -> None:
        """Take `keys` out of the index (an item that lost its vector, or left)."""
        keys = keys[self._has_vector[keys]]
        for key in keys.tolist():
            if len(self._neighbours):
                self._neighbours.drop_seeds(np.array([key]))
                self._neighbours.changed(self._vectors[key][None, :])
            self._vectors[key] = 0.0
            self._has_vector[key] = False
            self._exact.remove(key)
            if self._lsh is not None:
                self._lsh.remove(key)
        if len(keys):
            self._note_changed(keys)

    def remove(self, item_id: str) -> bool:
        key = self.key(item_id)
        if key is None:
            return False
        self._set_genres(key, self._meta.pop(key).genres, ())
        self._live[key] = False
        self._recommendable[key] = False
        self._drop_vectors(np.array([key]))
        self._renew(np.array([key]))
        self.ranking_version += 1
        self.version += 1
        return True

    def reindex(self) -> None:
        """(Re)build the LSH index with the calibrated setting, else the size default (exact
        when small, or when the last calibration chose exact search)."""
        small = len(self._meta) < self.config.exact_below
        if small or self._pinned_exact or self.config.exact_below == 0 and not self:
            if self._lsh is not None:
                self._neighbours.clear()
            self._lsh = None
            return
        self._neighbours.clear()  # another index may answer differently
        keys = self.indexed_keys()
        params = self._calibrated or self.config.params_for(len(keys), self.dim)
        lsh = LSHIndex(params)
        lsh.upsert_many(keys, self._vectors[keys])
        self._lsh = lsh

    # -- calibration ----------------------------------------------------------------------
    def _note_changed(self, keys: np.ndarray) -> None:
        self.changed += len(keys)
        if self._since_snapshot is not None:
            with self._log_lock:
                self._since_snapshot.update(keys.tolist())

    def calibration_config(self, **fields: object) -> CalibrationConfig:
        """A calibration starting from the size default, keeping the knobs the operator set
        (IndexConfig fields not None); `fields` override the rest of the config."""
        base = self.config.params_for(max(len(self), 1), self.dim)
        named = {"w": self.config.w, "m": self.config.m, "L": self.config.tables}
        named["probes"] = self.config.probes
        fixed = tuple(k for k, v in named.items() if v is not None)
        return CalibrationConfig(base=base, fixed=fixed, **fields)  # type: ignore[arg-type]

    def calibration_snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, vectors) of the live items, for a calibration that may run on another
        thread; changes from now on are logged and replayed by `install_calibration`, so a
        row read while it changed is corrected there. The vectors array is read by reference:
        call `np.take` on it off the event loop (`gather_snapshot`)."""
        self._since_snapshot = set()
        self._replayed_early = 0
        return self.indexed_keys(), self._vectors

    @staticmethod
    def gather_snapshot(
        keys: np.ndarray,
        vectors: np.ndarray,
        chunk: int = 65_536,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Copy the snapshot's rows (in chunks, so another thread gets the GIL between), into
        `out` when given."""
        if out is None:
            out = np.empty((len(keys), vectors.shape[1]), dtype=np.float32)
        for start in range(0, len(keys), chunk):
            np.take(vectors, keys[start : start + chunk], axis=0, out=out[start : start + chunk])
        return out

    def replay_changes(self, cal: Calibration) -> int:
        """Off the event loop (the calibration's thread), before the install: replay onto the
        new index the changes logged so far and start a new log, so that the install, on the
        event loop, replays only the changes made after this. A row read here while the loop
        changes it is logged again and corrected at the install. Returns how many keys."""
        with self._log_lock:
            changed, self._since_snapshot = self._since_snapshot, set()
        if changed is None:  # abandoned meanwhile
            self._since_snapshot = None
            return 0
        if cal.index is not None:
            self._replay(cal.index, changed)
        self._replayed_early += len(changed)
        return len(changed)

    def install_calibration(self, cal: Calibration) -> int:
        """Swap in the calibrated index (or exact search) in one assignment, after replaying
        onto it every change since the snapshot (or since `replay_changes`); returns how many
        keys were replayed in all. Until this call the old index serves, so a half-built one
        is never read."""
        changed = self._since_snapshot or set()
        self._since_snapshot = None
        index = cal.index
        if index is not None:
            self._replay(index, changed)
        self._neighbours.clear()  # the new index may answer differently
        self._lsh = index
        self._pinned_exact = index is None
        self._calibrated = cal.params
        self.calibration = cal
        total = len(changed) + self._replayed_early
        self._replayed_early = 0
        self.changed = total
        return total

    def _replay(self, index: LSHIndex, changed: set[int]) -> None:
        """Onto `index`: the current vectors of `changed` keys, one vectorised upsert (a loop
        of single upserts took 2.8x as long for 1,000 keys: scripts/calibration_stall.py
        --replay-keys), and the removal of those without one."""
        if not changed:
            return
        keys = np.fromiter(sorted(changed), dtype=np.int64, count=len(changed))
        live = self._has_vector[keys]
        index.upsert_many(keys[live], self._vectors[keys[live]])
        for key in keys[~live].tolist():
            index.remove(key)

    def abandon_calibration(self) -> None:
        """A calibration failed or was dropped: stop logging changes for it."""
        self._since_snapshot = None
        self._replayed_early = 0

    def calibrate(self, config: CalibrationConfig | None = None) -> Calibration:
        """Calibrate on the live items and install the result, in this thread."""
        keys, vectors = self.calibration_snapshot()
        try:
            x = self.gather_snapshot(keys, vectors)
            cal = calibrate(keys, x, config or self.calibration_config())
        except BaseException:
            self.abandon_calibration()
            raise
        self.install_calibration(cal)
        return cal

    # -- search ---------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: set[int] | None = None,
        exact: bool = False,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by cosine similarity to query (LSH when built, else exact); with
        `allowed` (a bool per key) only the keys it marks True."""
        if k <= 0 or not self._meta:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = unit(query)
        index = self._exact if (exact or self._lsh is None) else self._lsh
        return index.search(q, k, exclude=exclude, allowed=allowed)

    def search_many(
        self,
        queries: list[np.ndarray],
        ks: list[int],
        *,
        exclude_keys: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
        allowed_of: np.ndarray | None = None,
        threads: int = 1,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` of each query with its own k, excluded key (-1 none) and allowed mask
        (row `allowed_of[i]` of the 2-D `allowed`, -1 none), the LSH ones in one compiled
        call split over `threads` threads: the same answers as one `search` each."""
        if not queries:
            return []
        if not self._meta:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        qs = np.vstack([unit(q) for q in queries])
        index = self._exact if self._lsh is None else self._lsh
        return index.search_many(
            qs,
            np.asarray(ks, np.int64),
            exclude_keys=exclude_keys,
            allowed=allowed,
            allowed_of=allowed_of,
            threads=threads,
        )

    def prefetch_neighbours(self, keys: list[int], m: int, threads: int = 1) -> None:
        """Put the top-m neighbours of those of `keys` the cache lacks into it, found in one
        `search_many` (a micro-batch's seeds, before its lists are made)."""
        if self._lsh is not None and self._lsh.params.max_candidates:
            return  # not cached (see `neighbours`)
        seeds = self._neighbours.absent([k for k in dict.fromkeys(keys) if self._has_vector[k]], m)
        if not seeds:
            return
        found = self.search_many(
            [self._vectors[k] for k in seeds],
            [m] * len(seeds),
            exclude_keys=np.asarray(seeds, np.int64),
            threads=threads,
        )
        for key, (got_keys, got_scores) in zip(seeds, found, strict=True):
            self._neighbours.put(key, self._vectors[key], m, got_keys, got_scores, fresh=True)

    def neighbours(self, key: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-m items nearest to item `key` (not itself), as `search` finds them; served
        from a cache that catalog changes invalidate exactly (app/core/neighbours.py)."""
        if not self._has_vector[key]:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        seed = self._vectors[key]
        if self._lsh is not None and self._lsh.params.max_candidates:
            # a candidate cap makes one item's arrival push another out: not cacheable
            return self.search(seed, m, exclude={key})
        hit = self._neighbours.get(key, m)
        if hit is not None:
            return hit
        keys, scores = self.search(seed, m, exclude={key})
        self._neighbours.put(key, seed, m, keys, scores)
        return keys, scores

    @property
    def neighbour_cache(self) -> NeighbourCache:
        return self._neighbours


def _grown(mask: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(max(size, 2 * len(mask)), dtype=bool)
    out[: len(mask)] = mask
    return out


def _year_ts(year: int | None) -> float:
    # Items without a release time are dated mid-year of their release year, or the epoch.
    if year is None:
        return 0.0
    return (year - 1970) * 365.25 * 86400 + 182 * 86400
