"""Self-calibration of the LSH index to a recall target, on the vectors it holds.

`calibrate` draws queries that look like the worker's (user taste vectors: decayed means of a
few liked items near each other, with an occasional other interest; and item vectors for
item-to-item, each excluding itself), takes their exact top-k from the brute-force twin and
measures recall@k of candidate settings on them. Query-time knobs come first (probes, the
sign-sketch cut, a candidate cap: no rebuild); the build-time ones (w, m, L) are searched next,
one step at a time from the measured default, within the memory budget and the time budget.
The setting picked is the cheapest meeting the target by a cost model of the compiled query
(counts, not timings, so the choice is deterministic for a seed); exact search is picked, and
said so, when it costs less than every setting meeting the target or when none meets it. The
figure reported is recall on a second set of taste queries the choice never saw.

Pure: no I/O; the only clock read is `time.perf_counter` for the time budget and the q/s
figures, which never decide the choice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from nearline_rec.core.lsh.calibration_queries import (  # taste_queries, QuerySet: re-exported
    QuerySet,
    query_sets,
    recall,
    taste_queries,
)
from nearline_rec.core.lsh.exact import ExactIndex
from nearline_rec.core.lsh.index import LSHIndex
from nearline_rec.core.lsh.params import LSHParams, default_params

__all__ = [
    "Calibration",
    "CalibrationConfig",
    "QuerySet",
    "Trial",
    "calibrate",
    "describe",
    "query_sets",
    "recall",
    "taste_queries",
]

# Cost of one compiled query in microseconds: a fixed part, the hash projections (L*m*d
# multiply-adds), each probed bucket, each candidate gathered and each re-ranked row (x d);
# exact search: a fixed part, the product (n*d) and the selection (n). Fitted by least squares
# on 144 timed settings (100k x 64 and x 32, three workloads, one BLAS thread; rounded, timings
# on the shared machine were +-30%: docs/lsh-tuning.md). Only ratios decide the choice.
COST_FIXED_US = 10.0
COST_PROJECTION_US = 0.0003
COST_BUCKET_US = 0.15
COST_CANDIDATE_US = 0.025
COST_RERANK_US = 0.0005
EXACT_FIXED_US = 20.0
EXACT_PRODUCT_US = 0.0001
EXACT_SELECT_US = 0.003

_KEEPS = (200, 400, 800, 1600, 0)
"""Sketch cuts tried (0 = re-rank every candidate)."""
_CAPS = (1000, 3000)
"""Candidate caps tried on the setting without a sketch cut (numpy path)."""
_NUMPY_PATH_US = 60.0
"""Extra cost of a query on the numpy path (a candidate cap), over the compiled one."""


@dataclass(frozen=True)
class CalibrationConfig:
    """What to calibrate for; the worker fills it from NEARLINE_LSH__* settings."""

    k: int = 10
    target_recall: float = 0.95
    budget_seconds: float = 60.0
    """Wall time allowed for builds and measurements (the first build always completes)."""
    queries: int = 400
    """Calibration queries; as many taste queries again are held out for the reported recall."""
    item_share: float = 0.25
    """Share of calibration queries that are item vectors (item-to-item, excluding the item)."""
    memory_ratio: float = 2.0
    """Index memory (vectors included) at most this many times the raw float32 vectors."""
    margin: float = 0.01
    """Recall above the target required on the calibration queries, so held-out queries meet
    the target too."""
    seed: int = 0
    base: LSHParams | None = None
    """Starting setting (default: `default_params` for the size)."""
    fixed: tuple[str, ...] = ()
    """Fields of `base` the search may not change (operator settings): any of w, m, L, probes."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.queries < 10:
            raise ValueError(f"queries must be >= 10, got {self.queries}")
        if not 0 <= self.item_share <= 1:
            raise ValueError(f"item_share must be in [0, 1], got {self.item_share}")
        if self.memory_ratio <= 1:
            raise ValueError(f"memory_ratio must be > 1, got {self.memory_ratio}")
        bad = set(self.fixed) - {"w", "m", "L", "probes"}
        if bad:
            raise ValueError(f"fixed may name w, m, L, probes only, got {sorted(bad)}")


