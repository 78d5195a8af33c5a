"""Queries far from everything the memory holds, searched exactly.

An inverted-file index probes the lists nearest to a query; a graph walks from
its entry points towards it. Both answer well where the query sits among the
stored samples, and poorly where it does not: a query about a region whose
samples were unlearned probes lists that are empty or were refilled by unrelated
samples, and its true neighbours lie in lists it never visits (recall 0.07 on
such queries in ``benchmarks/bench_streaming.py``, whatever ``nprobe``).

What tells them apart is cheap to measure: the distance to the k-th candidate.
A stored sample's own k-th neighbour distance, over a seeded sample of the
memory, gives the scale of "near"; a query whose k-th candidate lies beyond the
``far_quantile`` of that scale is out of the index's distribution and is
searched by brute force instead. The reference is measured once per memory
state (version), ``k`` and knobs, and kept outside the store's ``__dict__``
(searches leave the store as they found it).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

# Stored samples whose own neighbours set the scale: enough for a 0.99
# quantile to rest on a few samples, few enough to cost a fraction of a block.
REFERENCE_SAMPLES = 512

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def far_queries(store, X, Q, dist, k: int, kk: int, far: float, search) -> np.ndarray:
    """Mask of the queries whose ``k``-th candidate is farther than the
    ``far`` quantile of the memory's own k-th-neighbour distances.

    Parameters
    ----------
    store : object
        The memory (a cache key only: its ``version`` names its state).
    X : ndarray of shape (n_samples, n_features)
        The stored rows, as searched.
    Q : ndarray of shape (n_queries, n_features)
        Pre-processed queries.
    dist : ndarray of shape (n_queries, kk)
        Their candidates' exact distances, nearest first (``inf`` for none).
    k, kk : int
        Neighbours asked for, candidates fetched.
    far : float
        The quantile, in (0, 1].
    search : callable
        ``search(S, kk) -> (distances, rows)``: exact distances of the
        candidates the index finds for stored rows ``S``, nearest first, as
        the queries' were found.

    Returns
    -------
    mask : ndarray of bool of shape (n_queries,)
    """
    if X.shape[0] <= k:
        return np.zeros(Q.shape[0], bool)  # every sample is a neighbour anyway
    radius = _reference(store, X, k, kk, far, search)
    return dist[:, k - 1] > radius


def _reference(store, X, k: int, kk: int, far: float, search) -> float:
    key = (store.version, X.shape[0], k, kk, far)
    with _cache_lock:
        hit = _cache.get(store)
    if hit is not None and hit[0] == key:
        return hit[1]
    n = X.shape[0]
    # Seeded by the state, so one memory state answers one way every time.
    rng = np.random.default_rng([store.version, n, k])
    rows = np.sort(rng.choice(n, min(n, REFERENCE_SAMPLES), replace=False))
    dist, found = search(np.ascontiguousarray(X[rows], dtype=np.float32), kk + 1)
    # A sample is not its own neighbour (the index may or may not find it).
    dist = np.where(found == rows[:, None], np.inf, dist)
    kth = np.sort(dist, axis=1)[:, k - 1]
    kth = kth[np.isfinite(kth)]
    radius = float(np.quantile(kth, far)) if kth.size else np.inf
    with _cache_lock:
        _cache[store] = (key, radius)
    return radius
