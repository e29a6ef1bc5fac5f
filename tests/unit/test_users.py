"""Similar-users directory bounded by `max_users`: the most recently active users stay,
the rest leave every structure, and bulk updates equal one-by-one updates."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.catalog import IndexConfig
from nearline_rec.core.users import UserDirectory

DIM = 8
ITEMS = {f"i{n}": n for n in range(50)}


def _vectors(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _directory(max_users: int = 0, exact_below: int = 16) -> UserDirectory:
    return UserDirectory(
        DIM, IndexConfig(exact_below=exact_below), item_key=ITEMS.get, max_users=max_users
    )


@pytest.mark.parametrize("exact_below", [16, 10_000])
def test_past_max_users_the_least_recently_active_leave(exact_below: int):
    d = _directory(max_users=64, exact_below=exact_below)
    vecs = _vectors(300)
    # stamps out of insertion order: the users kept are the 64 newest by stamp
    stamps = np.random.default_rng(5).permutation(300).astype(float)
    for n in range(300):
        d.update(f"u{n}", vecs[n], [f"i{n % 50}"], float(stamps[n]))
    assert 64 <= d.held <= 64 + 2 and len(d) == d.held
    assert d.evicted == 300 - d.held
    kept = {f"u{n}" for n in range(300) if f"u{n}" in d}
    newest = {f"u{n}" for n in np.argsort(-stamps)[:64]}
    assert newest <= kept
    for n in range(300):
        user = f"u{n}"
        found = {u for u, _ in d.similar("nobody", vecs[n], 400)}
        if user in kept:
            assert user in found
            assert d.liked_keys(user).tolist() == [n % 50]
        else:
            assert user not in found
            assert d.liked_keys(user).size == 0


def test_a_full_directory_admits_only_users_newer_than_those_it_dropped():
    d = _directory(max_users=32)
    vecs = _vectors(100)
    for n in range(100):
        d.update(f"u{n}", vecs[n], [], float(n))
    assert not d.admits(0.0)
    dropped = [n for n in range(100) if f"u{n}" not in d]
    assert not d.admits(float(max(dropped)))
    assert d.admits(1000.0)
    assert _directory(max_users=0).admits(-1.0)


def test_a_dropped_users_key_is_reused_and_a_returning_user_is_found_again():
    d = _directory(max_users=8, exact_below=10_000)
    vecs = _vectors(40)
    for n in range(40):
        d.update(f"u{n}", vecs[n], [], float(n))
    assert "u0" not in d
    d.update("u0", vecs[0], ["i7"], 100.0)
    assert "u0" in d and d.user_id(d.key("u0")) == "u0"
    assert d.similar("nobody", vecs[0], 1)[0][0] == "u0"
    assert d.liked_keys("u0").tolist() == [7]
    assert len(d._ids) <= 8 + 1 + 1  # keys came back from the free list


def test_bulk_update_equals_one_by_one():
    vecs = _vectors(200)
    rows = [(f"u{n}", vecs[n], [f"i{n % 50}", f"i{(n + 1) % 50}"], float(n)) for n in range(200)]
    rows[7] = ("u7", None, ["i1"], 7.0)
    one, bulk = _directory(), _directory()
    for row in rows:
        one.update(*row)
    for start in range(0, 200, 30):
        bulk.update_many(rows[start : start + 30])
    assert len(one) == len(bulk) == 199
    for n in range(0, 200, 9):
        assert one.similar("x", vecs[n], 10) == bulk.similar("x", vecs[n], 10)
        assert one.liked_keys(f"u{n}").tolist() == bulk.liked_keys(f"u{n}").tolist()


def test_unknown_liked_items_map_to_minus_one_and_only_the_recent_are_kept():
    d = UserDirectory(DIM, IndexConfig(), recent=3, item_key=ITEMS.get)
    d.update("u", _vectors(1)[0], ["i1", "gone", "i2", "i3"])
    assert d.liked_keys("u").tolist() == [-1, 2, 3]
    d.update("u", _vectors(1)[0], ["i4"])
    assert d.liked_keys("u").tolist() == [4]


def test_negative_max_users_is_refused():
    with pytest.raises(ValueError, match="max_users"):
        UserDirectory(DIM, max_users=-1)


def test_likes_of_several_users_newest_first_in_one_gather():
    d = UserDirectory(4, IndexConfig(exact_below=1000), item_key=lambda i: int(i[1:]))
    v = np.ones(4, np.float32)
    d.update("a", v, ["i1", "i2", "i3"], 1.0)
    d.update("b", v, [], 2.0)
    d.update("c", v, [f"i{n}" for n in range(100)], 3.0)  # more than it keeps
    users = ["c", "nobody", "a", "b", "a"]
    liked, counts = d.liked_newest_first(users)
    one_by_one = [d.liked_keys(u)[::-1] for u in users]
    assert counts.tolist() == [len(x) for x in one_by_one]
    np.testing.assert_array_equal(liked, np.concatenate(one_by_one))
    assert liked[:1].tolist() == [99] and counts[2] == 3
