"""The sample's ratings: who rates what (users' tastes, Zipf activity, items drawn mostly on
taste), when, and how many stars (seeded; app/data/sample.py writes them as ratings.csv)."""

from __future__ import annotations

import numpy as np

from nearline_rec.data.sample_items import DAY, ITEM_ZIPF, WINDOW_DAYS, WINDOW_START
from nearline_rec.progress import terminal_bar

USER_ZIPF = 1.0  # activity exponent (shifted Zipf: (rank + USER_ZIPF_SHIFT) ** -USER_ZIPF)
USER_ZIPF_SHIFT = 8.0
ON_TASTE = 0.85  # share of a user's choice weight on their own tastes
HALF_STAR_USERS = 0.4  # share of users who use half stars; the rest rate whole stars


def draw_user_tastes(
    rng: np.random.Generator, n_users: int, n_tastes: int, share: np.ndarray
) -> tuple[list[list[int]], np.ndarray]:
    """Each user has 1-2 tastes; alpha[u, t] is the weight of taste t in their choices."""
    primary = rng.choice(n_tastes, size=n_users, p=share)
    two = (rng.random(n_users) < 0.45) & (n_tastes > 1)
    second = (primary + 1 + rng.integers(0, max(n_tastes - 1, 1), size=n_users)) % n_tastes
    w1 = np.where(two, rng.uniform(0.55, 0.8, size=n_users), 1.0)
    alpha = np.zeros((n_users, n_tastes))
    rows = np.arange(n_users)
    alpha[rows, primary] = w1
    alpha[rows[two], second[two]] = 1.0 - w1[two]
    tastes = [[int(primary[u]), int(second[u])] if two[u] else [int(primary[u])] for u in rows]
    return tastes, alpha


