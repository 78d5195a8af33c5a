"""VectorStore: the memory of embeddings in this process, by sample id.

The public surface (checks, ids, classes, the centre, version and lock, query
blocking, leave-one-out, :meth:`get`) is :class:`~skknn.memory.base.MemoryFront`'s;
this class implements its hooks over rows kept here: the per-row arrays (through a
:class:`~skknn.memory.protocols.RowBackend`: RAM or memory-mapped files), the
pre-processing state (each raw vector's length, the scale of an unnormalised
memory), the search engine and, in ``skknn/memory/local.py``, the search of one
block. Row positions never leave it; every search returns a
:class:`~skknn.Neighbors` record.

Edits validate first, write new rows into spare capacity (or compact in place)
and publish with a few plain assignments at the end; a failure on the way leaves
the store as it was.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._hierarchy import Taxonomy
from skknn._labels import encode
from skknn.memory.backends.disk import DiskRows
from skknn.memory.backends.ram import RamRows
from skknn.memory.base import (  # noqa: F401 (capped_k, query_blocks: old imports)
    DEFAULT_BATCH_SIZE,
    MemoryFront,
    NewRows,
    capped_k,
    query_blocks,
)
from skknn.memory.checks import STORAGE_DTYPES, refuse_rescaled
from skknn.memory.digest import rows_change
from skknn.memory.engines import (
    auto_engine,
    engine_rows,
    keyed_by_rows,
    make_engine,
    split_refine,
)
from skknn.memory.local import LocalSearchMixin
from skknn.memory.locks import edits
from skknn.memory.metric import METRICS, Metric
from skknn.memory.preprocessing import (
    PREPROCESSING,
    check_scaled,
    choose_scale,
    fit_center,
    largest_abs,
    preprocess_inplace,
    preprocess_into,
    rescaled,
)
from skknn.memory.protocols import RemovalSteps
from skknn.memory.rows import uninterrupted
from skknn.memory.state import StoreStateMixin

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class VectorStore(StoreStateMixin, LocalSearchMixin, MemoryFront):
    """A searchable, editable memory of labelled embeddings, in this process.

    Its searches, edits and reads are those of
    :class:`~skknn.memory.base.MemoryFront` (documented there).

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
    def _add_rows(self, new: NewRows) -> None:
        """Pre-process and write the rows of a checked add (:meth:`add`) past the
        stored ones, index them and commit, all or nothing."""
        X, ids, m = new.X, new.ids, new.X.shape[0]
        scale = self._scale_for(X, first=self._n == 0)
        n = self._n
        bufs = self._rows.room(
            self._buffers(), n, self._capacity_for(n + m), filled=n + m
        )
        bufs = self._written(bufs, n, new, scale)
        next_id = max(self._next_id, int(ids.max()) + 1) if m else self._next_id
        switch = self._auto_switch(n + m)
        engine = self.engine if switch is None else switch[0]
        order = self._logical_rows()  # the new rows come last
        if order is not None:
            order = np.concatenate([order, np.arange(n, n + m)])
        # Ctrl-C is held by the front (MemoryFront.add) until index, rows and
        # front agree.
        if n == 0 or not engine.ready or switch is not None:
            engine.build(*engine_rows(engine, bufs[0], bufs[2], n + m, order))
        else:
            engine.add(bufs[0][n : n + m], ids)
        try:
            self._commit(
                bufs,
                n + m,
                classes=new.classes,
                taxonomy=new.taxonomy,
                mean=new.mean,
                next_id=next_id,
                version=self._version + 1,
                **({} if switch is None else switch[1]),
            )
        except BaseException:  # the disk refused: the index forgets the rows
            if switch is None:
                self._rebuild(self.engine)
            raise
        self._use_engine(switch)
        self._set_buffers(self._rows.published(bufs))
        self._scale = scale
        self._n = n + m
        self._sorted = None

    def _capacity_for(self, n: int) -> int:
        """Rows the buffers must hold for ``n`` samples: amortised growth, with
        headroom from the start (a small add to a large store must not copy
        the store)."""
        cap = self._X.shape[0]
        if n <= cap:
            return cap
        return n + max(1024, n // 16) if self._n == 0 else max(n, int(cap * 1.5) + 16)

    def _written(self, bufs: list, n: int, new: NewRows, scale: float) -> list:
        """``bufs`` with the new rows written at ``[n, n + m)``: pre-processed,
        encoded, default reliabilities (the labels a copy when re-encoded)."""
        m = new.X.shape[0]
        Xb, yb, idb, rb, eb, wb, nb = bufs + [None] * (7 - len(bufs))
        if new.old_to_new is not None:
            yb = yb.copy()
            yb[:n] = new.old_to_new[yb[:n]]
        norms = None if nb is None else nb[n : n + m]
        if Xb.dtype == np.float32:  # pre-processed on the way in: no copy first
            preprocess_into(
                new.X,
                Xb[n : n + m],
                center=new.mean,
                normalize=self.normalizes,
                norms_out=norms,
            )
            if scale != 1.0:
                rescaled(Xb[n : n + m], scale, out=Xb[n : n + m])
        else:  # pre-processed in float32, then rounded once to the storage type
            X32 = new.X.copy()
            preprocess_inplace(
                X32, center=new.mean, normalize=self.normalizes, norms_out=norms
            )
            Xb[n : n + m] = X32
        yb[n : n + m] = encode(new.classes, new.labels)
        idb[n : n + m] = new.ids
        rb[n : n + m] = 1.0
        eb[n : n + m] = False
        wb[n : n + m] = new.weights
        return [Xb, yb, idb, rb, eb, wb, nb][: len(bufs)]

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

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, known)`` of checked ids (:meth:`MemoryFront._located`)."""
        rows = self._rows_of(ids)
        return rows, rows >= 0

    def _fetch(self, rows: np.ndarray, prepared: bool) -> Bunch:
        """What :meth:`get` gives of these rows, before the centre is added."""
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
        return Bunch(
            X=X,
            labels=self._label_values(self._y[rows]),
            reliability=self._rel[rows].copy(),
            excluded=self._excl[rows].copy(),
            sample_weight=self._sw[rows].copy(),
        )

    # -- removing -------------------------------------------------------------------
    def _remove_ids(self, uniq: np.ndarray, retrain: bool) -> None:
        """Delete these stored ids (sorted, unique) from rows and index."""
        n_old, n_new = self._n, self._n - uniq.size
        self.engine.check_remove(self.n_features, n_new, retrain)
        gone_rows = np.sort(self._rows_of(uniq))
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
        rows_change(self)  # an edit log hashes rows it has not yet, as they were
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
    def _set_column(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Set the ``"reliability"`` or ``"excluded"`` of stored rows (a copy of
        the column, which keeps the spare capacity an add writes into)."""
        col = {"reliability": 3, "excluded": 4}[name]
        bufs = self._buffers()
        bufs[col] = bufs[col].copy()
        bufs[col][rows] = values
        self._commit(bufs, self._n, version=self._version + 1)
        self._set_buffers(bufs)

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

    def __repr__(self) -> str:
        return (
            f"VectorStore(n_samples={self._n}, n_features={self.n_features}, "
            f"metric={self.metric.name!r}, preprocessing={self.preprocessing!r}, "
            f"engine={self.engine_name!r})"
        )
