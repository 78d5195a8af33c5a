"""scikit-learn's k-neighbours graph from a neighbour record.

sklearn's graphs index the fitted samples by row position; a memory's
neighbours are sample ids. The graph maps them to positions in the memory's
``sample_ids_`` order, so that on the same data it equals sklearn's.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from skknn.memory.neighbors import MISSING

GRAPH_MODES = ("connectivity", "distance")


def neighbors_graph(
    distances: np.ndarray, ids: np.ndarray, memory_ids: np.ndarray, mode: str
) -> sp.csr_matrix:
    """CSR graph of shape ``(n_queries, n_memory)``: row ``i`` holds query
    ``i``'s neighbours, nearest first, at the columns of their positions in
    ``memory_ids``; ones (``"connectivity"``) or distances (``"distance"``,
    zeros kept as explicit entries, as sklearn keeps them). Empty slots (an
    approximate index found fewer than ``k``) have no entry."""
    present = ids != MISSING
    order = np.argsort(memory_ids, kind="stable")
    found = ids[present]
    at = np.searchsorted(memory_ids[order], found)
    if found.size and (
        at.max() >= len(order) or np.any(memory_ids[order[at]] != found)
    ):
        raise ValueError(
            "The memory changed during the search: a neighbour is no longer in it."
        )
    columns = order[at]
    if mode == "connectivity":
        data = np.ones(found.size, dtype=np.float64)
    else:
        data = distances[present].astype(np.float64)
    indptr = np.zeros(ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    shape = (ids.shape[0], len(memory_ids))
    return sp.csr_matrix((data, columns, indptr), shape=shape)