def draw_activity(
    rng: np.random.Generator, n_users: int, n_items: int, n_ratings: int
) -> np.ndarray:
    """Ratings per user: shifted Zipf over a random user order, capped, summing to n_ratings."""
    rank = rng.permutation(n_users)
    weight = (rank + USER_ZIPF_SHIFT) ** -USER_ZIPF
    base = max(1, min(10, n_ratings // (4 * n_users)))
    counts = base + rng.multinomial(n_ratings - base * n_users, weight / weight.sum())
    # Nobody rates more than a quarter of the catalogue unless the totals force it.
    cap = min(n_items, max(n_items // 4, -(-n_ratings // n_users) * 3 // 2))
    while (over := counts > cap).any():
        excess = int((counts[over] - cap).sum())
        counts[over] = cap
        room = counts < cap
        w = weight * room
        counts += rng.multinomial(excess, w / w.sum())
    return counts.astype(np.int64)


def choose_items(
    rng: np.random.Generator,
    alpha: np.ndarray,
    counts: np.ndarray,
    item_taste: np.ndarray,
    pop_rank: np.ndarray,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items per user, drawn without replacement.

    Weight of item i for user u: ON_TASTE * alpha[u, taste(i)] * pop(i | taste)
    + (1 - ON_TASTE) * pop(i) overall, with Zipf pop inside each taste.

    Sampling without replacement equals drawing with replacement and skipping
    repeats, so a few vectorised rounds of that (cost ~ n_ratings) serve most
    users; users still short afterwards (heavy raters who have used up most of
    their weight) finish with a Gumbel top-k over the items they have not got,
    which costs n_items per such user.
    """
    n_users, n_tastes = alpha.shape
    n_items = len(item_taste)
    pop = (pop_rank + 1.0) ** -ITEM_ZIPF
    # Items sorted by taste with each taste's cdf shifted by the taste index, so one
    # searchsorted on (taste + u) draws an item of that taste.
    by_taste = np.lexsort((pop_rank, item_taste))
    taste_mass = np.bincount(item_taste, weights=pop, minlength=n_tastes)
    within = np.cumsum(pop[by_taste]) - np.repeat(
        np.concatenate([[0.0], np.cumsum(taste_mass)[:-1]]), np.bincount(item_taste)
    )
    taste_cdf = item_taste[by_taste] + within / taste_mass[item_taste[by_taste]]
    taste_cdf[np.cumsum(np.bincount(item_taste)) - 1] = np.arange(n_tastes) + 1.0
    global_cdf = np.cumsum(pop) / pop.sum()
    global_cdf[-1] = 1.0
    # Users have one or two tastes: the main one with weight w1, else the second.
    rows = np.arange(n_users)
    main = alpha.argmax(axis=1)
    w1 = alpha[rows, main]
    rest = alpha.copy()
    rest[rows, main] = -1.0
    second = rest.argmax(axis=1)

    chosen = np.empty(0, dtype=np.int64)  # sorted pair keys user * n_items + item
    need = counts.astype(np.int64).copy()
    # inner bars only where they redraw in place; off a terminal the outer lines suffice
    rounds = terminal_bar(range(8), "ratings", "round", enabled=progress)
    for _ in rounds:
        short = np.flatnonzero(need > 0)
        if len(short) == 0:
            break
        draws = np.repeat(short, need[short] + need[short] // 2 + 2)
        taste = np.where(rng.random(len(draws)) < w1[draws], main[draws], second[draws])
        u_item = rng.random(len(draws))
        on_pick = by_taste[np.minimum(np.searchsorted(taste_cdf, taste + u_item), n_items - 1)]
        off_pick = np.minimum(np.searchsorted(global_cdf, u_item), n_items - 1)
        picks = np.where(rng.random(len(draws)) < ON_TASTE, on_pick, off_pick)
        keys = draws.astype(np.int64) * n_items + picks
        # First occurrence of each new pair, in draw order, then at most need[u] per user.
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first)
        first = first[~_sorted_contains(chosen, keys[first])]
        owner = draws[first]
        rank = _rank_in_group(owner)
        keep = first[rank < need[owner]]
        need -= np.bincount(draws[keep], minlength=n_users)
        chosen = np.sort(np.concatenate([chosen, keys[keep]]))  # keys are new: no dedupe
    rounds.close()

    short = np.flatnonzero(need > 0)
    if len(short):
        extra = []
        chunk = max(1, 2_000_000 // n_items)
        on = ON_TASTE * pop / taste_mass[item_taste]
        off = (1.0 - ON_TASTE) * pop / pop.sum()
        for s in range(0, len(short), chunk):
            us = short[s : s + chunk]
            keys = np.log(alpha[us][:, item_taste] * on + off)
            keys += rng.gumbel(size=keys.shape)
            lo, hi = np.searchsorted(chosen, [us[0] * n_items, (us[-1] + 1) * n_items])
            got = chosen[lo:hi]
            row = np.minimum(np.searchsorted(us, got // n_items), len(us) - 1)
            mine = us[row] == got // n_items
            keys[row[mine], got[mine] % n_items] = -np.inf
            order = np.argsort(-keys, axis=1, kind="stable")
            take = np.arange(n_items)[None, :] < need[us][:, None]
            extra.append((us[:, None] * n_items + order)[take])
        chosen = np.sort(np.concatenate([chosen, *extra]))
    return chosen // n_items, chosen % n_items


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values, for values in any order (stable)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[start, len(g)])
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - np.repeat(start, sizes)
    return rank


def draw_rating_times(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    counts: np.ndarray,
    release: np.ndarray,
) -> np.ndarray:
    """Unix seconds per (user, item), grouped into sessions and never before release.

    Each user has sessions (a start and a length of minutes to an hour or two) spread
    from their sign-up to the window's end; a rating falls inside one of the user's
    sessions that starts after the item's release. New releases prefer the earliest
    eligible sessions, so they get a burst of ratings soon after they come out.
    """
    n_users = len(counts)
    end = WINDOW_START + WINDOW_DAYS * DAY
    per_session = rng.uniform(3.0, 12.0, size=n_users)
    n_sess = np.maximum(1, np.ceil(counts / per_session)).astype(np.int64)
    signup = WINDOW_START + (rng.beta(1.0, 2.5, size=n_users) * 0.8 * WINDOW_DAYS * DAY)
    sess_user = np.repeat(np.arange(n_users), n_sess)
    sess_start = np.floor(
        signup[sess_user] + rng.random(len(sess_user)) * (end - 2 * 3600 - signup[sess_user])
    ).astype(np.int64)
    sess_len = (300 + rng.exponential(2400.0, size=len(sess_user))).astype(np.int64)
    # Sort sessions by (user, start) and search them with one composite int64 key.
    order = np.lexsort((sess_start, sess_user))
    sess_start, sess_len = sess_start[order], sess_len[order]
    stride = np.int64(end - WINDOW_START + 1)
    key = sess_user.astype(np.int64) * stride + (sess_start - WINDOW_START)
    first = np.concatenate([[0], np.cumsum(n_sess)])
    rel = np.maximum(release[items], WINDOW_START)
    lo = np.searchsorted(key, users.astype(np.int64) * stride + (rel - WINDOW_START), "left")
    hi = first[users + 1]
    u = rng.random(len(users))
    u = np.where(release[items] >= WINDOW_START, u * u, u)
    has = lo < hi
    pick = np.minimum(lo + np.floor(u * (hi - lo)).astype(np.int64), hi - 1)
    pick = np.where(has, pick, 0)
    offset = np.floor(rng.random(len(users)) * sess_len[pick]).astype(np.int64)
    in_session = np.minimum(sess_start[pick] + offset, end)
    # No session after the release: the user comes back once, a few days later.
    late = np.minimum(rel + np.ceil(rng.exponential(3.0 * DAY, size=len(users))), end)
    return np.where(has, in_session, late.astype(np.int64))


def draw_rating_values(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    alpha: np.ndarray,
    item_taste: np.ndarray,
) -> np.ndarray:
    """Stars: high on the user's tastes, low elsewhere, with user and item bias and noise."""
    n_users = int(alpha.shape[0])
    user_bias = rng.normal(0.0, 0.3, size=n_users)
    item_bias = rng.normal(0.0, 0.3, size=len(item_taste))
    on = alpha[users, item_taste[items]] > 0
    mean = np.where(on, 4.1, 2.3) + user_bias[users] + item_bias[items]
    raw = mean + rng.normal(0.0, 0.6, size=len(users))
    half = rng.random(n_users) < HALF_STAR_USERS
    halves = np.clip(np.round(raw * 2.0), 1, 10)
    wholes = np.clip(np.round(raw), 1, 5) * 2.0
    return np.where(half[users], halves, wholes) / 2.0