@dataclass(frozen=True)
class Trial:
    """One setting measured on the calibration queries."""

    params: LSHParams
    recall: float
    candidates: float
    """Mean candidates gathered per query (before the sketch cut or cap)."""
    reranked: float
    """Mean rows re-ranked per query."""
    cost_us: float
    """Modelled cost of a query (`COST_*`)."""
    memory_bytes: int


@dataclass(frozen=True)
class Calibration:
    """The choice and what was measured; `index` is the chosen index, built on the vectors
    given (None for exact search)."""

    exact: bool
    params: LSHParams | None
    reason: str
    target: float
    k: int
    recall: float
    """Recall@k of the choice on the held-out taste queries (1.0 for exact search)."""
    heldout_queries: int
    calibration_recall: float
    calibration_queries: int
    meets_target: bool
    n_items: int
    dim: int
    cost_us: float
    exact_cost_us: float
    memory_bytes: int
    raw_bytes: int
    qps: float
    """Measured on the held-out queries, one at a time (for the report; not for the choice)."""
    exact_qps: float
    builds: int
    seconds: float
    trials: tuple[Trial, ...] = ()
    index: LSHIndex | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, object]:
        """The figures an operator reads (/status/, `nearline tune-lsh --json-out`)."""
        p = self.params
        return {
            "index": "exact" if self.exact else "lsh",
            "reason": self.reason,
            "target_recall": self.target,
            "k": self.k,
            "recall": round(self.recall, 4),
            "heldout_queries": self.heldout_queries,
            "calibration_recall": round(self.calibration_recall, 4),
            "calibration_queries": self.calibration_queries,
            "meets_target": self.meets_target,
            "items": self.n_items,
            "setting": None if p is None else describe(p),
            "memory_vs_raw": round(self.memory_bytes / max(self.raw_bytes, 1), 3),
            "qps": round(self.qps, 1),
            "exact_qps": round(self.exact_qps, 1),
            "cost_us": round(self.cost_us, 1),
            "exact_cost_us": round(self.exact_cost_us, 1),
            "settings_tried": len(self.trials),
            "builds": self.builds,
            "seconds": round(self.seconds, 2),
        }


def describe(p: LSHParams) -> dict[str, object]:
    return {
        "w": p.w,
        "m": p.m,
        "L": p.L,
        "probes": p.probes,
        "sketch_keep": p.sketch_keep,
        "max_candidates": p.max_candidates,
    }


# -- cost model --------------------------------------------------------------------------------


def lsh_cost_us(p: LSHParams, k: int, candidates: float) -> float:
    """Modelled microseconds of one query of setting `p` gathering `candidates` rows."""
    if p.max_candidates:
        reranked = min(candidates, p.max_candidates)
    elif p.sketch_keep:
        reranked = min(candidates, max(p.sketch_keep, 4 * k))
    else:
        reranked = candidates
    cost = (
        COST_FIXED_US
        + COST_PROJECTION_US * p.L * p.m * p.dim
        + COST_BUCKET_US * p.L * (p.probes + 1)
        + COST_CANDIDATE_US * candidates
        + COST_RERANK_US * reranked * p.dim
    )
    return cost + (_NUMPY_PATH_US if p.max_candidates else 0.0)


def exact_cost_us(n: int, dim: int) -> float:
    return EXACT_FIXED_US + EXACT_PRODUCT_US * n * dim + EXACT_SELECT_US * n


def memory_floor(n: int, dim: int, L: int) -> int:
    """Bytes an index of n rows and L tables holds at least: vectors, keys, key map, epoch,
    sketch, mark, and 4 B an entry (the buckets come on top)."""
    return n * (4 * dim + 8 + 8 + 4 + 8 + 1 + 4 * L)


# -- the search --------------------------------------------------------------------------------


