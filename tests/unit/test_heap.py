from __future__ import annotations

import gc

from nearline_rec.heap import freeze_heap


def test_the_heap_alive_at_the_call_is_frozen_and_what_comes_after_is_not():
    try:
        kept = [object() for _ in range(1000)]
        frozen = freeze_heap()
        assert frozen >= 1000 and gc.get_freeze_count() == frozen
        later = [[n] for n in range(10)]
        assert gc.get_freeze_count() == frozen  # new objects are collected as before
        assert kept and later
    finally:
        gc.unfreeze()
