"""Wrong-decision counts of a kNN memory (FORMULAS.md 5).

A leave-one-out query charges each retrieved neighbour whose label differs from
its own with one wrong decision. The distance from a query to its ``m``-th
neighbour (its *radius*) bounds what can change its list: only queries with an
added or removed vector inside their radius need searching again (the store's
``within_radius``). :class:`skknn.MemoryPruner` uses both to prune without
recounting the memory.
"""

from __future__ import annotations

import numpy as np

from skknn._docstrings import fill_doc

__all__ = ["IdPositions", "count_wrong_decisions", "soft_reliability"]


def soft_reliability(counts: np.ndarray, scale: float = 1.75) -> np.ndarray:
    """[VM]'s soft-pruning weight: ``scale / (1 + n)`` for ``n >= 1``, else 1.0.

    Parameters
    ----------
    counts : array-like of int
        Wrong-decision counts ``n``.
    scale : float, default=1.75
        Numerator of the weight (``reliability_scale`` of :class:`~skknn.MemoryPruner`).

    Returns
    -------
    reliability : ndarray of float64
        The weight of each count, in the shape of ``counts``.

    Examples
    --------
    >>> from skknn.pruning import soft_reliability
    >>> soft_reliability([0, 1, 10, 100]).round(4)
    array([1.    , 0.875 , 0.1591, 0.0173])
    """
    counts = np.asarray(counts)
    return np.where(counts >= 1, scale / (1.0 + counts), 1.0)


@fill_doc
def count_wrong_decisions(
    store,
    m: int,
    query_ids=None,
    *,
    sample_ids: np.ndarray | None = None,
    batch_size: int = 4096,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Wrong decisions charged to neighbours by leave-one-out queries (FORMULAS.md 5).

    Each query retrieves its ``m`` nearest *other* samples (self dropped by id,
    FORMULAS.md 2; neighbours at equal distance ordered by sample id); every
    neighbour whose label differs from the query's label gets +1. Queries run in
    blocks of ``batch_size`` through the store's leave-one-out search, so no
    ``n x n`` matrix is formed.

    Parameters
    ----------
    store : Store
        The memory.
    m : int
        Neighbours per query (fewer when the memory holds ``m`` samples or less).
    query_ids : array-like of int, default=None
        Stored samples that query; all if None.
    sample_ids : ndarray of int64, default=None
        The order of the returned counts: every stored id, in any order; the
        store's :meth:`ids` if None.
    batch_size : int, default=4096
        Queries searched per block.
    progress : tqdm, default=None
        Updated with the number of queries done.

    Returns
    -------
    counts : ndarray of shape (len(sample_ids),), int64
        Wrong decisions charged to each sample by these queries.
    radii : ndarray of shape (n_queries,), float32
        Distance from each query to its ``m``-th neighbour; ``inf`` when it has
        fewer than ``m`` (the memory is too small, or an index found fewer).

    Examples
    --------
    >>> from skknn import KNNVoter
    >>> from skknn.pruning import count_wrong_decisions
    %(mislabelled_points)s
    >>> store = KNNVoter(index="exact").fit(X, y).memory_
    >>> counts, radii = count_wrong_decisions(store, 2)
    >>> counts
    array([0, 0, 0, 1, 1, 2])
    >>> count_wrong_decisions(store, 2, [5])[0]  # charged by sample 5's query alone
    array([0, 0, 0, 1, 1, 0])
    """
    sample_ids = store.ids() if sample_ids is None else sample_ids
    queries = sample_ids if query_ids is None else np.asarray(query_ids)
    position = IdPositions(sample_ids)
    n, n_queries = len(sample_ids), len(queries)
    counts = np.zeros(n, dtype=np.int64)
    radii = np.full(n_queries, np.inf, dtype=np.float32)
    if n < 2 or n_queries == 0:
        return counts, radii
    k = min(int(m), n - 1)
    pos = 0
    for s in range(0, n_queries, batch_size):
        # One spare neighbour: a tie at the m-th place is then resolved by id.
        nb = store.search_self(
            queries[s : s + batch_size], k + 1, batch_size=batch_size
        )
        dist, ids, labels = _by_distance_then_id(nb, k)
        wrong = (ids >= 0) & (labels != nb.query_labels[:, None])
        counts += np.bincount(position(ids[wrong]), minlength=n)
        if k == m:
            last = ids[:, -1] >= 0
            radii[pos : pos + len(ids)] = np.where(last, dist[:, -1], np.inf)
        pos += len(ids)
        if progress is not None:
            progress.update(len(ids))
    return counts, radii


def _by_distance_then_id(nb, k: int):
    """The first ``k`` neighbours ordered by (distance, id).

    Records come sorted by distance already; only rows holding equal distances
    need the id tie-break, and they are few, so only they are lexsorted (a
    lexsort of every row cost 5% of the whole count at m = 100).
    """
    dist, ids, labels = nb.distances, nb.ids, nb.labels
    tied = np.flatnonzero((dist[:, 1:] == dist[:, :-1]).any(axis=1))
    if tied.size:
        dist, ids, labels = dist.copy(), ids.copy(), labels.copy()
        key = np.where(ids[tied] >= 0, ids[tied], np.iinfo(np.int64).max)
        order = np.lexsort((key, dist[tied]), axis=1)
        for a in (dist, ids, labels):
            a[tied] = np.take_along_axis(a[tied], order, 1)
    return dist[:, :k], ids[:, :k], labels[:, :k]


class IdPositions:
    """Positions of sample ids in one id array: a table lookup when the ids are
    dense (the usual ``0 .. n-1``), a sorted search otherwise.

    Counting charges ``n x m`` neighbour ids to counts kept in the pruner's own
    order; at ``m = 100`` the lookup must cost little beside the search.
    """

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        self._table = self._order = None
        if ids.size == 0:
            self._sorted = ids
            return
        top = int(ids.max())
        if ids.min() >= 0 and top < 4 * ids.size + 1024:
            self._table = np.full(top + 1, -1, dtype=np.int64)
            self._table[ids] = np.arange(ids.size)
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids``, all of which must be in the array."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._table is not None:
            return self._table[ids]
        if self._order is None:
            return np.empty(0, dtype=np.int64)
        return self._order[np.searchsorted(self._sorted, ids)]
