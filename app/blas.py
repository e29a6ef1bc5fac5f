"""BLAS threads of this process: a worker pins them to one (it scales out by processes).

On a machine whose cores are shared with other workers, Kafka and Redis, OpenBLAS's threaded
kernels spin-wait on each other: an exact search over 10k x 64 measured 176 us with 2 threads
on an idle 2-core machine and 255 us with one core busy, against 33 us and 96 us with one
thread, and the worker's end-to-end rate was 20x below the same code in a quiet process.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# Entry points of the OpenBLAS builds numpy and scipy wheels ship (64-bit-int builds are
# suffixed), tried in order.
_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _loaded_openblas() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:  # not Linux: leave the library's default
        return []
    return sorted(p for p in paths if p.startswith("/"))


def limit_blas_threads(n: int = 1) -> int:
    """Set the thread count of every loaded OpenBLAS; returns how many libraries took it."""
    import numpy  # noqa: F401  loads numpy's OpenBLAS first

    done = 0
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done += 1
                break
    if not done:
        log.info("no OpenBLAS found to limit; BLAS threads left as they are")
    return done
