"""VectorStore: the memory of embeddings in this process, by sample id.

:class:`VectorStore` is the memory front (:class:`~skknn.memory.base.MemoryFront`:
checks, ids, classes, the centre, version and lock, query blocking,
leave-one-out, :meth:`get`, the neighbour record) over rows kept in this
process (:class:`~skknn.memory.local.LocalRows`: in RAM or in memory-mapped
files). This module chooses that backend; ``skknn/memory/state.py`` opens and
pickles it.
"""

from __future__ import annotations

import torch

from skknn.memory.base import (  # noqa: F401 (capped_k, query_blocks: old imports)
    DEFAULT_BATCH_SIZE,
    MemoryFront,
    NewRows,
    capped_k,
    query_blocks,
)
from skknn.memory.local import LocalRows
from skknn.memory.metric import METRICS
from skknn.memory.preprocessing import check_preprocessing
from skknn.memory.state import StoreStateMixin


class VectorStore(StoreStateMixin, MemoryFront):
    """A searchable, editable memory of labelled embeddings, in this process.

    The memory front over rows in this process: its searches, edits and
    reads are those of :class:`~skknn.memory.base.MemoryFront` (documented
    there); its ``backend`` is a :class:`~skknn.memory.local.LocalRows`.

    Parameters
    ----------
    n_features : int
        Embedding width.
    metric : {"cosine", "sqeuclidean", "euclidean"}, default="cosine"
        Distance reported by every search; cosine compares directions, so
        vectors are L2-normalised for it whatever ``preprocessing`` says.
    preprocessing : {"l2", "center_l2"} or None, default="l2"
        Applied to stored and query vectors alike (FORMULAS.md 1). The centre of
        ``"center_l2"`` is the mean of the first :meth:`add`, frozen after it.
    engine : str, default="flat"
        ``"exact"`` (torch), ``"flat"`` (FAISS exact), a ``faiss.index_factory``
        string, or ``"auto"``: FAISS exact search below ``AUTO_MIN_SAMPLES``
        (1,000,000) samples and ``AUTO_INDEX`` (``"IVF4096,PQ32"``) with
        ``AUTO_PARAMS`` (``nprobe=32, refine=4, far_quantile=0.999``) from then
        on, switched as the
        memory grows or shrinks past it (``skknn/memory/engines.py``).
    device : str or torch.device, default="cpu"
        Where the engine searches.
    index_params : dict, default=None
        FAISS parameters by their FAISS names (``{"nprobe": 16}``), and
        ``"refine"``: for an approximate index, retrieve ``refine * k``
        candidates and keep the ``k`` nearest by exact distance from the stored
        vectors (default 1: the index's own ``k``).
    storage_dtype : {"float32", "float16"}, default="float32"
        How the pre-processed vectors are kept. ``"float16"`` halves their RAM;
        distances are still computed in float32 (vectors are widened block by
        block), so only the stored values are rounded (relative error 2**-11).
    storage_path : str or path-like, default=None
        None keeps the memory in RAM. A folder keeps the vectors and every
        per-row array (ids, labels, reliabilities, weights) in memory-mapped
        files in a sub-folder of their own (the RAM holds the index); every
        edit is committed there, crash-safely (``skknn/memory/segments.py``), and
        :meth:`open` reopens the last commit.

    Attributes
    ----------
    uid : str
        Names this store; ``(uid, version)`` identifies one state of it, kept
        across save and load.
    version : int
        Incremented by every edit (add, remove, reliabilities, exclusions).
    classes : ndarray
        Sorted class labels; the codes in :class:`~skknn.Neighbors` index it.

    Notes
    -----
    The store keeps one float32 copy of the pre-processed vectors and, when it
    normalises, each raw vector's length, so :meth:`get` returns the raw vectors
    (to float32 rounding) without a second copy.

    Searches square float32 values, so data near 1e20 would overflow and data
    near 1e-21 would sink into float32's subnormals. Lengths are measured on
    rows rescaled by a power of two; an unnormalised memory (``preprocessing``
    None, a Euclidean metric) keeps its vectors times one power of two chosen
    by its first add, searches queries times the same, and reports distances
    of the raw data. What cannot be held is refused with a ValueError: later
    rows or queries far larger than the first add, ``"sqeuclidean"`` distances
    beyond float32, a rescaled memory on disk or in float16.

    Distances of retrieved pairs are always recomputed exactly (one pair at a
    time) and the neighbours re-sorted on them. Engines compute them from
    compressed codes (PQ/SQ), by the cancelling expansion of squared L2, or by a
    matmul whose rounding depends on how many queries share a call (torch);
    refining makes a query's answer independent of its batch and of the engine's
    arithmetic, for 0.5% of a flat search (docs/architecture.md).

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import VectorStore
    >>> store = VectorStore(2, engine="exact")
    >>> store.add([[1., 0.], [0., 1.], [.9, .1]], ["cat", "dog", "cat"])
    array([0, 1, 2])
    >>> nb = store.search([[1., .2]], k=2)
    >>> nb.ids, nb.label_values()
    (array([[2, 0]]), array([['cat', 'cat']], dtype='<U3'))
    >>> store.remove([2])
    >>> store.search_self(k=1).ids
    array([[1],
           [0]])
    """

    def __init__(
        self,
        n_features: int,
        *,
        metric: str = "cosine",
        preprocessing: str | None = "l2",
        engine: str = "flat",
        device: str | torch.device = "cpu",
        index_params: dict | None = None,
        storage_dtype: str = "float32",
        storage_path=None,
    ):
        if metric not in METRICS:
            raise ValueError(
                f"Unknown metric {metric!r}. Valid metrics are {list(METRICS)}."
            )
        check_preprocessing(preprocessing)  # before a storage folder is made
        rows = LocalRows(
            n_features,
            metric=METRICS[metric],
            normalizes=preprocessing is not None or metric == "cosine",
            engine=engine,
            device=device,
            index_params=index_params,
            storage_dtype=storage_dtype,
            storage_path=storage_path,
        )
        super().__init__(rows, preprocessing=preprocessing)

    def __repr__(self) -> str:
        return (
            f"VectorStore(n_samples={self.n_samples}, n_features={self.n_features}, "
            f"metric={self.metric.name!r}, preprocessing={self.preprocessing!r}, "
            f"engine={self.engine_name!r})"
        )
