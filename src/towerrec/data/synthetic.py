"""A synthetic dataset in the MovieLens shape, with structure a model can learn.

Each user and item has a latent factor; a user's choice at each step is drawn
from ``popularity(item) * exp(strength * state · item)``, where the state is the
user's factor plus a slowly drifting AR(1) term. So:

* matrix factorisation finds the user/item factors (collaborative signal),
* items follow a Zipf-like popularity curve (a popularity baseline is honest),
* consecutive choices sit close in factor space (a sequence model can exploit order),
* genres come from the item factors, and age/gender from the user factors
  (side features carry signal too).

Generation is vectorised NumPy over chunks of users (bounded memory); sampling
uses a few popularity-drawn candidates per step and a Gumbel-max pick among
them, so cost is linear in the number of interactions, not in users x items.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pyarrow as pa

from towerrec.config import MAX_WIDTH, SEED_MAX, Bound
from towerrec.data.tables import Dataset
from towerrec.errors import ConfigError, shorten

GENERATOR_VERSION = 1
GENRE_NAMES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western",
)  # fmt: skip
AGE_BUCKETS = np.array([1, 18, 25, 35, 45, 50, 56], dtype=np.int32)  # MovieLens-1M codes
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
_CHUNK_STEPS = 20_000  # events per chunk: small temporaries stay in cache and are reused
_MAX_ROUNDS = 30


def make_synthetic(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = 0,
    num_genres: int = 12,
    dim: int = 8,
    popularity_exponent: float = 1.0,
    affinity: float = 10.0,
    drift: float = 1.5,
    drift_memory: float = 0.9,
    candidates: int = 32,
    start_timestamp: int = 946_684_800,  # 2000-01-01 UTC
    time_span_days: int = 1095,
) -> Dataset:
    """Generate ``num_interactions`` distinct (user, item) events with planted structure.

    ``affinity`` scales how much choices follow the latent factors (0 = popularity
    only); ``drift`` is the size of the drifting part of a user's taste relative to
    their fixed factor, and ``drift_memory`` (0..1) how slowly it moves per step.
    ``candidates`` popularity-drawn items compete per step: more makes choices
    follow affinity more exactly. Ids start at 1; every user has at least
    ``min(5, num_interactions // num_users)`` events and at most half the catalogue.
    """
    params = {
        "num_users": num_users, "num_items": num_items, "num_interactions": num_interactions,
        "seed": seed, "num_genres": num_genres, "dim": dim,
        "popularity_exponent": popularity_exponent, "affinity": affinity, "drift": drift,
        "drift_memory": drift_memory, "candidates": candidates,
        "start_timestamp": start_timestamp, "time_span_days": time_span_days,
    }  # fmt: skip
    _check_params(params)
    rng = np.random.default_rng(seed)
    user_factors = rng.standard_normal((num_users, dim)).astype(np.float32) / np.sqrt(dim)
    item_factors = rng.standard_normal((num_items, dim)).astype(np.float32) / np.sqrt(dim)
    popularity_order = rng.permutation(num_items)  # rank -> item index: popularity is not id order
    lengths = _user_lengths(rng, num_users, num_items, num_interactions)
    sampler = _Sampler(rng, item_factors, popularity_order, params)

    columns: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "rating": [], "timestamp": []}
    for lo, hi in _user_chunks(lengths):  # chunks of users: memory stays bounded at any size
        users, items = sampler.sample(user_factors[lo:hi], lengths[lo:hi])
        columns["user_id"].append(users + lo + 1)
        columns["item_id"].append(items + 1)
        columns["rating"].append(_ratings(rng, user_factors[lo:hi][users], item_factors[items]))
        columns["timestamp"].append(_timestamps(rng, lengths[lo:hi], start_timestamp, time_span_days * 86_400))
    interactions = pl.DataFrame(
        {name: np.concatenate(parts) for name, parts in columns.items()},
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
    )
    fingerprint = hashlib.sha256(
        json.dumps({"generator": "synthetic", "version": GENERATOR_VERSION, **params}, sort_keys=True).encode()
    ).hexdigest()
    return Dataset(
        name=f"synthetic-{num_users}u-{num_items}i-{num_interactions}n-s{seed}",
        interactions=interactions,
        items=_items_table(rng, item_factors, num_genres),
        users=_users_table(rng, user_factors),
        fingerprint=fingerprint,
        meta={"generator": "synthetic", "generator_version": GENERATOR_VERSION, "params": params},
    )


_PARAM_BOUNDS = {
    "num_users": Bound(1, 10**9, integer=True),
    "num_items": Bound(1, 10**9, integer=True),
    "num_interactions": Bound(1, 10**11, integer=True),
    "seed": Bound(0, SEED_MAX, integer=True),
    "num_genres": Bound(1, 10_000, integer=True),
    "dim": Bound(1, MAX_WIDTH, integer=True),
    "popularity_exponent": Bound(0.0),
    "affinity": Bound(0.0),
    "drift": Bound(0.0),
    "drift_memory": Bound(0.0, 1.0, high_open=True),
    "candidates": Bound(1, 10**6, integer=True),
    "start_timestamp": Bound(0, 2**40, integer=True),
    "time_span_days": Bound(1, 100_000, integer=True),
}


def _check_params(p: dict) -> None:
    for key, bound in _PARAM_BOUNDS.items():
        value = p[key]
        wrong_type = isinstance(value, bool) or not isinstance(value, int if bound.integer else (int, float))
        if wrong_type or not bound.holds(value):
            hint = "a dataset needs at least one interaction" if key == "num_interactions" else None
            raise ConfigError(f"{key} must be {bound.describe()}, got {shorten(value)}", hint=hint)
    capacity = p["num_users"] * _max_length(p["num_items"])
    if p["num_interactions"] > capacity:
        raise ConfigError(
            f"{p['num_interactions']} interactions do not fit {p['num_users']} users x {p['num_items']} items",
            hint=f"each user rates at most half the catalogue: ask for at most {capacity}, or more users/items",
        )


def _max_length(num_items: int) -> int:
    return max(1, num_items // 2)


def _user_lengths(rng: np.random.Generator, num_users: int, num_items: int, total: int) -> np.ndarray:
    """Heavy-tailed events per user summing exactly to ``total``, capped at half the catalogue."""
    cap = _max_length(num_items)
    floor = min(5, total // num_users, cap)
    weights = rng.lognormal(0.0, 1.0, num_users)
    lengths = np.full(num_users, floor, dtype=np.int64)
    remaining = total - lengths.sum()
    while remaining > 0:  # a few passes: the overflow above the cap is re-spread over the others
        open_ = lengths < cap
        share = weights * open_ * (remaining / (weights * open_).sum())
        add = np.minimum(np.floor(share).astype(np.int64), cap - lengths)
        lengths += add
        remaining -= add.sum()
        if remaining and not add.any():  # rounding leftovers: one each to the heaviest open users
            order = np.argsort(-(weights * (lengths < cap)), kind="stable")[:remaining]
            lengths[order] += 1
            remaining = 0
    return lengths


def _user_chunks(lengths: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive user ranges with about ``_CHUNK_STEPS`` events each."""
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(_CHUNK_STEPS, ends[-1] if len(ends) else 0, _CHUNK_STEPS), "right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(lengths)]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For concatenated per-user runs: the owner of each slot and its position in the run."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(owner.size) - starts[owner]


class _Sampler:
    """Draws each user's distinct items along a drifting taste trajectory."""

    def __init__(self, rng: np.random.Generator, item_factors: np.ndarray, order: np.ndarray, p: dict) -> None:
        self.rng = rng
        self.items = item_factors
        self.order = order
        self.p = p

    def sample(self, user_factors: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (local user index, item index) in each user's time order, ``lengths`` per user."""
        num_items = len(self.items)
        users = np.zeros(0, np.int64)
        items = np.zeros(0, np.int64)
        have = np.zeros(len(lengths), np.int64)
        for round_ in range(_MAX_ROUNDS):
            need = lengths - have
            if not need.any():
                break
            # The first round over-draws a little to absorb duplicates; later ones top up
            # the few short users from uniform candidates (popular items are used up).
            steps = need + (np.ceil(need * 0.2).astype(np.int64) + 1) * (need > 0) * (round_ + 1)
            owner, _ = _segments(steps)
            picks = self._pick(user_factors, owner, steps, uniform=round_ > 0)
            users = np.concatenate([users, owner])
            items = np.concatenate([items, picks])
            users, items, have = _dedupe_and_trim(users, items, lengths, num_items)
        else:  # pathological settings only: finish with uniformly drawn unused items
            users, items = _fill_uniform(self.rng, users, items, lengths, have, num_items)
        return users, items

    def _pick(self, user_factors: np.ndarray, owner: np.ndarray, steps: np.ndarray, uniform: bool) -> np.ndarray:
        rng, p = self.rng, self.p
        state = user_factors[owner] + p["drift"] * _ar1(rng, steps, user_factors.shape[1], p["drift_memory"])
        shape = (owner.size, p["candidates"])
        if uniform:
            cand = rng.integers(0, len(self.items), shape)
        else:
            cand = self.order[_zipf_ranks(rng, len(self.items), p["popularity_exponent"], shape)]
        logits = np.matmul(np.take(self.items, cand, axis=0), state[:, :, None])[..., 0]
        logits *= np.float32(p["affinity"])
        logits -= np.log(-np.log(rng.random(shape, dtype=np.float32) + np.float32(1e-12)))  # Gumbel-max
        return cand[np.arange(owner.size), logits.argmax(axis=1)]


def _ar1(rng: np.random.Generator, lengths: np.ndarray, dim: int, memory: float) -> np.ndarray:
    """Per-user stationary AR(1) paths (coordinate variance 1/dim), concatenated.

    A log-step parallel prefix scan (Hillis-Steele) instead of a loop over time
    steps, stopped once ``memory ** shift`` is negligible (older noise has faded).
    """
    owner, pos = _segments(lengths)
    noise = rng.standard_normal((owner.size, dim), dtype=np.float32) * np.float32(1.0 / np.sqrt(dim))
    path = noise * np.float32(np.sqrt(1.0 - memory**2))
    path[pos == 0] = noise[pos == 0]  # start in the stationary distribution
    longest = int(lengths.max()) if lengths.size else 0
    shift = 1
    while shift < longest and memory**shift > 1e-4:
        reach = np.nonzero(pos >= shift)[0]
        path[reach] += np.float32(memory**shift) * path[reach - shift]
        shift *= 2
    return path


def _zipf_ranks(rng: np.random.Generator, n: int, exponent: float, shape: tuple[int, ...]) -> np.ndarray:
    """Popularity ranks with P(rank r) ~ (r + 1) ** -exponent, by inverting the continuous CDF."""
    u = rng.random(shape, dtype=np.float32)
    if abs(exponent - 1.0) < 1e-6:
        x = np.exp2(u * np.float32(np.log2(n + 1.0)))
    else:
        a = 1.0 - exponent
        x = np.power(np.float32(1.0) + u * np.float32((n + 1.0) ** a - 1.0), np.float32(1.0 / a))
    ranks = x.astype(np.int64)
    ranks -= 1
    return np.clip(ranks, 0, n - 1, out=ranks)


def _dedupe_and_trim(
    users: np.ndarray, items: np.ndarray, lengths: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each (user, item) pair's first draw, then each user's first ``lengths[u]`` draws."""
    order = np.argsort(users, kind="stable")  # by user, keeping draw order within a user
    users, items = users[order], items[order]
    _, first = np.unique(users * num_items + items, return_index=True)
    first.sort()
    users, items = users[first], items[first]
    starts = np.searchsorted(users, np.arange(len(lengths)))
    keep = np.arange(users.size) - starts[users] < lengths[users]
    users, items = users[keep], items[keep]
    return users, items, np.bincount(users, minlength=len(lengths))


def _fill_uniform(
    rng: np.random.Generator, users: np.ndarray, items: np.ndarray, lengths: np.ndarray, have: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    extra_users, extra_items = [], []
    for user in np.nonzero(have < lengths)[0]:  # a handful of users at most
        unused = np.setdiff1d(np.arange(n), items[users == user])
        take = rng.choice(unused, lengths[user] - have[user], replace=False)
        extra_users.append(np.full(take.size, user))
        extra_items.append(take)
    users = np.concatenate([users, *extra_users])
    items = np.concatenate([items, *extra_items])
    order = np.argsort(users, kind="stable")
    return users[order], items[order]


def _ratings(rng: np.random.Generator, user_factors: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
    """1..5 stars (mean about 3.6, MovieLens-like), higher for items closer to the user's fixed taste."""
    score = np.einsum("nd,nd->n", user_factors, item_factors)
    if score.size:
        score = (score - score.mean()) / max(float(score.std()), 1e-6)
    noisy = 3.6 + 0.9 * score + 0.7 * rng.standard_normal(score.size, dtype=np.float32)
    return np.clip(np.rint(noisy), 1, 5).astype(np.float32)


def _timestamps(rng: np.random.Generator, lengths: np.ndarray, start: int, span: int) -> np.ndarray:
    """Non-decreasing times per user inside a user-specific active window of the range."""
    num_users = len(lengths)
    window = np.maximum(span * rng.beta(1.0, 3.0, num_users), 1.0)
    begin = start + rng.random(num_users) * (span - window)
    owner, _ = _segments(lengths)
    gaps = rng.exponential(size=owner.size)
    cum = np.cumsum(gaps)
    ends = np.cumsum(lengths)
    before = np.concatenate([[0.0], cum])[ends - lengths]  # cumulative total before each user
    total = np.concatenate([[0.0], cum])[ends] - before + rng.exponential(size=num_users)
    frac = (cum - before[owner]) / total[owner]
    return np.floor(begin[owner] + frac * window[owner]).astype(np.int64)


def _items_table(rng: np.random.Generator, item_factors: np.ndarray, num_genres: int) -> pl.DataFrame:
    """Titles 'Item 17 (1994)'; 1-3 genres each, drawn towards the genre prototypes an item aligns with."""
    num_items, dim = item_factors.shape
    names = np.array([GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"Genre {g + 1}" for g in range(num_genres)])
    prototypes = rng.standard_normal((num_genres, dim)).astype(np.float32) / np.sqrt(dim)
    score = 4.0 * np.sqrt(dim) * item_factors @ prototypes.T + rng.gumbel(size=(num_items, num_genres))
    ranked = np.argsort(-score, axis=1)
    count = np.minimum(rng.choice([1, 2, 3], num_items, p=[0.5, 0.35, 0.15]), num_genres)
    owner, pos = _segments(count)
    offsets = np.concatenate([[0], np.cumsum(count)])
    genres = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(names[ranked[owner, pos]], pa.large_string()))
    years = np.clip(2000 - np.floor(rng.exponential(12.0, num_items)), 1919, 2000).astype(np.int32)
    return pl.DataFrame(
        {"item_id": np.arange(1, num_items + 1, dtype=np.int64), "year": years},
        schema={"item_id": pl.Int64, "year": pl.Int32},
    ).select(
        "item_id",
        title=pl.format("Item {} ({})", "item_id", "year"),
        year="year",
        genres=pl.Series(genres, dtype=pl.List(pl.String)),
    )


def _users_table(rng: np.random.Generator, user_factors: np.ndarray) -> pl.DataFrame:
    """MovieLens-like demographics; age and gender follow the first two user factors."""
    num_users = len(user_factors)
    dim = user_factors.shape[1]
    z = user_factors * np.sqrt(dim)  # unit-variance coordinates
    age_score = z[:, 0] + 0.7 * rng.standard_normal(num_users)
    age_bin = np.searchsorted(np.quantile(age_score, [0.03, 0.2, 0.55, 0.75, 0.88, 0.95]), age_score)
    male = z[:, 1 % dim] + 0.7 * rng.standard_normal(num_users) > -0.5  # about 70% M, as in MovieLens
    return pl.DataFrame(
        {
            "user_id": np.arange(1, num_users + 1, dtype=np.int64),
            "age": AGE_BUCKETS[age_bin],
            "gender": np.where(male, "M", "F"),
            "occupation": np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), num_users)],
            "zip": np.char.zfill(rng.integers(0, 100_000, num_users).astype(str), 5),
        },
        schema={"user_id": pl.Int64, "age": pl.Int32, "gender": pl.String, "occupation": pl.String, "zip": pl.String},
    )
