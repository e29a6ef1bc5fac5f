"""LSH parameters and the measured defaults by catalogue size and dimension."""

from __future__ import annotations

import sys
from dataclasses import dataclass

COMBINE_RULES = ("or", "and", "vote")


@dataclass(frozen=True)
class LSHParams:
    """Hashing and query settings of an `LSHIndex`.

    `dim`, `w`, `m`, `L` and `seed` fix the buckets; `probes`, `combine`, `vote_threshold` and
    `max_candidates` only change how a query reads them.
    """

    dim: int
    w: float = 2.0
    """Bucket width of each projection; vectors are expected L2-normalised."""
    m: int = 12
    """Hash functions per table; a table matches only if all m agree (AND)."""
    L: int = 64
    """Tables; a candidate needs a match in one table (OR), or see `combine`. The defaults
    (w, m, L) reach recall@10 0.94-0.98 without probes; `default_params` uses probes instead of
    tables, for half the memory."""
    probes: int = 0
    """Multi-probe: extra neighbouring buckets read per table (0 = the exact bucket only)."""
    combine: str = "or"
    """"or": found in >= 1 table, "and": in all L tables, "vote": in >= vote_threshold tables."""
    vote_threshold: int = 2
    """Tables a candidate must be found in under combine="vote"."""
    max_candidates: int = 0
    """Cap on candidates re-ranked, keeping those found in most tables; 0 = no cap."""
    sketch_keep: int = 0
    """Re-rank only the max(sketch_keep, 4 k) candidates nearest to the query by a 64-bit sign
    sketch (Hamming distance, every tie at the cut kept), exactly as before; 0 = re-rank all.
    Most candidates of a large catalogue are far points that merely share a bucket: at 1M x 64
    keeping 400 of ~4,700 lost no recall and skipped most of the gather."""
    seed: int = 42
    """Seed of the projections: equal seeds hash alike on every replica."""

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be > 0, got {self.dim}")
        if not self.w > 0:
            raise ValueError(f"w must be > 0, got {self.w}")
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.L < 1:
            raise ValueError(f"L must be >= 1, got {self.L}")
        # Only single-coordinate steps are probed, and a table has 2*m of them.
        if not 0 <= self.probes <= 2 * self.m:
            raise ValueError(f"probes must be in [0, 2*m={2 * self.m}], got {self.probes}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {self.combine!r}")
        # The upper bound is checked only when the rule is used, so that LSHParams(dim, L=1)
        # stays valid with the default vote_threshold.
        if self.vote_threshold < 1 or (self.combine == "vote" and self.vote_threshold > self.L):
            raise ValueError(
                f"vote_threshold must be in [1, L={self.L}], got {self.vote_threshold}"
            )
        if self.max_candidates < 0:
            raise ValueError(f"max_candidates must be >= 0, got {self.max_candidates}")
        if self.sketch_keep < 0:
            raise ValueError(f"sketch_keep must be >= 0, got {self.sketch_keep}")

    @property
    def structure(self) -> tuple[int, float, int, int, int]:
        """The fields that decide the buckets; indexes agreeing on them hold identical tables."""
        return (self.dim, float(self.w), self.m, self.L, self.seed)


# Measured defaults (w, m, L, probes, sketch_keep) by catalogue size: how they were chosen,
# run by run, is in docs/lsh-tuning.md.
_DEFAULTS: tuple[tuple[int, dict[int, tuple[float, int, int, int, int]]], ...] = (
    # (largest n the row applies to, {measured dim: (w, m, L, probes, sketch_keep)})
    (5_000, {32: (2.0, 12, 16, 8, 0), 64: (2.0, 12, 16, 8, 0)}),
    (50_000, {32: (2.0, 14, 32, 8, 200), 64: (2.0, 14, 32, 8, 200)}),
    (150_000, {32: (2.0, 14, 32, 4, 200), 64: (2.0, 15, 24, 16, 200)}),
    (300_000, {32: (2.0, 14, 32, 4, 200), 64: (2.0, 14, 32, 8, 200)}),
    (sys.maxsize, {32: (2.0, 16, 32, 10, 400), 64: (2.0, 16, 24, 20, 400)}),
)


def default_params(n_items: int, dim: int) -> LSHParams:
    """Measured defaults for `n_items` vectors of `dim` (how: docs/lsh-tuning.md)."""
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    by_dim = next(row for bound, row in _DEFAULTS if n_items <= bound)
    # Nearest measured dimension: the widths were tuned at 32 and 64 only.
    nearest = min(by_dim, key=lambda d: (abs(d - dim), d))
    w, m, tables, probes, keep = by_dim[nearest]
    return LSHParams(dim=dim, w=w, m=m, L=tables, probes=probes, sketch_keep=keep)
