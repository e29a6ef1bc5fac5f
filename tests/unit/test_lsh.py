"""Unit tests of the LSH core against its exact twin, on tiny seeded data with known answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nearline_rec.core.lsh import ExactIndex, LSHIndex, LSHParams, default_params


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mixture(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n_clusters, dim)))
    labels = rng.integers(0, n_clusters, n)
    return unit_rows(centres[labels] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim))


def build(params: LSHParams, x: np.ndarray, keys: np.ndarray | None = None) -> LSHIndex:
    index = LSHIndex(params)
    index.upsert_many(np.arange(len(x)) if keys is None else keys, x)
    return index


def recall(index, truth: ExactIndex, queries: np.ndarray, k: int) -> float:
    hits = [np.intersect1d(index.search(q, k)[0], truth.search(q, k)[0]).size / k for q in queries]
    return float(np.mean(hits))


DIM = 16
CLUSTERED = mixture(1500, DIM, n_clusters=30, spread=0.5, seed=7)
PARAMS = LSHParams(dim=DIM, w=2.0, m=8, L=24)


@pytest.fixture(scope="module")
def clustered_index() -> LSHIndex:
    return build(PARAMS, CLUSTERED)


@pytest.fixture(scope="module")
def clustered_exact() -> ExactIndex:
    exact = ExactIndex(DIM)
    exact.upsert_many(np.arange(len(CLUSTERED)), CLUSTERED)
    return exact


# -- known answers ----------------------------------------------------------------------------


def test_planted_clusters_are_found_exactly():
    rng = np.random.default_rng(0)
    centres = unit_rows(rng.standard_normal((20, DIM)))
    # 10 tight neighbours planted around each centre, among 2,000 unrelated vectors.
    planted = unit_rows(np.repeat(centres, 10, axis=0) + 0.05 * rng.standard_normal((200, DIM)))
    background = unit_rows(rng.standard_normal((2000, DIM)))
    keys = np.arange(2200) + 10_000  # keys unrelated to row positions
    index = build(LSHParams(dim=DIM, w=2.0, m=10, L=16), np.vstack([planted, background]), keys)
    for c in range(20):
        found, scores = index.search(centres[c], 10)
        assert sorted(found.tolist()) == list(range(10_000 + 10 * c, 10_000 + 10 * c + 10))
        assert np.all(np.diff(scores) <= 0)
        # Far fewer candidates than the catalogue, or this would be brute force.
        assert index.candidates(centres[c]).size < 110


def test_recall_against_exact_on_clustered_data(clustered_index, clustered_exact):
    queries = CLUSTERED[:100]
    assert recall(clustered_index, clustered_exact, queries, 10) >= 0.9
    mean_candidates = np.mean([clustered_index.candidates(q).size for q in queries])
    assert mean_candidates < 0.3 * len(CLUSTERED)


def test_exact_twin_matches_numpy_argsort():
    rng = np.random.default_rng(1)
    x = unit_rows(rng.standard_normal((300, DIM)))
    keys = rng.permutation(5000)[:300]
    exact = ExactIndex(DIM)
    exact.upsert_many(keys, x)
    for q in unit_rows(rng.standard_normal((20, DIM))):
        found, scores = exact.search(q, 7)
        order = np.argsort(-(x @ q), kind="stable")[:7]
        np.testing.assert_array_equal(found, keys[order])
        np.testing.assert_allclose(scores, (x @ q)[order], rtol=1e-6)
        assert found.dtype == np.int64 and scores.dtype == np.float32


def test_exact_twin_remove_exclude_and_short_answers():
    exact = ExactIndex(2)
    exact.upsert_many([5, 6, 7], np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32))
    assert exact.remove(6) and not exact.remove(6)
    found, _ = exact.search([1, 0], 5, exclude={5, 99})
    assert found.tolist() == [7]
    exact.upsert(8, [0.8, 0.2])  # reuses the freed row
    assert exact.search([1, 0], 5)[0].tolist() == [5, 8, 7]
    assert exact.keys().tolist() == [5, 7, 8] and len(exact) == 3 and 6 not in exact


# -- combine rules, tables, probes ------------------------------------------------------------


def test_and_within_vote_within_or(clustered_index):
    views = {
        rule: clustered_index._query_view(
            LSHParams(dim=DIM, w=2.0, m=8, L=24, combine=rule, vote_threshold=3)
        )
        for rule in ("and", "vote", "or")
    }
    all_tables = clustered_index._query_view(
        LSHParams(dim=DIM, w=2.0, m=8, L=24, combine="vote", vote_threshold=24)
    )
    strict_total = 0
    for q in CLUSTERED[:50]:
        c_and, c_vote, c_or = (set(views[r].candidates(q).tolist()) for r in ("and", "vote", "or"))
        assert c_and <= c_vote <= c_or
        assert c_vote < c_or or c_vote == c_or
        assert c_and == set(all_tables.candidates(q).tolist())
        strict_total += len(c_or) - len(c_vote)
    assert strict_total > 0  # the vote rule did filter something


def test_more_tables_never_lower_recall(clustered_exact):
    fewer = build(LSHParams(dim=DIM, w=2.0, m=8, L=6), CLUSTERED)
    more = build(LSHParams(dim=DIM, w=2.0, m=8, L=12), CLUSTERED)
    gained = 0
    for q in CLUSTERED[:60]:
        # Tables are drawn one after another, so the first 6 tables are the same ones.
        np.testing.assert_array_equal(more.signature(q)[:6], fewer.signature(q))
        assert set(fewer.candidates(q).tolist()) <= set(more.candidates(q).tolist())
        truth = clustered_exact.search(q, 10)[0]
        r_few = np.intersect1d(fewer.search(q, 10)[0], truth).size
        r_more = np.intersect1d(more.search(q, 10)[0], truth).size
        assert r_more >= r_few
        gained += r_more - r_few
    assert gained > 0


def test_probes_only_add_candidates(clustered_index):
    gained = 0
    for q in CLUSTERED[:50]:
        previous = set(clustered_index.candidates(q).tolist())
        for probes in (1, 2, 4, 8):
            current = set(clustered_index.candidates(q, probes=probes).tolist())
            assert previous <= current
            gained += len(current) - len(previous)
            previous = current
    assert gained > 0


def test_probes_read_the_nearest_boundary_first():
    index = LSHIndex(LSHParams(dim=4, w=1.0, m=2, L=1, seed=3))
    q = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    proj = (q.astype(np.float64) @ index._a + index._b) / index.params.w  # h(v) before floor
    frac = proj - np.floor(proj)
    # The nearest boundary over both coordinates and both directions decides the first probe.
    dist = np.concatenate([frac, 1 - frac])
    j = int(np.argmin(dist))
    step = np.zeros(2, dtype=np.int64)
    step[j % 2] = -1 if j < 2 else 1
    h = np.floor(proj).astype(np.int64) + step
    expected = int((h.astype(np.uint64) * index._mult[0]).sum(dtype=np.uint64).view(np.int64))
    probed = index._probe_keys(index.signature(q), frac.reshape(1, 2), 1)
    assert index._tagged(np.array([expected])).item() in probed.tolist()


@pytest.mark.parametrize("width", [1, 2, 16])
def test_directory_scan_agrees_with_binary_search(clustered_index, width):
    index = clustered_index._query_view(clustered_index.params)
    # A narrow scan sends most probes to the crowded-cell fallback; all widths must agree.
    index._SCAN_WIDTH, index._scan = width, np.arange(width)
    keys = index._bucket_keys
    rng = np.random.default_rng(2)
    probes = np.unique(np.concatenate([keys[::7], rng.integers(0, 2**32, 300).astype(np.uint32)]))
    starts, ends = index._bucket_ranges(probes)
    present = np.isin(probes, keys)
    at = np.searchsorted(keys, probes[present])
    np.testing.assert_array_equal(starts, index._bucket_starts[at])
    np.testing.assert_array_equal(ends, index._bucket_starts[at + 1])


def test_max_candidates_caps_by_table_hits(clustered_index):
    capped = clustered_index._query_view(LSHParams(dim=DIM, w=2.0, m=8, L=24, max_candidates=25))
    trimmed = 0
    for q in CLUSTERED[1400:1420]:
        full = clustered_index.candidates(q)
        kept = capped.candidates(q)
        assert kept.size == min(25, full.size)
        assert set(kept.tolist()) <= set(full.tolist())
        # Table hits of each candidate, recomputed from signatures.
        sig = clustered_index.signature(q)
        codes = clustered_index._row_codes(full)  # keys are rows in this index
        hits = {int(key): int((c == sig).sum()) for key, c in zip(full, codes, strict=True)}
        dropped = set(full.tolist()) - set(kept.tolist())
        if dropped:
            trimmed += 1
            assert min(hits[key] for key in kept.tolist()) >= max(hits[key] for key in dropped)
    assert trimmed > 0
    # The query's own row is in all 24 tables, so the cap keeps it.
    assert 1405 in capped.candidates(CLUSTERED[1405]).tolist()


# -- updates ----------------------------------------------------------------------------------


class SmallLevels(LSHIndex):
    """Delta levels small enough for a few hundred updates to pass through all of them."""

    _TAIL_ROWS = 4
    _SMALL_ROWS = 16
    _MAIN_FRACTION = 4


def test_incremental_updates_equal_a_rebuild():
    rng = np.random.default_rng(11)
    params = LSHParams(dim=8, w=1.5, m=4, L=6)
    index = SmallLevels(params)
    live: dict[int, np.ndarray] = {}
    levels = {"tail": 0, "small": 0, "large": 0, "arrays": 0}
    for step in range(700):
        op = rng.random()
        key = int(rng.integers(0, 400))
        if op < 0.55:
            v = unit_rows(rng.standard_normal((1, 8)))[0]
            index.upsert(key, v)  # insert or move
            live[key] = v
        elif op < 0.8:
            assert index.remove(key) == (key in live)
            live.pop(key, None)
        else:
            batch = rng.integers(0, 400, 30)
            vs = unit_rows(rng.standard_normal((30, 8)))
            index.upsert_many(batch, vs)  # repeats keep their last vector
            live.update(zip(batch.tolist(), vs, strict=True))
        if step % 25 == 24 or step == 699:
            levels["tail"] += index._tail_n > 0
            levels["small"] += index._small[0].size > 0
            levels["large"] += index._large[0].size > 0
            levels["arrays"] += index._entry_rows.size > 0
            keys = np.array(sorted(live), dtype=np.int64)
            rebuilt = build(params, np.array([live[k] for k in keys]), keys)
            assert index.buckets() == rebuilt.buckets()
            np.testing.assert_array_equal(index.keys(), keys)
            for q in unit_rows(rng.standard_normal((10, 8))):
                np.testing.assert_array_equal(index.candidates(q), rebuilt.candidates(q))
                np.testing.assert_array_equal(
                    index.candidates(q, probes=3), rebuilt.candidates(q, probes=3)
                )
                a, b = index.search(q, 5), rebuilt.search(q, 5)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
                # The sign sketches follow moves too: a sketch-filtered search agrees.
                sketched = replace(params, probes=3, sketch_keep=1)
                a = index._query_view(sketched).search(q, 2)
                b = rebuilt._query_view(sketched).search(q, 2)
                np.testing.assert_array_equal(a[0], b[0])
    # Every level of the delta and the merged arrays were exercised.
    assert all(levels.values()), levels


def test_move_and_vector_round_trip():
    index = LSHIndex(LSHParams(dim=3, w=1.0, m=3, L=4))
    index.upsert(1, [1.0, 0.0, 0.0])
    old = index.signature([1.0, 0.0, 0.0])
    index.upsert(1, [0.0, 0.0, 1.0])
    assert index.vector(1).tolist() == [0.0, 0.0, 1.0]
    assert len(index) == 1
    new = index.signature([0.0, 0.0, 1.0])
    tables = index.buckets()
    for t in range(4):
        assert tables[t] == {int(new[t]): frozenset({1})}
        if old[t] != new[t]:
            assert int(old[t]) not in tables[t]
    with pytest.raises(KeyError):
        index.vector(2)


def test_remove_returns_false_for_absent():
    index = build(PARAMS, CLUSTERED[:10])
    assert index.remove(3) is True
    assert index.remove(3) is False
    assert index.remove(12345) is False
    assert 3 not in index and len(index) == 9
    assert 3 not in index.search(CLUSTERED[3], 10)[0].tolist()


def test_upsert_many_repeated_key_keeps_last():
    index = LSHIndex(LSHParams(dim=2, w=1.0, m=2, L=2))
    index.upsert_many([4, 4, 5], np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32))
    assert index.vector(4).tolist() == [0.0, 1.0]
    assert index.keys().tolist() == [4, 5]


def test_bad_inputs_are_rejected():
    index = LSHIndex(LSHParams(dim=2, w=1.0, m=2, L=2))
    with pytest.raises(ValueError, match="non-negative"):
        index.upsert(-1, [1.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        index.upsert_many(np.array([2**63], dtype=np.uint64), np.ones((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        index.upsert(1, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        index.upsert(1, [np.nan, 0.0])
    with pytest.raises(ValueError, match="keys for"):
        index.upsert_many([1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="probes"):
        index.search([1.0, 0.0], 3, probes=5)


# -- hashing contract -------------------------------------------------------------------------


def test_same_seed_same_signatures_different_seed_different():
    p = LSHParams(dim=DIM, w=2.0, m=6, L=8, seed=5)
    a, b = LSHIndex(p), LSHIndex(p)
    c = LSHIndex(LSHParams(dim=DIM, w=2.0, m=6, L=8, seed=6))
    sig_a = np.array([a.signature(v) for v in CLUSTERED[:50]])
    sig_b = np.array([b.signature(v) for v in CLUSTERED[:50]])
    sig_c = np.array([c.signature(v) for v in CLUSTERED[:50]])
    assert sig_a.dtype == np.int64 and sig_a.shape == (50, 8)
    np.testing.assert_array_equal(sig_a, sig_b)
    assert (sig_a != sig_c).mean() > 0.9


def test_signature_golden_values():
    # Buckets are mirrored to Redis by every replica: any change to the draws or the key mixing
    # moves every bucket and must be a deliberate, migrated change, not an accident.
    index = LSHIndex(LSHParams(dim=4, w=2.0, m=3, L=3, seed=42))
    sig = index.signature([0.5, -0.5, 0.5, 0.5])
    assert sig.tolist() == [5369035135240769770, 8661775878927890975, 1393903357016985990]


def test_signature_matches_bulk_codes():
    index = build(PARAMS, CLUSTERED[:200])
    entry_keys = index._entry_keys()
    for row in range(0, 200, 17):
        # The keys the bulk load filed the row under are those of its signature.
        stored = np.sort(entry_keys[index._entry_rows == row])
        np.testing.assert_array_equal(
            stored, np.sort(index._tagged(index.signature(CLUSTERED[row])))
        )


def test_single_upserts_file_rows_like_the_bulk_load():
    # One-at-a-time updates hash in a compiled helper: keys and sketches must be the bulk
    # path's, or a replica that streamed its items would bucket them unlike one that bulk
    # loaded them (and `buckets()` would see a layout out of sync).
    bulk = build(PARAMS, CLUSTERED[:300])
    single = LSHIndex(PARAMS)
    for row in range(300):
        single.upsert(row, CLUSTERED[row])
    single.compact()
    assert single.buckets() == bulk.buckets()
    np.testing.assert_array_equal(single._sketch[:300], bulk._sketch[:300])
    # a move re-files the row under the moved vector's keys
    single.upsert(5, CLUSTERED[400])
    bulk.upsert_many([5, 6], CLUSTERED[[400, 6]])
    assert single.buckets() == bulk.buckets()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", 0),
        ("w", 0.0),
        ("w", -1.0),
        ("m", 0),
        ("L", 0),
        ("probes", -1),
        ("probes", 17),
        ("combine", "xor"),
        ("vote_threshold", 0),
        ("vote_threshold", 9),
        ("max_candidates", -1),
    ],
)
def test_param_validation_names_the_field(field, value):
    kwargs = {"dim": 4, "m": 8, "L": 8, "combine": "vote", field: value}
    with pytest.raises(ValueError, match=field):
        LSHParams(**kwargs)


def test_single_table_params_are_valid_with_default_vote_threshold():
    assert LSHParams(dim=4, L=1).L == 1


@pytest.mark.parametrize("n_items", [0, 2_000, 20_000, 100_000, 5_000_000])
@pytest.mark.parametrize("dim", [8, 32, 64, 300])
def test_default_params_are_valid(n_items, dim):
    p = default_params(n_items, dim)
    assert p.dim == dim and p.L >= 1 and p.w > 0


# -- search contract --------------------------------------------------------------------------


def test_search_respects_k_exclude_and_is_deterministic(clustered_index):
    q = CLUSTERED[0]
    found, scores = clustered_index.search(q, 10)
    assert found.size == 10 and found.dtype == np.int64 and scores.dtype == np.float32
    assert found[0] == 0  # the query's own row
    again = clustered_index.search(q, 10)
    np.testing.assert_array_equal(found, again[0])
    twin = build(PARAMS, CLUSTERED)
    np.testing.assert_array_equal(found, twin.search(q, 10)[0])
    skip = set(found[:4].tolist())
    rest, _ = clustered_index.search(q, 6, exclude=skip)
    assert not skip & set(rest.tolist())
    np.testing.assert_array_equal(rest, found[4:10])
    # A numpy array of keys, including absent ones, excludes the same way.
    as_array, _ = clustered_index.search(q, 6, exclude=np.array([*skip, 10**9]))
    np.testing.assert_array_equal(as_array, rest)
    assert clustered_index.search(q, 3)[0].size == 3
    assert clustered_index.search(q, 0)[0].size == 0


def test_ties_broken_by_key_ascending():
    index = LSHIndex(LSHParams(dim=2, w=1.0, m=2, L=2))
    v = np.array([0.6, 0.8], dtype=np.float32)
    index.upsert_many([30, 10, 20, 40], np.array([v, v, v, [0.8, -0.6]], dtype=np.float32))
    found, scores = index.search(v, 2)
    assert found.tolist() == [10, 20]
    assert scores[0] == scores[1]
    exact = ExactIndex(2)
    exact.upsert_many([30, 10, 20], np.array([v, v, v]))
    assert exact.search(v, 2)[0].tolist() == [10, 20]


def test_search_batch_equals_single_searches(clustered_index, clustered_exact):
    queries = CLUSTERED[100:120]
    exclude = [{100 + i} for i in range(20)]
    for twin in (clustered_index, clustered_exact):
        batch = twin.search_batch(queries, 5, exclude=exclude)
        for q, ex, (keys, scores) in zip(queries, exclude, batch, strict=True):
            single = twin.search(q, 5, exclude=ex)
            np.testing.assert_array_equal(keys, single[0])
            np.testing.assert_allclose(scores, single[1], rtol=1e-6)
            assert not ex & set(keys.tolist())


def test_empty_index_and_memory_estimate():
    index = LSHIndex(PARAMS)
    assert len(index) == 0 and index.keys().size == 0
    assert index.search(CLUSTERED[0], 5)[0].size == 0
    assert index.candidates(CLUSTERED[0]).size == 0
    empty = index.memory_bytes()
    index.upsert_many(np.arange(len(CLUSTERED)), CLUSTERED)
    # At least the vectors and a row id (4 B) per item and table (plus the bucket keys); the
    # per-row codes (8 B per item and table) are no longer kept.
    assert index.memory_bytes() >= empty + CLUSTERED.nbytes + 4 * len(CLUSTERED) * PARAMS.L


def test_sketch_keep_reranks_the_nearest_candidates_by_sketch_exactly(
    clustered_index, clustered_exact
):
    view = clustered_index._query_view(replace(PARAMS, sketch_keep=60))
    queries = unit_rows(np.random.default_rng(5).standard_normal((20, DIM)))
    for q in np.concatenate([queries, CLUSTERED[:20]]):
        rows = np.sort(clustered_index._key_to_row.lookup(clustered_index.candidates(q)))
        raw = clustered_index._vectors[rows].astype(np.float64) @ clustered_index._a
        q_raw = q[None, :].astype(np.float64) @ clustered_index._a
        hamming = np.bitwise_count(
            clustered_index._sketch_of(raw) ^ clustered_index._sketch_of(q_raw)[0]
        )
        keep = max(60, 4 * 10)
        if rows.shape[0] > keep:
            rows = rows[hamming <= np.sort(hamming)[keep - 1]]
        assert rows.shape[0] >= min(keep, len(clustered_index.candidates(q)))
        scores = clustered_index._vectors[rows] @ q
        order = np.lexsort((clustered_index._row_keys[rows], -scores))[:10]
        keys, got = view.search(q, 10)
        np.testing.assert_array_equal(keys, clustered_index._row_keys[rows[order]])
        np.testing.assert_allclose(got, scores[order], rtol=1e-6)
    # Far candidates go first: recall barely moves, and batch agrees with single queries.
    assert recall(view, clustered_exact, queries, 10) >= (
        recall(clustered_index, clustered_exact, queries, 10) - 0.02
    )
    for (a, sa), (b, sb) in zip(
        view.search_batch(queries, 10), [view.search(q, 10) for q in queries], strict=True
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(sa, sb, rtol=1e-6)


def test_sketch_keep_zero_reranks_every_candidate(clustered_index):
    q = CLUSTERED[3]
    with_zero = clustered_index._query_view(replace(PARAMS, sketch_keep=0)).search(q, 50)
    np.testing.assert_array_equal(with_zero[0], clustered_index.search(q, 50)[0])
    with pytest.raises(ValueError, match="sketch_keep"):
        LSHParams(dim=DIM, sketch_keep=-1)


def numpy_reference_search(
    index: LSHIndex, q: np.ndarray, k: int, exclude, probes=None, allowed=None
):
    """The vectorised numpy query path (still used for "and"/"vote"), with the "or" rule."""
    codes, frac, sketch = index._hash(q[None, :].astype(np.float32))
    p = index.params
    keep = max(p.sketch_keep, 4 * k) if p.sketch_keep else 0
    rows = index._filter_rows(
        index._candidate_rows(codes[0], frac[0], probes), exclude, sketch[0], keep, allowed
    )
    scores = index._vectors[rows].astype(np.float64) @ q.astype(np.float64)
    order = np.lexsort((index._row_keys[rows], -scores))[:k]
    return index._row_keys[rows[order]], scores[order]


@pytest.mark.parametrize("sketch_keep", [0, 12])
def test_compiled_query_equals_the_numpy_path_through_updates(sketch_keep):
    """The compiled kernel (probing, lookup, gather, dedupe, exclusion, sketch cut, re-rank)
    returns what the numpy path returns, with rows dead in the arrays and live in every delta
    level."""
    rng = np.random.default_rng(23)
    params = LSHParams(dim=12, w=1.5, m=5, L=8, probes=4, sketch_keep=sketch_keep)
    index = SmallLevels(params)
    index.upsert_many(np.arange(300), unit_rows(rng.standard_normal((300, 12))))
    compared = 0
    for step in range(400):
        key = int(rng.integers(0, 420))
        if rng.random() < 0.8:
            index.upsert(key, unit_rows(rng.standard_normal((1, 12)))[0])
        else:
            index.remove(key)
        if step % 40 == 39:
            assert index._dead_in_main and (index._tail_n or index._small[0].size)
            for q in unit_rows(rng.standard_normal((15, 12))):
                exclude = set(rng.integers(0, 420, 25).tolist())
                allowed = rng.random(400) < 0.7 if rng.random() < 0.5 else None
                for probes in (None, 0, 9):
                    want = numpy_reference_search(index, q, 7, exclude, probes, allowed)
                    got = index.search(q, 7, exclude=exclude, probes=probes, allowed=allowed)
                    np.testing.assert_array_equal(got[0], want[0])
                    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
                    assert not exclude & set(got[0].tolist())
                    compared += 1
    assert compared == 10 * 15 * 3


def test_allowed_mask_returns_the_best_allowed_keys(clustered_index, clustered_exact):
    """`allowed` (a bool per key) keeps the others out while candidates are gathered: the
    answer is the ranking without it, minus the keys not allowed, cut to k."""
    rng = np.random.default_rng(31)
    allowed = rng.random(len(CLUSTERED) - 100) < 0.5  # keys past its end are not allowed
    for index in (clustered_index, clustered_exact):
        for q in unit_rows(rng.standard_normal((10, DIM))):
            every, every_scores = index.search(q, len(CLUSTERED))
            ok = (every < allowed.shape[0]) & allowed[np.minimum(every, allowed.shape[0] - 1)]
            keys, scores = index.search(q, 8, allowed=allowed)
            np.testing.assert_array_equal(keys, every[ok][:8])
            np.testing.assert_allclose(scores, every_scores[ok][:8], rtol=1e-6)
            assert allowed[keys].all()
        # nothing allowed: nothing found
        assert index.search(CLUSTERED[0], 5, allowed=np.zeros(0, bool))[0].size == 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["lsh", "exact"])
def test_search_many_answers_as_one_search_each(kind, threads):
    """Per-query k (small ones ranked in the kernel, large ones after it), excluded key and
    allowed mask, rows in the delta, split over threads: the answers of `search`."""
    rng = np.random.default_rng(1)
    n, d = 3000, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = LSHIndex(default_params(n, d)) if kind == "lsh" else ExactIndex(d)
    index.upsert_many(np.arange(n) * 3, x)
    index.upsert(7, x[5])  # an update not yet merged
    nq = 60
    qs = x[rng.integers(0, n, nq)] + 0.2 * rng.standard_normal((nq, d)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    ks = rng.choice([0, 5, 20, 40, 300], nq)
    masks = rng.random((3, 3 * n + 10)) < 0.8
    of = rng.integers(-1, 3, nq)
    ex = np.where(rng.random(nq) < 0.5, rng.integers(0, n, nq) * 3, -1)
    got = index.search_many(qs, ks, exclude_keys=ex, allowed=masks, allowed_of=of, threads=threads)
    for i in range(nq):
        want = index.search(
            qs[i],
            int(ks[i]),
            exclude=None if ex[i] < 0 else {int(ex[i])},
            allowed=None if of[i] < 0 else masks[of[i]],
        )
        np.testing.assert_array_equal(got[i][0], want[0])
        np.testing.assert_array_equal(got[i][1], want[1])
    assert sum(len(k) for k, _ in got) > 0