class _Search:
    def __init__(
        self,
        keys: np.ndarray,
        x: np.ndarray,
        cal: QuerySet,
        config: CalibrationConfig,
        budget_bytes: int,
        started: float,
        log: Callable[[str], None] | None,
    ) -> None:
        self.keys, self.x, self.cal, self.config = keys, x, cal, config
        self.budget_bytes, self.started, self.log = budget_bytes, started, log
        self.goal = min(1.0, config.target_recall + config.margin)
        self.trials: list[Trial] = []
        self.builds = 0
        self.build_seconds: list[float] = []
        self.best: tuple[Trial, LSHIndex] | None = None
        self.best_recall: tuple[Trial, LSHIndex] | None = None
        self.table_bytes: float | None = None
        """Bytes a table of the last build held (its entries, buckets and directory cells)."""
        self.rest_bytes = 0
        """Bytes of the last build besides its tables (vectors, keys, epochs, sketches...)."""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def build(self, p: LSHParams) -> LSHIndex | None:
        # The floor is a bound; the estimate gets 5% leeway: the rest of a build also grows a
        # little with its tables (delta buffers, projections), so an estimate from a build
        # with more tables runs high.
        if memory_floor(len(self.keys), p.dim, p.L) > self.budget_bytes or (
            self.estimated_bytes(p) > 1.05 * self.budget_bytes
        ):
            return None
        t = time.perf_counter()
        index = LSHIndex(replace(p, probes=0, sketch_keep=0, max_candidates=0))
        index.upsert_many(self.keys, self.x)
        self.builds += 1
        self.build_seconds.append(time.perf_counter() - t)
        self.table_bytes = index.table_memory_bytes() / p.L
        self.rest_bytes = index.memory_bytes() - index.table_memory_bytes()
        if index.memory_bytes() > self.budget_bytes:
            self._say(f"  w={p.w} m={p.m} L={p.L}: over the memory budget")
            return None
        return index

    def estimated_bytes(self, p: LSHParams) -> float:
        """Memory of a build of `p`: the floor, or the last build's bytes besides its tables
        plus its bytes a table times `p.L` when there was one (fewer buckets with smaller m
        or wider w: an overestimate there, so a build is skipped only when it would very
        likely not fit)."""
        floor = memory_floor(len(self.keys), p.dim, p.L)
        if self.table_bytes is None:
            return floor
        return max(floor, self.rest_bytes + self.table_bytes * p.L)

    def tables_that_fit(self, p: LSHParams) -> int:
        """Most tables of `p`'s kind within the memory budget, by the last build's bytes a
        table (fewer than `p.L` - 8 only when the last build was far over the budget)."""
        if self.table_bytes is None:
            return p.L - 8
        return min(p.L - 1, int((self.budget_bytes - self.rest_bytes) // self.table_bytes))

    def measure(self, base: LSHIndex, p: LSHParams, with_cost: bool) -> Trial:
        view = base._query_view(p)
        r = recall(view, self.cal, self.config.k)
        cands = reranked = cost = math.nan
        if with_cost:
            # Candidates gathered (before any cut) on a sample of the calibration queries.
            counting = base._query_view(replace(p, sketch_keep=0, max_candidates=0))
            sample = self.cal.vectors[:100]
            cands = float(np.mean([counting.candidates(q).size for q in sample]))
            cost = lsh_cost_us(p, self.config.k, cands)
            cut = p.max_candidates or (
                max(p.sketch_keep, 4 * self.config.k) if p.sketch_keep else 0
            )
            reranked = min(cands, cut) if cut else cands
        trial = Trial(p, r, cands, reranked, cost, base.memory_bytes())
        if with_cost:
            self.trials.append(trial)
            self._consider(trial, view)
        return trial

    def _consider(self, trial: Trial, view: LSHIndex) -> None:
        if trial.recall >= self.goal and (
            self.best is None or trial.cost_us < self.best[0].cost_us
        ):
            self.best = (trial, view)
        if self.best_recall is None or (trial.recall, -trial.cost_us) > (
            self.best_recall[0].recall,
            -self.best_recall[0].cost_us,
        ):
            self.best_recall = (trial, view)

    def probes_for(self, base: LSHIndex, p: LSHParams, lo: int) -> int | None:
        """The fewest probes in [lo, 2m] meeting the goal with `p`'s other knobs (recall
        grows with probes: more probes only add buckets), or None."""
        hi = 2 * p.m
        if "probes" in self.config.fixed:
            lo = hi = p.probes
        cache: dict[int, float] = {}

        def ok(probes: int) -> bool:
            if probes not in cache:
                cache[probes] = self.measure(base, replace(p, probes=probes), False).recall
            return cache[probes] >= self.goal

        if not ok(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        return hi

    def query_knobs(self, base: LSHIndex, p: LSHParams) -> Trial | None:
        """Probes, sketch cut and cap on one build: the cheapest meeting the goal."""
        best: Trial | None = None
        lo = 0
        # No cut first: it needs the fewest probes, a lower bound for the cuts.
        for keep in sorted(_KEEPS, key=lambda keep: keep == 0, reverse=True):
            q = replace(p, sketch_keep=keep, max_candidates=0)
            probes = self.probes_for(base, q, lo)
            if probes is None:
                if keep == 0:  # nothing reaches the goal on this build: its best recall
                    most = p.probes if "probes" in self.config.fixed else 2 * p.m
                    self.measure(base, replace(q, probes=most), True)
                    return None
                continue
            if keep == 0:
                lo = probes
            trial = self.measure(base, replace(q, probes=probes), True)
            if best is None or trial.cost_us < best.cost_us:
                best = trial
        assert best is not None
        nocut = next(t for t in reversed(self.trials) if t.params.sketch_keep == 0)
        for cap in _CAPS:
            if cap < nocut.candidates:
                self.measure(base, replace(nocut.params, max_candidates=cap), True)
        return best

    def time_left_for_build(self) -> bool:
        per_build = max(self.build_seconds) if self.build_seconds else 0.0
        # a build and its measurements took ~2x the build alone
        return self.elapsed() + 2.5 * per_build <= self.config.budget_seconds

    def score(self, base: LSHIndex, p: LSHParams) -> tuple[float, float]:
        """(cost of the cheapest setting meeting the goal or inf, minus the best recall) of a
        build: lower is better, so a search that misses climbs toward more recall."""
        trial = self.query_knobs(base, p)
        mine = [t.recall for t in self.trials if t.params.structure == p.structure]
        best = max(mine, default=0.0)
        self._say(
            f"  w={p.w:.2f} m={p.m} L={p.L}: "
            + (
                f"best recall {best:.3f}, none meets the target"
                if trial is None
                else f"probes={trial.params.probes} keep={trial.params.sketch_keep} "
                f"cost {trial.cost_us:.0f} us"
            )
        )
        return (math.inf if trial is None else trial.cost_us, -best)

    def run(self, start: LSHParams) -> None:
        """Hill-climb over builds from `start`: move to the first neighbour that scores
        better, stop when none does or the time budget would be overrun."""
        base = self.build(start)
        if base is None:
            # The start does not fit: the most tables that do, by the bytes a table of the
            # build took (a start at 2.01x the raw vectors loses one table, not eight).
            while base is None and start.L > 4:
                start = replace(start, L=max(4, self.tables_that_fit(start)))
                base = self.build(start)
            if base is None:
                return
        visited = {(round(start.w, 4), start.m, start.L)}
        current, current_score = start, self.score(base, start)
        del base
        while True:
            moved = False
            for p in self.neighbours(current, far_below=-current_score[1] < self.goal - 0.05):
                key = (round(p.w, 4), p.m, p.L)
                if key in visited:
                    continue
                if not self.time_left_for_build():
                    return
                visited.add(key)
                base = self.build(p)
                if base is None:
                    continue
                score = self.score(base, p)
                del base
                if score < current_score:
                    current, current_score, moved = p, score, True
                    break
            if not moved:
                return

    def neighbours(self, p: LSHParams, far_below: bool = False) -> list[LSHParams]:
        """Build settings one step from `p`: fewer hash functions or wider buckets (more
        recall a probe), more or fewer tables, more functions (fewer candidates). When `p`'s
        best recall is far below the goal (`far_below`: more than 0.05, e.g. after the memory
        budget cut its tables), two functions fewer comes first: each function fewer gained
        0.06-0.07 there (100k x 32), so single steps spent the time budget on builds that
        could not reach the goal."""
        fixed = self.config.fixed
        out = []
        if "m" not in fixed:
            out += [replace(p, m=p.m - 2)] if far_below and p.m > 3 else []
            out += [replace(p, m=p.m - 1)] if p.m > 2 else []
        if "w" not in fixed:
            out.append(replace(p, w=round(p.w * 1.25, 4)))
        if "L" not in fixed:
            out.append(replace(p, L=p.L + 8))
            if p.L > 8:
                out.append(replace(p, L=p.L - 8))
        if "m" not in fixed:
            out.append(replace(p, m=p.m + 1))
        if "w" not in fixed:
            out.append(replace(p, w=round(p.w / 1.25, 4)))
        return [q for q in out if q.probes <= 2 * q.m]


def calibrate(
    keys: np.ndarray,
    matrix: np.ndarray,
    config: CalibrationConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Pick the LSH setting (or exact search) for these vectors; see the module docstring.

    `keys` are the items' keys (int64), `matrix` their L2-normalised vectors (one row each).
    """
    config = config or CalibrationConfig()
    started = time.perf_counter()
    keys = np.asarray(keys, dtype=np.int64)
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != keys.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need one vector a key, got {keys.shape[0]} keys, matrix {x.shape}")
    order = np.argsort(keys, kind="stable")
    keys, x = keys[order], x[order]
    n, dim = x.shape
    exact = ExactIndex(dim)
    exact.upsert_many(keys, x)
    cal, held = query_sets(keys, x, exact, config)
    raw = x.nbytes
    start = config.base or default_params(n, dim)
    start = replace(start, dim=dim, combine="or", vote_threshold=min(start.vote_threshold, start.L))
    search = _Search(keys, x, cal, config, int(config.memory_ratio * raw), started, log)
    if start.probes > 2 * start.m:
        start = replace(start, probes=2 * start.m)
    search.run(start)
    exact_cost = exact_cost_us(n, dim)
    exact_qps = _qps(exact, held)
    common = {
        "target": config.target_recall,
        "k": config.k,
        "heldout_queries": len(held.vectors),
        "calibration_queries": len(cal.vectors),
        "n_items": n,
        "dim": dim,
        "exact_cost_us": exact_cost,
        "raw_bytes": raw,
        "exact_qps": exact_qps,
        "builds": search.builds,
        "trials": tuple(search.trials),
    }
    chosen = search.best
    if chosen is None or chosen[0].cost_us >= exact_cost:
        if chosen is None:
            got = search.best_recall[0].recall if search.best_recall else 0.0
            why = (
                f"no LSH setting within {config.memory_ratio:g}x the raw vectors reached recall@"
                f"{config.k} {search.goal:.3f} on the calibration queries (best {got:.3f}): "
                "exact search"
            )
        else:
            why = (
                f"exact search costs less ({exact_cost:.0f} us a query, modelled) than the "
                f"cheapest LSH setting meeting the target ({chosen[0].cost_us:.0f} us)"
            )
        return Calibration(
            exact=True,
            params=None,
            reason=why,
            recall=1.0,
            calibration_recall=1.0,
            meets_target=True,
            cost_us=exact_cost,
            memory_bytes=exact.memory_bytes(),
            qps=exact_qps,
            seconds=time.perf_counter() - started,
            index=None,
            **common,  # type: ignore[arg-type]
        )
    trial, index = chosen
    held_recall = recall(index, held, config.k)
    return Calibration(
        exact=False,
        params=trial.params,
        reason=(
            f"cheapest of {len(search.trials)} settings meeting recall@{config.k} "
            f"{search.goal:.3f} on the calibration queries"
        ),
        recall=held_recall,
        calibration_recall=trial.recall,
        meets_target=held_recall >= config.target_recall,
        cost_us=trial.cost_us,
        memory_bytes=index.memory_bytes(),
        qps=_qps(index, held),
        seconds=time.perf_counter() - started,
        index=index,
        **common,  # type: ignore[arg-type]
    )


def _qps(index: LSHIndex | ExactIndex, qs: QuerySet, limit: int = 200) -> float:
    vectors = qs.vectors[:limit]
    index.search(vectors[0], 10)  # warm-up
    t = time.perf_counter()
    for q, ex in zip(vectors, qs.exclude, strict=False):
        index.search(q, 10, exclude=ex)
    return len(vectors) / max(time.perf_counter() - t, 1e-9)
