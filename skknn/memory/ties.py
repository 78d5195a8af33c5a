"""Ties and exact refinement: candidates re-sorted on exact distances, equal
distances settled by sample id, and whether a k-th distance may be shared
beyond the candidates fetched (the front then fetches more).
"""

from __future__ import annotations

import warnings

import numpy as np

from skknn.memory.neighbors import MISSING

# Engines rank by float32 sums whose error is about sqrt(d) * 2**-24 of the
# vectors' scale; candidates this close (relative) to the k-th are treated as
# possibly tied with it, and more are fetched to settle the tie by id.
TIE_RTOL = 1e-5
# Candidates an exact search fetches beyond the k it keeps, to see whether the
# k-th distance is shared. With one, 1-4% of queries of 384-d embeddings found
# the next within TIE_RTOL of the k-th and searched the whole memory again (12%
# of a flat search at k = 50); with four, none of 2,000 did (benchmarks/
# RESULTS.md, "Speed ratios"). Approximate indexes keep one: a larger k widens
# an HNSW search and would change its answers.
TIE_SPARE = 4


def tie_open(metric, dist, k: int, kk: int, n: int, sq_norms) -> np.ndarray:
    """Queries whose k-th distance may be shared beyond the candidates
    fetched: the last one's exact distance is within the engine's rounding
    of the k-th (the engine ranked the candidates by its own arithmetic,
    which may put a sample 1 ulp farther ahead of an exact tie)."""
    if kk >= n or kk <= k:
        return np.zeros(dist.shape[0], dtype=bool)
    d_k, last = dist[:, k - 1].astype(np.float64), dist[:, kk - 1]
    if metric.inner_product:  # 1 - <q, x>: |q| |x| bounds the error
        return np.isfinite(d_k) & (last <= d_k + TIE_RTOL * np.sqrt(sq_norms))
    if metric.sqrt:  # compare squared distances
        d_k, last = d_k**2, np.square(last, dtype=np.float64)
    # |q - x|^2 by GEMM: the error scales with |q|^2 + |x|^2 <= 3|q|^2 + 2 d.
    tol = TIE_RTOL * (3 * sq_norms + 2 * d_k)
    return np.isfinite(d_k) & (last <= d_k + tol)


def nearest_first(dist: np.ndarray, rows: np.ndarray, row_ids: np.ndarray):
    """``(dist, rows)`` with each query's candidates by distance, equal
    distances by sample id (the order shards are merged in,
    skknn/memory/merge.py). The engine's order mostly stands: only queries it
    got wrong are sorted (a stable sort of the others changes nothing)."""
    ids = np.where(rows >= 0, row_ids[np.maximum(rows, 0)], MISSING)
    todo = np.flatnonzero(out_of_order(dist, ids))
    if todo.size:
        order = np.lexsort((ids[todo], dist[todo]), axis=-1)
        rows = rows.copy()  # the engine's array (dist is pair_distances')
        dist[todo] = np.take_along_axis(dist[todo], order, 1)
        rows[todo] = np.take_along_axis(rows[todo], order, 1)
    return dist, rows


def out_of_order(dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows not sorted by ``(dist, ids)``; a NaN distance counts as disorder."""
    d0, d1 = dist[:, :-1], dist[:, 1:]
    before = ~(d1 >= d0) | ((d1 == d0) & (ids[:, 1:] < ids[:, :-1]))
    return before.any(axis=1)


def warn_short(engine_name: str, n_short: int, n_none: int, n_queries: int, k: int):
    """Warn that queries found fewer than ``k`` neighbours in an index (the
    caller warns once per memory: a warning per batch is noise)."""
    warnings.warn(
        f"{n_short} of {n_queries} queries found fewer than k={k} neighbours in "
        f"index={engine_name!r} (inverted lists empty or too few probed). "
        "They vote with the neighbours found; kneighbors pads the rest with id "
        f"-1 and distance inf; {n_none} that found none were searched exactly. "
        "Raise nprobe / efSearch in index_params, or retrain the index "
        "(unlearn(retrain_index=True)). Warned once per memory.",
        UserWarning,
        stacklevel=5,
    )
