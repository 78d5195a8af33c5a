"""VectorStore: the memory of embeddings, in RAM, by sample id.

The store owns everything about the vectors: the pre-processing (the centre of
``"center_l2"``, normalisation), the metric, the class labels, the ids,
reliabilities and exclusions, the search engine and the blocking of searches.
Its surface speaks raw vectors and sample ids; row positions never leave it.
Every search returns a :class:`~skknn.Neighbors` record.

Edits validate first, write new rows into spare capacity (or compact in place)
and publish with a few plain assignments at the end; a failure on the way leaves
the store as it was.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._hierarchy import Taxonomy
from skknn._labels import encode, grown_classes
from skknn.memory.backends.disk import DiskRows
from skknn.memory.backends.ram import RamRows
from skknn.memory.checks import (
    STORAGE_DTYPES,
    checked_excluded,
    checked_ids,
    checked_new_ids,
    checked_reliability,
    checked_rows,
    checked_weights,
    label_paths,
    refuse_duplicates,
    refuse_rescaled,
)
from skknn.memory.engines import (
    auto_engine,
    engine_rows,
    keyed_by_rows,
    make_engine,
    split_refine,
)
from skknn.memory.far import far_queries
from skknn.memory.locks import edits, reads
from skknn.memory.metric import METRICS, Metric
from skknn.memory.neighbors import MISSING, Neighbors
from skknn.memory.preprocessing import (
    PREPROCESSING,
    check_scaled,
    choose_scale,
    fit_center,
    largest_abs,
    prepared_queries,
    preprocess_inplace,
    preprocess_into,
    rescaled,
)
from skknn.memory.protocols import RemovalSteps
from skknn.memory.rows import uninterrupted
from skknn.memory.state import StoreStateMixin
from skknn.memory.ties import TIE_SPARE, nearest_first, tie_open, warn_short
from skknn.memory.view import StoreView

DEFAULT_BATCH_SIZE = 4096


_FLOAT16_MAX = float(np.finfo(np.float16).max)


class VectorStore(StoreStateMixin, StoreView):
    """A searchable, editable memory of labelled embeddings, in RAM.

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
        if preprocessing is not None and preprocessing not in PREPROCESSING:
            raise ValueError(
                f"Unknown preprocessing {preprocessing!r}. Valid options are "
                f"{[*PREPROCESSING, None]}."
            )
        self.n_features = int(n_features)
        self.metric: Metric = METRICS[metric]
        self.preprocessing = preprocessing
        self.auto = engine == "auto"
        if self.auto:
            if index_params:
                raise ValueError(
                    "engine='auto' chooses its own index_params; got "
                    f"{index_params!r}. Name an index to set its knobs."
                )
            engine, index_params = auto_engine(0)
        self.engine_name = engine
        self.device = torch.device(device)
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"Unknown storage_dtype {storage_dtype!r}. Valid options are "
                f"{list(STORAGE_DTYPES)}."
            )
        self.storage_dtype = storage_dtype
        self.index_params = dict(index_params or {})
        self._refine, engine_params = split_refine(engine, self.index_params)
        self.engine = make_engine(engine, self.metric, self.device, engine_params)
        self.uid = uuid.uuid4().hex
        self._version = 0
        self._mean: np.ndarray | None = None
        self._classes: np.ndarray | None = None
        self._taxonomy: Taxonomy | None = None  # multi-output labels only
        self._n = 0
        self._X = np.empty((0, self.n_features), dtype=STORAGE_DTYPES[storage_dtype])
        # Where the rows live (skknn/memory/protocols.py, RowBackend).
        self._rows = (
            RamRows()
            if storage_path is None
            else DiskRows.new(
                storage_path, self.n_features, STORAGE_DTYPES[storage_dtype]
            )
        )
        # Length of each centred raw row (NaN where unknown: files of skknn 0.1).
        self._norm = np.empty(0, dtype=np.float32) if self.normalizes else None
        self._y = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._rel = np.empty(0, dtype=np.float32)
        self._excl = np.empty(0, dtype=bool)
        self._sw = np.empty(0, dtype=np.float32)  # sample weights given to add
        self._next_id = 0
        self._sorted = None  # (sorted ids, their rows): built lazily for lookups
        # Power of two an unnormalised memory keeps its vectors multiplied by, so
        # data near 1e20 or 1e-21 is searched in float32 without overflow or
        # underflow (skknn/memory/preprocessing.py); distances are reported unscaled.
        self._scale = 1.0
        # Called before every commit to disk: the estimator's check that its
        # storage folder still opens to this memory (skknn/memory/folder.py).
        self.commit_guard = None
        self._lock()  # made now: searches must not add attributes

    # -- what it holds ------------------------------------------------------------
    @property
    def storage_folder(self):
        """The folder holding this store's vectors file, or None (RAM)."""
        return self._rows.folder

    @property
    def vector_nbytes(self) -> int:
        """Bytes of RAM held for the stored vectors (their buffer, headroom
        included); 0 when they are memory-mapped from a file (``storage_path``,
        ``skknn.load(mmap=True)``): those pages are the OS's cache."""
        return 0 if isinstance(self._X, np.memmap) else int(self._X.nbytes)

    # -- adding ---------------------------------------------------------------------
    @edits
    def add(
        self, X, labels, ids=None, *, classes=None, sample_weight=None
    ) -> np.ndarray:
        """Store raw vectors with their labels; returns their ids.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Raw embeddings; copied once into the store and pre-processed there
            (the caller's array is never modified).
        labels : array-like of shape (n_samples,) or (n_samples, n_levels)
            Class labels; new ones extend :attr:`classes` (stored codes are
            re-encoded together with the add). Two dimensions give multi-output
            labels, one column per level (FORMULAS.md 7): the store keeps each
            sample's label path as its class and the levels in :attr:`taxonomy`.
            The first add decides which; every later add must match it.
        ids : array-like of shape (n_samples,), default=None
            Unique int ids, none stored before; default :meth:`next_ids`.
        classes : array-like, default=None
            Labels to know before any of their samples arrive; for multi-output
            labels, one array-like per level.
        sample_weight : array-like of shape (n_samples,), default=None
            Each sample's weight in every vote it takes part in (finite, > 0;
            multiplies pruning's reliability). Default 1.

        Returns
        -------
        ids : ndarray of int64
            The stored samples' ids, in the order of ``X`` (a copy).
        """
        X, labels = checked_rows(X, labels, self.n_features)
        m = X.shape[0]
        owner = type(self).__name__
        taxonomy, labels = label_paths(
            self._taxonomy, self._classes is not None, labels, classes, owner
        )
        if taxonomy is not None:  # path codes: classes are 0 .. n_paths - 1
            classes = np.arange(taxonomy.n_paths)
        new_classes, old_to_new = grown_classes(self._classes, labels, classes, owner)
        ids = self.next_ids(m) if ids is None else self._check_new_ids(ids, m)
        weights = checked_weights(sample_weight, m)
        mean = self._mean
        if mean is None and self.preprocessing == "center_l2" and m:
            mean = fit_center(X)
        scale = self._scale_for(X, first=self._n == 0)

        n = self._n
        bufs = self._buffers()
        cap = self._X.shape[0]
        if n + m > cap:
            # Amortised growth, with headroom from the start: a small add to a
            # large store must not copy the store.
            cap = (
                n + m + max(1024, (n + m) // 16)
                if n == 0
                else max(n + m, int(cap * 1.5) + 16)
            )
        bufs = self._rows.room(bufs, n, cap)  # the new rows are written past n
        Xb, yb, idb, rb, eb, wb, nb = bufs + [None] * (7 - len(bufs))
        if old_to_new is not None:
            yb = yb.copy()
            yb[:n] = old_to_new[yb[:n]]
        norms = None if nb is None else nb[n : n + m]
        if Xb.dtype == np.float32:  # pre-processed on the way in: no copy first
            preprocess_into(
                X,
                Xb[n : n + m],
                center=mean,
                normalize=self.normalizes,
                norms_out=norms,
            )
            if scale != 1.0:
                rescaled(Xb[n : n + m], scale, out=Xb[n : n + m])
        else:  # pre-processed in float32, then rounded once to the storage type
            X32 = X.copy()
            preprocess_inplace(
                X32, center=mean, normalize=self.normalizes, norms_out=norms
            )
            Xb[n : n + m] = X32
        yb[n : n + m] = encode(new_classes, labels)
        idb[n : n + m] = ids
        rb[n : n + m] = 1.0
        eb[n : n + m] = False
        wb[n : n + m] = weights
        next_id = max(self._next_id, int(ids.max()) + 1) if m else self._next_id
        switch = self._auto_switch(n + m)
        engine = self.engine if switch is None else switch[0]
        order = self._logical_rows()  # the new rows come last
        if order is not None:
            order = np.concatenate([order, np.arange(n, n + m)])
        # Ctrl-C is held until index and rows agree: an id in the index that the
        # rows do not know would be issued again.
        with uninterrupted():
            if n == 0 or not engine.ready or switch is not None:
                engine.build(*engine_rows(engine, Xb, idb, n + m, order))
            else:
                engine.add(Xb[n : n + m], ids)
            try:
                self._commit(
                    [Xb, yb, idb, rb, eb, wb, nb][: len(bufs)],
                    n + m,
                    classes=new_classes,
                    taxonomy=taxonomy,
                    mean=mean,
                    next_id=next_id,
                    version=self._version + 1,
                    **({} if switch is None else switch[1]),
                )
            except BaseException:  # the disk refused: the index forgets the rows
                if switch is None:
                    self._rebuild(self.engine)
                raise
            self._use_engine(switch)
            new = [Xb, yb, idb, rb, eb, wb, nb][: len(bufs)]
            self._set_buffers(self._rows.published(new))
            self._classes, self._mean = new_classes, mean
            self._scale = scale
            self._taxonomy = taxonomy
            self._n = n + m
            self._next_id = next_id
            self._sorted = None
            self._version += 1
        return ids.copy()

    @edits
    def destroy(self) -> None:
        """Zero and delete this store's files and empty it (a memory on disk that
        is being replaced). A RAM store is only emptied."""
        self._rows.destroy()
        self._X = np.empty((0, self.n_features), dtype=self._X.dtype)
        self._n = 0
        self._sorted = None
        self._version += 1

    def _scale_for(self, X: np.ndarray, first: bool) -> float:
        """The memory's scale once raw rows ``X`` are added: chosen by the
        ``first`` add of an unnormalised memory, then fixed. Refuses rows whose
        distances would overflow at that scale or in the float32 record."""
        if self.normalizes or not X.size:
            return self._scale  # unit vectors: lengths are measured rescaled
        top = largest_abs(X)
        self.metric.check_reported_range(top, self.n_features, first)
        scale = choose_scale(top) if first else self._scale
        if scale != 1.0:
            refuse_rescaled(
                self._rows.folder, self.storage_dtype, f"Data with |x| up to {top:.3g}"
            )
        check_scaled(top, scale, "Rows added")
        if self.storage_dtype == "float16" and top * scale > _FLOAT16_MAX:
            # float16 would keep them as inf: every distance to them wrong.
            raise ValueError(
                f"Rows added hold values up to {top:.3g}, beyond float16's "
                f"largest ({_FLOAT16_MAX:g}); a memory with storage_dtype="
                "'float16' and no normalising pre-processing cannot keep them. "
                "Use storage_dtype='float32', or preprocessing='l2'."
            )
        return scale

    def _auto_switch(self, n: int):
        """For ``engine="auto"``, ``(new engine, its name and knobs)`` when a
        memory of ``n`` samples calls for the other engine; else None."""
        if not self.auto:
            return None
        name, params = auto_engine(n)
        if name == self.engine_name:
            return None
        engine = make_engine(
            name, self.metric, self.device, split_refine(name, params)[1]
        )
        return engine, {"engine_name": name, "index_params": params}

    def _use_engine(self, switch) -> None:
        if switch is not None:
            self.engine = switch[0]
            self.engine_name = switch[1]["engine_name"]
            self.index_params = switch[1]["index_params"]
            self._refine = split_refine(self.engine_name, self.index_params)[0]

    def _buffers(self) -> list[np.ndarray]:
        """Every per-row array, in one order (the lengths only when normalising)."""
        bufs = [self._X, self._y, self._ids, self._rel, self._excl, self._sw]
        return bufs if self._norm is None else [*bufs, self._norm]

    def _set_buffers(self, bufs: list) -> None:
        self._X, self._y, self._ids, self._rel, self._excl, self._sw = bufs[:6]
        if self._norm is not None:
            self._norm = bufs[6]

    def _check_new_ids(self, ids, n: int) -> np.ndarray:
        return checked_new_ids(ids, n, self._stored)

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """Which of these ids are stored (ids above every id ever issued cannot
        be, so only the rest are looked up)."""
        out = np.zeros(ids.shape, dtype=bool)
        if self._n:
            low = ids < self._next_id
            out[low] = np.isin(ids[low], self._ids[: self._n])
        return out

    # -- memory order ----------------------------------------------------------------
    def _logical_rows(self) -> np.ndarray | None:
        """The rows in memory order (insertion order, the order of :meth:`ids`),
        or None when the rows are in it: always in RAM; on disk until a
        deletion moves rows (their sequence numbers say the order)."""
        return self._rows.order(self._n, self._version)

    def _rebuild(self, engine) -> None:
        """Build ``engine`` on every stored row, in memory order."""
        engine.build(
            *engine_rows(engine, self._X, self._ids, self._n, self._logical_rows())
        )

    # -- looking up -----------------------------------------------------------------
    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of these ids; -1 for ids not stored."""
        if self._sorted is None:
            order = np.argsort(self._ids[: self._n], kind="stable")
            self._sorted = (self._ids[: self._n][order], order)
        sorted_ids, order = self._sorted
        ids = np.asarray(ids, dtype=np.int64)
        if not len(order):
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(order) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def _stored_rows(self, ids, what: str = "ids") -> np.ndarray:
        """Rows of stored ids: 1-d integers, every one in memory."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"{what} must be 1-d; got shape {ids.shape}.")
        ids = checked_ids(ids)
        rows = self._rows_of(ids)
        if np.any(rows < 0):
            unknown = np.unique(ids[rows < 0])
            raise ValueError(f"{what} not in memory: {unknown[:10].tolist()}.")
        return rows

    @reads
    def get(self, ids, *, prepared: bool = False) -> Bunch:
        """Raw vectors, labels, reliabilities and exclusions of stored samples.

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        prepared : bool, default=False
            Give ``X`` as stored and searched (pre-processed) instead of raw.

        Returns
        -------
        data : Bunch
            ``X`` (float32, the raw vectors as added, to float32 rounding of the
            pre-processing and its inverse), ``labels`` (class values),
            ``sample_weight``, ``reliability``, ``excluded``; rows in the order
            of ``ids``.
        """
        rows = self._stored_rows(ids)
        X = self._unscaled_rows(self._X[rows].astype(np.float32))  # a copy, widened
        if prepared:
            pass
        elif self._norm is not None:
            norms = self._norm[rows]
            if np.isnan(norms).any():
                raise ValueError(
                    "The raw vectors of this memory are not recoverable: it was "
                    "saved by skknn 0.1, which kept only normalised vectors."
                )
            X *= norms[:, None]
        if self._mean is not None and not prepared:
            X += self._mean
        return Bunch(
            X=X,
            labels=self._label_values(self._y[rows]),
            reliability=self._rel[rows].copy(),
            excluded=self._excl[rows].copy(),
            sample_weight=self._sw[rows].copy(),
        )

    def _label_values(self, codes: np.ndarray) -> np.ndarray:
        if self._taxonomy is None:
            return self.classes[codes]
        return self._taxonomy.rows(codes)

    # -- removing -------------------------------------------------------------------
    @reads
    def check_removable(self, ids) -> np.ndarray:
        """Validate ids to remove (1-d ints, unique, all stored); a sorted copy.

        Nothing changes: callers check before they start an edit of their own.

        Parameters
        ----------
        ids : array-like of int
            Sample ids to remove.

        Returns
        -------
        ids : ndarray of int64
            The same ids, sorted.
        """
        ids = np.asarray(ids)
        self._stored_rows(ids, "sample_ids to unlearn")
        return refuse_duplicates(ids.astype(np.int64), "sample_ids to unlearn")

    @edits
    def remove(self, ids, *, retrain_index: bool = False) -> None:
        """Delete stored samples from the rows and the index (all or nothing).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        retrain_index : bool, default=False
            Retrain an approximate index's trained parts (IVF centroids, PQ/SQ
            codebooks) on what remains; otherwise they are kept and only the
            removed codes leave the index, except from an HNSW graph: there the
            removed nodes are marked dead and skipped by searches, and their
            bytes stay until the graph is compacted (``retrain_index=True``,
            over 20% dead, or a save, which writes no index then).
        """
        uniq = self.check_removable(ids)
        if not uniq.size:
            return
        n_old, n_new = self._n, self._n - uniq.size
        self.engine.check_remove(self.n_features, n_new, bool(retrain_index))
        gone_rows = np.sort(self._rows_of(uniq))
        retrain = bool(retrain_index)
        switch = self._auto_switch(n_new)
        engine = self.engine if switch is None else switch[0]

        def edit_index(X_kept, ids_kept):
            if switch is None:
                self.engine.remove(X_kept, ids_kept, uniq, retrain=retrain)
            else:
                switch[0].build(X_kept, ids_kept)

        def restore_index():
            if switch is None:
                self._rebuild(self.engine)

        def commit(bufs, n, removed=None):
            changes = {} if switch is None else switch[1]
            self._commit(bufs, n, removed=removed, version=self._version + 1, **changes)

        def removed(n, bufs=None):
            self._use_engine(switch)
            if bufs is not None:
                self._set_buffers(bufs)
            self._n = n
            self._sorted = None
            self._version += 1

        steps = RemovalSteps(
            engine=engine,
            by_rows=keyed_by_rows(engine),
            key=self._version,
            edit_index=edit_index,
            restore_index=restore_index,
            commit=commit,
            removed=removed,
        )
        # Ctrl-C is held until index and rows agree.
        with uninterrupted():
            self._rows.remove(self._buffers(), gone_rows, n_old, steps)

    @edits
    def replace_vectors(self, X) -> None:
        """Replace every stored vector, keeping ids, labels and weights.

        For a memory whose encoder has changed (a backbone being fine-tuned):
        ``X`` holds the samples' new raw embeddings, one row per stored sample
        in the order of :meth:`ids`. They are pre-processed anew (the centre of
        ``"center_l2"`` is refitted on them), written over the old rows and the
        index is rebuilt on them, all or nothing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The new raw vectors, aligned with :meth:`ids`.
        """
        X = np.asarray(X, dtype=np.float32)
        if X.shape != (self._n, self.n_features):
            raise ValueError(
                f"X must hold one row per stored sample, shape "
                f"({self._n}, {self.n_features}); got {X.shape}."
            )
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or infinite values; the memory takes none.")
        self._rows.check_replaceable()
        mean = None
        if self.preprocessing == "center_l2" and self._n:
            mean = fit_center(X)
        scale = self._scale_for(X, first=True)  # chosen anew, as by a first add
        rows = np.empty_like(self._X)
        norms = None if self._norm is None else np.empty_like(self._norm)
        prepared = X.copy()
        out_norms = None if norms is None else norms[: self._n]
        preprocess_inplace(
            prepared, center=mean, normalize=self.normalizes, norms_out=out_norms
        )
        if scale != 1.0:
            rescaled(prepared, scale, out=prepared)
        rows[: self._n] = prepared
        rows[self._n :] = 0
        engine = make_engine(
            self.engine_name,
            self.metric,
            self.device,
            split_refine(self.engine_name, self.index_params)[1],
        )
        if self._n:
            engine.build(rows[: self._n], self._ids[: self._n])
        self.engine, self._X, self._scale = engine, rows, scale
        if norms is not None:
            self._norm = norms
        if mean is not None:
            self._mean = mean
        self._version += 1

    @edits
    def retrain_index(self) -> None:
        """Build the index afresh on every stored sample: an approximate index
        trains again on a sample of the whole memory (as a fresh fit would),
        instead of on the samples it held when it was first built."""
        if not self._n:
            return
        engine = make_engine(
            self.engine_name,
            self.metric,
            self.device,
            split_refine(self.engine_name, self.index_params)[1],
        )
        self._rebuild(engine)
        self._commit(self._buffers(), self._n, version=self._version + 1)
        self.engine = engine
        self._version += 1

    # -- reliabilities and exclusions -------------------------------------------------
    @edits
    def set_reliability(self, ids, reliability) -> None:
        """Set the voting weights of stored samples (finite, > 0; FORMULAS.md 5).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        reliability : array-like of float, aligned with ``ids``
            One weight per id.
        """
        rows = self._stored_rows(ids)
        values = checked_reliability(reliability, rows.shape)
        rel = self._rel.copy()  # keeps the spare capacity add() writes into
        rel[rows] = values
        bufs = self._buffers()
        bufs[3] = rel
        self._commit(bufs, self._n, version=self._version + 1)
        self._rel = rel
        self._version += 1

    @edits
    def set_excluded(self, ids, excluded) -> None:
        """Set the hard-pruning flags of stored samples (excluded: no vote).

        Parameters
        ----------
        ids : array-like of int
            Stored sample ids.
        excluded : array-like of bool, aligned with ``ids``
            One flag per id.
        """
        rows = self._stored_rows(ids)
        values = checked_excluded(excluded, rows.shape)
        excl = self._excl.copy()
        excl[rows] = values
        bufs = self._buffers()
        bufs[4] = excl
        self._commit(bufs, self._n, version=self._version + 1)
        self._excl = excl
        self._version += 1

    @edits
    def set_index_params(self, params: dict) -> None:
        """Set the index's search knobs by their FAISS names (``{"nprobe": 32}``).

        Search results may change, so the version advances. A knob the index does
        not have raises ValueError and changes nothing.

        Parameters
        ----------
        params : dict
            The new ``index_params``: FAISS knobs by their FAISS names, and
            ``"refine"``. A knob left out goes back to FAISS's default.
        """
        if self.auto and dict(params) != self.index_params:
            raise ValueError(
                "engine='auto' chooses its own index_params; name an index to set "
                "or tune its knobs."
            )
        refine, engine_params = split_refine(self.engine_name, dict(params))
        _, old = split_refine(self.engine_name, self.index_params)
        self.engine.set_params(engine_params)
        try:
            self._commit(
                self._buffers(),
                self._n,
                index_params=dict(params),
                version=self._version + 1,
            )
        except BaseException:
            self.engine.set_params(old)
            raise
        self.index_params, self._refine = dict(params), refine
        self._version += 1

    # -- searching --------------------------------------------------------------------
    def prepare(self, X) -> np.ndarray:
        """A pre-processed float32 copy of raw vectors (the input is untouched).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw vectors.

        Returns
        -------
        Q : ndarray of float32 of shape (n_queries, n_features)
            ``X`` in the stored vectors' space, as :meth:`search` takes it with
            ``prepared=True``.
        """
        return prepared_queries(X, self.n_features, self._mean, self.normalizes)

    @reads
    def search(
        self,
        X,
        k: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        prepared: bool = False,
        index_params: dict | None = None,
    ) -> Neighbors:
        """The ``k`` nearest stored samples of raw query vectors.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw queries, pre-processed as the stored vectors were (on a copy,
            one block at a time).
        k : int
            Capped at the number of stored samples.
        batch_size : int, default=4096
            Queries per block: bounds the working memory.
        progress : bool, default=False
            A progress bar over blocks.
        prepared : bool, default=False
            ``X`` is already in the stored vectors' space (e.g. built from
            :meth:`get` with ``prepared=True``): searched as given.
        index_params : dict, default=None
            Search with these knobs (as :meth:`set_index_params` takes them)
            instead of the memory's, for this call only: what
            ``KNNVoter.tune_index`` measures while other threads search with
            the memory's own.

        Returns
        -------
        neighbors : Neighbors
            The ``k`` nearest of each query, nearest first.
        """
        knobs = None
        if index_params is not None:
            knobs = split_refine(self.engine_name, dict(index_params))
        return self._search_blocks(
            X, k, batch_size, progress, prepared, exact=False, knobs=knobs
        )

    @reads
    def search_exact(
        self,
        X,
        k: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress=False,
        prepared: bool = False,
    ) -> Neighbors:
        """The ``k`` nearest stored samples of raw queries by brute force over the
        stored vectors, whatever the engine: the reference that approximate
        indexes are measured against (:meth:`KNNVoter.tune_index`).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Raw queries, pre-processed as the stored vectors were (on a copy,
            one block at a time).
        k : int
            Capped at the number of stored samples.
        batch_size : int, default=4096
            Queries per block: bounds the working memory.
        progress : bool, default=False
            A progress bar over blocks.
        prepared : bool, default=False
            ``X`` is already in the stored vectors' space (e.g. built from
            :meth:`get` with ``prepared=True``): searched as given.

        Returns
        -------
        neighbors : Neighbors
            The exact ``k`` nearest of each query, nearest first.
        """
        return self._search_blocks(X, k, batch_size, progress, prepared, exact=True)

    def _search_blocks(
        self, X, k, batch_size, progress, prepared, *, exact, knobs=None
    ):
        X = np.asarray(X)
        k = capped_k(k, self._n)
        parts = []
        for s in query_blocks(X.shape[0], batch_size, progress, "search"):
            block = X[s : s + batch_size]
            Q = (
                np.array(block, np.float32, order="C")
                if prepared
                else self.prepare(block)
            )
            Q = self._scaled_queries(Q, "Queries")
            # A zero query (after centring) has no direction: every normalised
            # sample is equally far from it, so its neighbours are arbitrary.
            lost = ~Q.any(axis=1) if self.normalizes else None
            record = self._record(
                *self._search_prepared(Q, k, exact=exact, knobs=knobs)
            )
            parts.append(replace(record, directionless=lost))
        return Neighbors.concatenate(parts) if parts else self._empty(k)

    @reads
    def search_self(
        self,
        ids=None,
        k: int = 1,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
    ) -> Neighbors:
        """Leave-one-out neighbours of stored samples (FORMULAS.md 2).

        Searches ``k + 1`` and drops the query itself *by sample id* (with
        duplicate vectors, self is not always first); if self is not among them,
        the last neighbour is dropped, so exactly ``min(k, n - 1)`` remain.

        Parameters
        ----------
        ids : array-like of int, default=None
            Stored samples that query; all, oldest first, if None.
        k : int, default=1
            Capped at the number of stored samples minus one.
        batch_size : int, default=4096
            Queries per block: bounds the working memory.
        progress : bool, default=False
            A progress bar over blocks.

        Returns
        -------
        neighbors : Neighbors
            With ``query_ids`` and ``query_labels`` set.
        """
        if ids is None:  # memory order, whatever rows a deletion moved on disk
            rows = self._logical_rows()
            rows = np.arange(self._n) if rows is None else rows
        else:
            rows = self._stored_rows(ids)
        if self._n < 2:
            raise ValueError(
                f"Leave-one-out needs at least 2 samples in memory; it has {self._n}."
            )
        k = capped_k(k, self._n - 1)
        parts = []
        for s in query_blocks(rows.shape[0], batch_size, progress, "leave-one-out"):
            qr = rows[s : s + batch_size]
            Q = self._X[qr].astype(np.float32, copy=False)  # a gather: a copy
            dist, nb = self._search_prepared(Q, k + 1)
            own = self._ids[qr]
            nb_ids = np.where(nb >= 0, self._ids[np.maximum(nb, 0)], MISSING)
            is_self = nb_ids == own[:, None]
            drop = np.where(is_self.any(1), np.argmax(is_self, 1), nb.shape[1] - 1)
            keep = np.ones(nb.shape, dtype=bool)
            keep[np.arange(nb.shape[0]), drop] = False
            record = self._record(
                dist[keep].reshape(-1, k),
                nb[keep].reshape(-1, k),
                query_ids=own.copy(),
                query_labels=self._y[qr].copy(),
            )
            parts.append(record)
        return Neighbors.concatenate(parts) if parts else self._empty(k)

    @reads
    def within_radius(
        self, query_ids, radii, *, X=None, ids=None, prepared: bool = False
    ) -> np.ndarray:
        """Which stored queries have some point within their radius.

        The points are raw vectors ``X`` (pre-processed here) or the stored
        samples ``ids``. Exactly those queries can see their neighbour lists
        change when the points enter or leave the store (pruning's incremental
        counts use it). A query with an infinite radius takes any point.

        Parameters
        ----------
        query_ids : array-like of int
            Stored samples whose radii are given.
        radii : array-like of float, aligned with ``query_ids``
            Each query's radius, a distance under the store's metric.
        X : array-like of shape (n_points, n_features), default=None
            Raw points.
        ids : array-like of int, default=None
            Exactly one of ``X`` and ``ids``.
        prepared : bool, default=False
            ``X`` is already pre-processed (as :meth:`search` takes it).

        Returns
        -------
        near : ndarray of bool, aligned with ``query_ids``
            Whether some point lies within each query's radius.
        """
        if (X is None) == (ids is None):
            raise ValueError("within_radius takes exactly one of X and ids.")
        if ids is not None:
            P = self._X[self._stored_rows(ids)].astype(np.float32)
        elif prepared:  # already in the stored vectors' space
            P = self._scaled_queries(np.array(X, dtype=np.float32), "Points")
        else:
            P = self._scaled_queries(self.prepare(X), "Points")
        rows = self._stored_rows(query_ids, "query_ids")
        radii = np.asarray(radii, dtype=np.float32)
        if radii.shape != rows.shape:
            raise ValueError(
                f"radii must have shape {rows.shape}, one per query id; got "
                f"{radii.shape}."
            )
        out = np.zeros(rows.shape[0], dtype=bool)
        for s in range(0, rows.shape[0], DEFAULT_BATCH_SIZE):
            block = slice(s, s + DEFAULT_BATCH_SIZE)
            A = self._X[rows[block]].astype(np.float32)
            inner = self.metric.scaled(radii[block], self._scale)
            out[block] = self.metric.any_within(A, P, inner)
        return out

    def _scaled_queries(self, Q: np.ndarray, what: str) -> np.ndarray:
        """Pre-processed float32 vectors (a copy of the caller's, modified) in
        the stored vectors' units: times the memory's scale. Refuses vectors
        whose distances to the memory would overflow float32."""
        if not np.isfinite(Q).all():
            raise ValueError(
                f"{what} hold NaN, infinite values or values beyond float32's "
                "range (|x| > 3.4e38)."
            )
        if self.normalizes:
            return Q  # unit vectors, never scaled
        check_scaled(largest_abs(Q), self._scale, what)
        if self._scale != 1.0:
            rescaled(Q, self._scale, out=Q)
        return Q

    def _unscaled_rows(self, X: np.ndarray) -> np.ndarray:
        """Stored rows (a float32 copy, modified) as pre-processed, unscaled."""
        if self._scale != 1.0:
            rescaled(X, 1.0 / self._scale, out=X)
        return X

    def _search_prepared(
        self, Q: np.ndarray, k: int, *, exact: bool = False, knobs=None
    ):
        """``(distances, rows)`` of pre-processed queries, refined and re-sorted:
        nearest first, equal distances by sample id.

        A few candidates beyond the ``k * refine`` asked for (:data:`TIE_SPARE`
        for an exact search, one for an index) show whether equal distances
        straddle the k-th place; those queries fetch twice as many until the
        tie is whole. So which of several equally distant samples
        enters the k is settled by id, not by the engine's rounding (duplicate
        vectors land in different GEMM blocks), and a sharded memory, merging
        the shards' top k in the same order, gives the same answer.

        ``knobs``: ``(refine, engine knobs)`` for this search instead of the
        memory's (:func:`~skknn.memory.engines.split_refine` of ``index_params``).
        """
        if Q.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        X = self._X[: self._n]
        refinement, params = (self._refine, None) if knobs is None else knobs
        far = None if exact else refinement.far_quantile
        spare = TIE_SPARE if exact or keyed_by_rows(self.engine) else 1
        kk = min(k * (1 if exact else refinement.refine) + spare, self._n)
        dist, rows = self._candidates(X, Q, k, kk, exact, params, far)
        sq_norms = np.einsum("ij,ij->i", Q, Q)
        todo = np.flatnonzero(tie_open(self.metric, dist, k, kk, self._n, sq_norms))
        dist, rows = dist[:, :k].copy(), rows[:, :k].copy()
        while todo.size:
            kk = min(2 * kk, self._n)
            d2, r2 = self._candidates(X, Q[todo], k, kk, exact, params, far)
            dist[todo], rows[todo] = d2[:, :k], r2[:, :k]
            todo = todo[tie_open(self.metric, d2, k, kk, self._n, sq_norms[todo])]
        return dist, rows

    def _candidates(self, X, Q, k: int, kk: int, exact: bool, params=None, far=None):
        """``kk`` candidates per query from the engine (or brute force), with
        exact distances, sorted nearest first (equal distances by id); the
        engine searches with ``params`` for knobs when given. With ``far`` (the
        ``far_quantile`` knob), queries far from all the memory holds are
        searched by brute force (:mod:`skknn.memory.far`)."""
        if exact:
            rows = self._exact_rows(X, Q, kk)
        else:
            if params is None:
                _, keys = self.engine.search(X, Q, kk)
            else:
                _, keys = self.engine.search(X, Q, kk, params=params)
            keys = np.asarray(keys, dtype=np.int64)
            rows = self._rows_of(keys) if self.engine.keys_are_ids else keys
            found = (rows >= 0).sum(axis=1)
            short = found < k
            if short.any():
                none = found == 0
                if none.any():
                    # Only empty inverted lists probed (small nprobe, lists emptied
                    # by unlearn): nothing to vote with, so search those exactly.
                    rows = rows.copy()
                    rows[none] = self._exact_rows(X, Q[none], kk)
                self._warn_short(int(short.sum()), int(none.sum()), Q.shape[0], k)
        dist = self.metric.pair_distances(X, Q, rows)
        # Exact distances may reorder near-ties the engine's arithmetic saw apart.
        dist, rows = nearest_first(dist, rows, self._ids)
        if far is not None:

            def own(S, n):  # stored rows, searched as the queries were
                return self._candidates(X, S, k, n, False, params)

            beyond = far_queries(self, X, Q, dist, k, kk, far, own)
            if beyond.any():
                rows = rows.copy()
                rows[beyond] = self._exact_rows(X, Q[beyond], kk)
                dist = self.metric.pair_distances(X, Q, rows)
                dist, rows = nearest_first(dist, rows, self._ids)
        return dist, rows

    def _exact_engine(self):
        from skknn.memory.engines import TorchExactEngine

        return TorchExactEngine(self.metric, torch.device("cpu"))

    def _exact_rows(self, X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
        """Rows of the ``k`` nearest stored vectors, by brute force."""
        return self._exact_engine().search(X, Q, k)[1]

    def _warn_short(self, n_short: int, n_none: int, n_queries: int, k: int) -> None:
        if getattr(self, "_warned_short", False):
            return
        self._warned_short = True  # once per store: a warning per batch is noise
        warn_short(self.engine_name, n_short, n_none, n_queries, k)

    def _record(self, dist, rows, *, query_ids=None, query_labels=None) -> Neighbors:
        present = rows >= 0
        safe = np.where(present, rows, 0)
        return Neighbors(
            distances=self.metric.unscaled(dist, self._scale),
            ids=np.where(present, self._ids[safe], MISSING),
            labels=np.where(present, self._y[safe], 0),
            reliability=self._rel[safe] * self._sw[safe],
            excluded=self._excl[safe] & present,
            classes=self.classes,
            taxonomy=self._taxonomy,
            query_ids=query_ids,
            query_labels=query_labels,
        )

    def _empty(self, k: int) -> Neighbors:
        return Neighbors.empty(k, self.classes, self._taxonomy)

    def __repr__(self) -> str:
        return (
            f"VectorStore(n_samples={self._n}, n_features={self.n_features}, "
            f"metric={self.metric.name!r}, preprocessing={self.preprocessing!r}, "
            f"engine={self.engine_name!r})"
        )


def capped_k(k: int, available: int) -> int:
    """``k`` capped at the samples available; ValueError for an empty memory."""
    k = min(int(k), available)
    if k <= 0:
        raise ValueError("The memory is empty: fit or partial_fit samples first.")
    return k


def query_blocks(n: int, size: int, progress: bool, desc: str):
    starts = range(0, n, size)
    if progress and n > size:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=desc, unit="block")
    return starts
