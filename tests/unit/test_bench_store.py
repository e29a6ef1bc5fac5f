"""The store benchmark writes users' state straight into the changelog: each record must be
what the worker itself would store for that user (its encoding, its partition)."""

from __future__ import annotations

import numpy as np
from kafka.partitioner.default import murmur2

from nearline_rec.core.events import ItemUpdate
from nearline_rec.core.user_state import UserState
from nearline_rec.settings import Settings
from nearline_rec.tools.bench.store import Catalog, state_records


def _catalog(dim: int, n: int = 40) -> Catalog:
    return Catalog(
        [ItemUpdate(f"i{k}", "upsert", np.full(dim, 0.5, np.float32) + k % 7) for k in range(n)]
    )


def test_state_records_are_the_workers_states_on_the_users_partitions():
    s = Settings()
    records = list(state_records(s, _catalog(s.items.embedding_dim), users=50, per_user=3))
    assert len(records) == 50
    keys = {k for k, _ in records}
    assert len(keys) == 50
    for key, value in records:
        state = UserState.from_bytes(value)
        assert state.user_id.encode() == key
        assert state.n_events == 3 and len(state.history) == 3
        assert state.embedding is not None
        assert len(state.last_list) == s.ranking.top_n
        assert state.partition == (murmur2(key) & 0x7FFFFFFF) % s.topics.partitions
        # no source offsets: every later event of the user is new to the worker
        assert state.offsets == {} and state.last_offset == -1
