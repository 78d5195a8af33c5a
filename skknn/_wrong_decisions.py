"""Wrong-decision counts of a kNN memory (FORMULAS.md 5) and the radius test that
keeps them current.

A leave-one-out query charges each retrieved neighbour whose label differs from
its own with one wrong decision. The distance from a query to its ``m``-th
neighbour (its *radius*) bounds what can change its list: only queries with an
added or removed vector inside their radius need searching again.
:class:`skknn.MemoryPruner` uses both to prune without recounting the memory.
"""

from __future__ import annotations

import numpy as np

from skknn._search import METRICS

__all__ = ["count_wrong_decisions", "soft_reliability", "within_radius"]

# New or removed vectors per block of the radius test: bounds the
# (batch_size, _PAIR_BLOCK) distance block to 32 MB at the default batch size.
_PAIR_BLOCK = 2048
# Slack of the radius test. The stored radii are float32 distances of one
# arithmetic, the test uses another; a slightly generous test only costs one
# unnecessary re-search, a strict one would miss a changed neighbour list.
_RADIUS_TOL = 1e-4


def soft_reliability(counts: np.ndarray, scale: float = 1.75) -> np.ndarray:
    """[VM]'s soft-pruning weight: ``scale / (1 + n)`` for ``n >= 1``, else 1.0.

    Parameters
    ----------
    counts : array-like of int
        Wrong-decision counts ``n``.
    scale : float, default=1.75

    Returns
    -------
    reliability : ndarray of float64

    Examples
    --------
    >>> from skknn.pruning import soft_reliability
    >>> soft_reliability([0, 1, 10, 100]).round(4)
    array([1.    , 0.875 , 0.1591, 0.0173])
    """
    counts = np.asarray(counts)
    return np.where(counts >= 1, scale / (1.0 + counts), 1.0)


def count_wrong_decisions(
    memory, m: int, rows=None, block_size: int = 4096, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Wrong decisions charged to neighbours by leave-one-out queries (FORMULAS.md 5).

    Each query row retrieves its ``m`` nearest *other* samples (self dropped by
    id, FORMULAS.md 2; neighbours at equal distance ordered by sample id); every
    neighbour whose label differs from the query's label gets +1. Queries run in
    blocks of ``block_size``, so no ``n x n`` matrix is formed.

    Parameters
    ----------
    memory : Memory
    m : int
        Neighbours per query (fewer when the memory holds ``m`` samples or less).
    rows : array-like of int, default=None
        Memory rows that query; all rows if None.
    block_size : int, default=4096
    progress : tqdm, default=None
        Updated with the number of queries done.

    Returns
    -------
    counts : ndarray of shape (n_samples,), int64
        Wrong decisions charged to each memory row by these queries.
    radii : ndarray of shape (n_rows,), float32
        Distance from each query to its ``m``-th neighbour; ``inf`` when it has
        fewer than ``m`` (the memory is too small, or an index found fewer).
    """
    n = memory.n_samples
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    radii = np.full(rows.shape[0], np.inf, dtype=np.float32)
    if n < 2 or rows.size == 0:
        return counts, radii
    k = min(int(m), n - 1)
    labels, ids = memory.labels, memory.sample_ids
    pos = 0
    # One spare neighbour: a tie at the m-th place is then resolved by id.
    blocks = memory.iter_loo(k + 1, rows=rows, block_size=block_size)
    for query_rows, dist, nb in blocks:
        key = np.where(nb >= 0, ids[np.maximum(nb, 0)], np.iinfo(np.int64).max)
        order = np.lexsort((key, dist), axis=1)[:, :k]
        dist = np.take_along_axis(dist, order, 1)
        nb = np.take_along_axis(nb, order, 1)
        wrong = (nb >= 0) & (labels[np.maximum(nb, 0)] != labels[query_rows][:, None])
        counts += np.bincount(nb[wrong], minlength=n)
        if k == m:
            last = nb[:, -1] >= 0
            radii[pos : pos + len(query_rows)] = np.where(last, dist[:, -1], np.inf)
        pos += len(query_rows)
        if progress is not None:
            progress.update(len(query_rows))
    return counts, radii


def within_radius(memory, rows, radii, P: np.ndarray, block_size: int) -> np.ndarray:
    """Which query rows have some vector of ``P`` within their radius.

    Exactly those queries can see their leave-one-out list change when ``P``
    enters or leaves the memory. A blocked distance computation between the
    rows and ``P``: ``(block_size, _PAIR_BLOCK)`` at a time.
    """
    X = memory.embeddings
    n_rows = X.shape[0] if rows is None else len(rows)
    radii = np.asarray(radii, dtype=np.float32)
    out = np.zeros(n_rows, dtype=bool)
    if n_rows == 0 or P.shape[0] == 0:
        return out
    P = np.ascontiguousarray(P, dtype=np.float32)
    spec = METRICS[memory.metric]
    p_sq = None if spec.inner_product else np.einsum("ij,ij->i", P, P)
    for s in range(0, n_rows, block_size):
        A = X[s : s + block_size] if rows is None else X[rows[s : s + block_size]]
        rad = radii[s : s + block_size]
        finite = np.isfinite(rad)
        hit = ~finite  # a query with fewer than m neighbours takes anyone
        if spec.inner_product:
            limit = (rad + _RADIUS_TOL)[:, None]
        else:
            a_sq = np.einsum("ij,ij->i", A, A)
            limit = (np.where(spec.sqrt, rad * rad, rad) + _RADIUS_TOL)[:, None]
        for t in range(0, P.shape[0], _PAIR_BLOCK):
            todo = ~hit
            if not todo.any():
                break
            gram = A[todo] @ P[t : t + _PAIR_BLOCK].T
            if spec.inner_product:
                near = (1.0 - gram) <= limit[todo]
            else:
                scale = a_sq[todo][:, None] + p_sq[None, t : t + _PAIR_BLOCK]
                # Relative slack: the expansion loses digits on long vectors.
                near = scale - 2.0 * gram <= limit[todo] + _RADIUS_TOL * scale
            hit[todo] = near.any(axis=1)
        out[s : s + block_size] = hit
    return out
