"""The one merge of top-k candidate lists: per database block, per shard.

A search that walks the memory in blocks (float16 rows widened a block at a
time) or asks every shard keeps, per query, the ``k`` best of the candidate
lists, as FAISS's ``ResultHeap`` does (``contrib/exhaustive_search.py``). Every
such merge goes through :func:`merge_top`.
"""

from __future__ import annotations

import numpy as np


def merge_top(parts, k: int, *, largest: bool = False, ties: str = "key"):
    """The ``k`` best candidates of each query across ``parts``.

    Parameters
    ----------
    parts : sequence of tuples of ndarray
        One ``(scores, keys, *payload)`` per block or shard, each array of
        shape ``(n_queries, k_i)``; payload columns travel with their candidate.
    k : int
        Candidates kept per query (fewer when the parts hold fewer).
    largest : bool, default=False
        Best is the largest score (inner products) instead of the smallest.
    ties : {"key", "stable"}, default="key"
        Equal scores ordered by key (sample ids: the store's order, so a merge
        of shards equals one memory's answer) or kept in the parts' order.

    Returns
    -------
    merged : tuple of ndarray
        ``(scores, keys, *payload)``, each of shape ``(n_queries, min(k, sum k_i))``,
        best first.

    Examples
    --------
    >>> import numpy as np
    >>> a = (np.array([[0.1, 0.5]]), np.array([[7, 3]]))
    >>> b = (np.array([[0.1, 0.2]]), np.array([[2, 9]]))
    >>> merge_top([a, b], 3)
    (array([[0.1, 0.1, 0.2]]), array([[2, 7, 9]]))
    """
    columns = [np.concatenate(col, axis=1) for col in zip(*parts)]
    scores, keys = columns[0], columns[1]
    rank = -scores if largest else scores
    if ties == "key":
        order = np.lexsort((keys, rank), axis=-1)[:, :k]
    elif ties == "stable":
        order = np.argsort(rank, axis=1, kind="stable")[:, :k]
    else:
        raise ValueError(f"ties must be 'key' or 'stable'; got {ties!r}.")
    return tuple(np.take_along_axis(c, order, 1) for c in columns)
