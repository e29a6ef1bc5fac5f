"""Embedding recall core: E2LSH over L2-normalised vectors, with its exact brute-force twin.

params (LSHParams, measured defaults) -> store (keys and rows) -> exact (ExactIndex) and
layout (bucket arrays, delta runs) -> index (LSHIndex: hash, update, query) -> kernels (the
compiled query)."""

from nearline_rec.core.lsh.exact import ExactIndex
from nearline_rec.core.lsh.index import LSHIndex, warm_up
from nearline_rec.core.lsh.params import COMBINE_RULES, LSHParams, default_params

__all__ = ["COMBINE_RULES", "ExactIndex", "LSHIndex", "LSHParams", "default_params", "warm_up"]
