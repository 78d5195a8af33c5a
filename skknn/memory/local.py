"""Rows in this process: the row backend of :class:`~skknn.VectorStore`.

:class:`LocalRows` keeps the memory's per-row arrays (the pre-processed vectors,
label codes, ids, reliabilities, exclusions, sample weights and, when it
normalises, each raw vector's length), the pre-processing state that is the
rows' own (the scale of an unnormalised memory) and the search engine. Where
the arrays live is its storage (:class:`~skknn.memory.protocols.RowStorage`):
:class:`~skknn.memory.backends.ram.RamRows` or, memory-mapped from segment
files, :class:`~skknn.memory.backends.disk.DiskRows`. It searches one block at
a time in ``skknn/memory/local_search.py``. Row positions never leave it.

Edits write new rows into spare capacity (or compact in place), commit the
storage with the front's state (:class:`~skknn.memory.base.Commit`) and publish
with a few plain assignments at the end; a failure on the way leaves the rows
as they were.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import Bunch

from skknn._labels import encode
from skknn.memory.backends.disk import DiskRows
from skknn.memory.backends.ram import RamRows
from skknn.memory.checks import STORAGE_DTYPES, refuse_rescaled
from skknn.memory.engines import (
    auto_engine,
    engine_rows,
    keyed_by_rows,
    make_engine,
    split_refine,
)
from skknn.memory.local_search import LocalSearchMixin
from skknn.memory.metric import Metric
from skknn.memory.preprocessing import (
    check_scaled,
    choose_scale,
    largest_abs,
    preprocess_inplace,
    preprocess_into,
    rescaled,
)
from skknn.memory.protocols import RemovalSteps

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def saved_scale(meta: dict, X: np.ndarray, normalizes: bool) -> float:
    """The scale of a saved state (a power of two), or, where it names none
    (older files, a shard's split of a memory), the one its data calls for;
    the index saved with an older file is then rebuilt."""
    from skknn.memory.checks import InvalidState

    scale = meta.get("scale")
    if scale is None:
        return 1.0 if normalizes else choose_scale(largest_abs(X))
    ok = (
        isinstance(scale, (int, float))
        and not isinstance(scale, bool)
        and 0 < scale < np.inf
        and np.frexp(scale)[0] == 0.5
        and (scale == 1.0 or not normalizes)
    )
    if not ok:
        raise InvalidState(
            f"scale must be a power of two (1 when normalising); got {scale!r}"
        )
    return float(scale)


class LocalRows(LocalSearchMixin):
    """A memory's rows, engine and search in this process
    (:class:`~skknn.memory.protocols.RowBackend`).

    Parameters
    ----------
    n_features : int
        Embedding width.
    metric : Metric
        The memory's metric.
    normalizes : bool
        Whether rows are L2-normalised (the front's pre-processing says).
    engine : str, default="flat"
        As :class:`~skknn.VectorStore` takes it (``"auto"`` included).
    device : str or torch.device, default="cpu"
        Where the engine searches.
    index_params : dict, default=None
        FAISS knobs by their FAISS names, and ``"refine"``.
    storage_dtype : {"float32", "float16"}, default="float32"
        How the pre-processed vectors are kept.
    storage_path : path-like, default=None
        None keeps the rows in RAM; a folder keeps them in memory-mapped files
        in a sub-folder of their own.

    Examples
    --------
    >>> from skknn import VectorStore
    >>> store = VectorStore(2, engine="exact")
    >>> type(store.backend).__name__, store.backend.n_samples
    ('LocalRows', 0)
    """

    in_flight = 0  # a block is searched when submitted
    sharded = False

    def __init__(
        self,
        n_features: int,
        *,
        metric: Metric,
        normalizes: bool,
        engine: str = "flat",
        device="cpu",
        index_params: dict | None = None,
        storage_dtype: str = "float32",
        storage_path=None,
    ):
        self.n_features = int(n_features)
        self.metric = metric
        self.normalizes = bool(normalizes)
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
        # The state's key for what is cached of it (the far-query reference):
        # the memory's version, kept in step by every commit.
        self.version = 0
        self._n = 0
        self._next_id = 0  # above every id ever stored: those are not looked up
        self._X = np.empty((0, self.n_features), dtype=STORAGE_DTYPES[storage_dtype])
        # Where the arrays live (skknn/memory/protocols.py, RowStorage).
        self.storage = (
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
        self._sorted = None  # (sorted ids, their rows): built lazily for lookups
        # Power of two an unnormalised memory keeps its vectors multiplied by, so
        # data near 1e20 or 1e-21 is searched in float32 without overflow or
        # underflow (skknn/memory/preprocessing.py); distances are reported unscaled.
        self._scale = 1.0

    # -- what it holds ------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def folder(self):
        """The folder holding the rows' files, or None (RAM)."""
        return self.storage.folder

    @property
    def vector_nbytes(self) -> int:
        """Bytes of RAM held for the stored vectors (their buffer, headroom
        included); 0 when they are memory-mapped from a file."""
        return 0 if isinstance(self._X, np.memmap) else int(self._X.nbytes)

    def tuning_grid(self, n_features: int):
        """The engine's knob grid, or None for an exact engine."""
        grid = getattr(self.engine, "tuning_grid", None)
        return None if grid is None else grid(n_features)

    def ids(self) -> np.ndarray:
        """Every stored id in memory order (a copy)."""
        rows = self._logical_rows()
        return self._ids[: self._n].copy() if rows is None else self._ids[rows]

    # -- adding ---------------------------------------------------------------------
    def add(self, new, commit) -> None:
        """Pre-process and write the rows of a checked add past the stored ones,
        index them and commit, all or nothing."""
        X, ids, m = new.X, new.ids, new.X.shape[0]
        scale = self._scale_for(X, first=self._n == 0)
        n = self._n
        bufs = self.storage.room(
            self._buffers(), n, self._capacity_for(n + m), filled=n + m
        )
        bufs = self._written(bufs, n, new, scale)
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
            self._write(
                bufs,
                n + m,
                commit,
                scale=scale,
                **({} if switch is None else switch[1]),
            )
        except BaseException:  # the disk refused: the index forgets the rows
            if switch is None:
                self._rebuild(self.engine)
            raise
        try:  # committed: the front takes the add whatever happens next
            self._use_engine(switch)
            self._set_buffers(self.storage.published(bufs))
            self._scale = scale
            self._n = n + m
            if m:
                self._next_id = max(self._next_id, int(ids.max()) + 1)
            self._sorted = None
        finally:
            self._applied(commit)

    def _applied(self, commit) -> None:
        self.version = commit.version
        commit.applied()

    def _capacity_for(self, n: int) -> int:
        """Rows the buffers must hold for ``n`` samples: amortised growth, with
        headroom from the start (a small add to a large memory must not copy
        the memory)."""
        cap = self._X.shape[0]
        if n <= cap:
            return cap
        return n + max(1024, n // 16) if self._n == 0 else max(n, int(cap * 1.5) + 16)

    def _written(self, bufs: list, n: int, new, scale: float) -> list:
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

    def destroy(self, commit) -> None:
        """Zero and delete the rows' files and empty the rows."""
        self.storage.destroy()
        self._X = np.empty((0, self.n_features), dtype=self._X.dtype)
        self._n = 0
        self._sorted = None
        self._applied(commit)

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
                self.storage.folder,
                self.storage_dtype,
                f"Data with |x| up to {top:.3g}",
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

    def stored(self, ids: np.ndarray) -> np.ndarray:
        """Which of these ids are stored (ids above every id ever stored cannot
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
        return self.storage.order(self._n, self.version)

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

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, known)`` of checked ids: rows are the handles here."""
        rows = self._rows_of(ids)
        return rows, rows >= 0

    def fetch(self, rows: np.ndarray, prepared: bool) -> Bunch:
        """Vectors (raw but for the centre, or ``prepared``), label codes,
        reliabilities, exclusions and sample weights of these rows."""
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
            codes=self._y[rows],
            reliability=self._rel[rows].copy(),
            excluded=self._excl[rows].copy(),
            sample_weight=self._sw[rows].copy(),
        )

    # -- removing -------------------------------------------------------------------
    def remove(self, uniq: np.ndarray, retrain: bool, commit) -> None:
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

        def write(bufs, n, removed=None):
            changes = {} if switch is None else switch[1]
            self._write(bufs, n, commit, removed=removed, **changes)

        def removed(n, bufs=None):
            self._use_engine(switch)
            if bufs is not None:
                self._set_buffers(bufs)
            self._n = n
            self._sorted = None
            self._applied(commit)

        steps = RemovalSteps(
            engine=engine,
            by_rows=keyed_by_rows(engine),
            key=self.version,
            edit_index=edit_index,
            restore_index=restore_index,
            commit=write,
            removed=removed,
        )
        self.storage.remove(self._buffers(), gone_rows, n_old, steps)

    def check_replaceable(self) -> None:
        self.storage.check_replaceable()

    def replace_vectors(self, X: np.ndarray, mean, commit) -> None:
        """Every stored row's new raw vector (checked by the front, aligned
        with :meth:`ids`), pre-processed around ``mean``; the index rebuilt."""
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
        engine = self._fresh_engine()
        if self._n:
            engine.build(rows[: self._n], self._ids[: self._n])
        self.engine, self._X, self._scale = engine, rows, scale
        if norms is not None:
            self._norm = norms
        self._applied(commit)

    def _fresh_engine(self):
        return make_engine(
            self.engine_name,
            self.metric,
            self.device,
            split_refine(self.engine_name, self.index_params)[1],
        )

    def retrain_index(self, commit) -> None:
        """The index built afresh on every stored row."""
        engine = self._fresh_engine()
        self._rebuild(engine)
        self._write(self._buffers(), self._n, commit)
        self.engine = engine
        self._applied(commit)

    # -- reliabilities, exclusions, knobs -------------------------------------------
    def set_column(self, name: str, rows: np.ndarray, values, commit) -> None:
        """Set the ``"reliability"`` or ``"excluded"`` of stored rows (a copy of
        the column, which keeps the spare capacity an add writes into)."""
        col = {"reliability": 3, "excluded": 4}[name]
        bufs = self._buffers()
        bufs[col] = bufs[col].copy()
        bufs[col][rows] = values
        self._write(bufs, self._n, commit)
        self._set_buffers(bufs)
        self._applied(commit)

    def set_index_params(self, params: dict, commit) -> None:
        """The index's knobs (checked by the engine: a knob it lacks raises
        with nothing changed)."""
        refine, engine_params = split_refine(self.engine_name, params)
        _, old = split_refine(self.engine_name, self.index_params)
        self.engine.set_params(engine_params)
        try:
            self._write(self._buffers(), self._n, commit, index_params=params)
        except BaseException:
            self.engine.set_params(old)
            raise
        self.index_params, self._refine = params, refine
        self._applied(commit)

    # -- state ------------------------------------------------------------------------
    @classmethod
    def from_state(cls, meta, arrays, device, storage_path=None, *, order=None):
        """The rows a memory's state describes (``meta`` and ``arrays`` checked
        by the caller), the engine on ``device``; with ``storage_path``, the
        vectors streamed into a file there (never whole in RAM). Without the
        engine's state, the index is built afresh; ``order``: each row's
        sequence number when the arrays are not in memory order (a folder's
        rows, moved by deletions): the index is built in memory order."""
        from skknn.memory.metric import METRICS

        metric = METRICS[meta["metric"]]
        rows = cls(
            meta["n_features"],
            metric=metric,
            normalizes=meta["preprocessing"] is not None or metric.name == "cosine",
            engine=meta["engine"],
            device=device,
            index_params=meta.get("index_params"),
            storage_dtype=meta.get("storage_dtype", "float32"),
        )
        X = arrays["embeddings"]
        n = X.shape[0]
        scale = saved_scale(meta, X, rows.normalizes)
        if meta.get("scale") is None and scale != 1.0:
            arrays = {k: v for k, v in arrays.items() if not k.startswith("engine/")}
        if scale != 1.0:
            refuse_rescaled(storage_path, rows.storage_dtype)
            X = rescaled(X, scale)  # a copy: the engine searches rescaled vectors
        rows._scale = scale
        if storage_path is not None:
            rows.storage = DiskRows.new(storage_path, X.shape[1], X.dtype)
        X = rows.storage.adopt(X, n)  # on disk, streamed into a file
        rows._X, rows._y, rows._ids = X, arrays["labels"], arrays["sample_ids"]
        rows._rel, rows._excl = arrays["reliability"], arrays["excluded"]
        # Files of format 1 had no sample weights.
        rows._sw = arrays.get("sample_weight", np.ones(n, dtype=np.float32))
        if rows._norm is not None:
            rows._norm = arrays.get("norms", np.full(n, np.nan, dtype=np.float32))
        rows._n = n
        rows._next_id = int(meta["next_id"])
        rows.version = int(meta["version"])
        rows.auto = bool(meta.get("auto", False))
        engine_state = {
            k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("engine/")
        }
        if order is not None and n > 1 and not np.all(order[1:n] > order[: n - 1]):
            order = np.argsort(order[:n], kind="stable")
        else:
            order = None
        if n and engine_state:
            rows.engine.load_state(engine_state, rows._X[:n], rows._ids[:n])
        elif n:
            rows.engine.build(*engine_rows(rows.engine, rows._X, rows._ids, n, order))
        return rows

    def state(self, meta: dict, arrays: dict) -> tuple[dict, dict]:
        """The memory's ``(meta, arrays)``: the front's (``meta``, ``arrays``)
        with the rows, in memory order, and the engine's state."""
        meta, arrays = self._state_of(
            self._buffers(), self._n, (meta, arrays), order=self._logical_rows()
        )
        for name, value in self.engine.state().items():
            arrays["engine/" + name] = value
        return meta, arrays

    def _state_of(self, bufs, n: int, front, order=None, **changes):
        """The state the memory has, or would have with ``bufs``, ``n`` rows,
        the front's state ``front`` and the ``changes`` (engine_name,
        index_params, scale) an edit is about to make; without the engine's
        state. ``order``: rows ``[0, n)`` in memory order (None: as they
        lie), the arrays are then gathered in it."""
        from skknn._archive import RowsInOrder

        meta = self._meta(front[0], **changes)

        def rows(b):
            return np.ascontiguousarray(b[:n] if order is None else b[order])

        X, y, ids, rel, excl, sw = bufs[:6]
        arrays = {
            # moved rows: gathered block by block when written, never whole
            "embeddings": rows(X) if order is None else RowsInOrder(X, order[:n]),
            "labels": rows(y),
            "sample_ids": rows(ids),
            "reliability": rows(rel),
            "excluded": rows(excl),
            "sample_weight": rows(sw),
        }
        if meta["scale"] != 1.0:  # saved pre-processed, as a shard split reads them
            arrays["embeddings"] = rescaled(arrays["embeddings"], 1.0 / meta["scale"])
        if len(bufs) > 6:
            arrays["norms"] = rows(bufs[6])
        arrays.update(front[1])
        return meta, arrays

    def _meta(self, front_meta: dict, **changes) -> dict:
        """The memory's JSON state: the front's with the rows' (engine, knobs,
        storage type, scale), or with the ``changes`` (engine_name,
        index_params, scale) an edit is about to make."""
        now = {
            "engine_name": self.engine_name,
            "index_params": self.index_params,
            "scale": self._scale,
            **changes,
        }
        return {
            **front_meta,
            "engine": now["engine_name"],
            "auto": self.auto,
            "storage_dtype": self.storage_dtype,
            "index_params": now["index_params"],
            "scale": float(now["scale"]),
        }

    def _write(self, bufs, n: int, commit, *, removed=None, **changes) -> None:
        """Commit to the storage (a no-op in RAM) the per-row ``bufs`` (None:
        the current ones), ``n`` rows and the ``changes`` an edit is about to
        make, with the front's state after ``commit``; with ``removed``, the
        deletion of those committed rows (``skknn/memory/backends/disk.py``).
        The manifest takes the meta and the front's small arrays (centre,
        taxonomy paths); the rows go to their files from ``bufs``."""

        def describe():
            meta, small = commit.describe()
            return self._meta(meta, **changes), small

        self.storage.commit(describe, bufs, n, removed=removed)

    def settle(self, front: tuple[dict, dict]) -> None:
        """Commit the rows just loaded with the front's state ``front`` and map
        every per-row array from its file (on disk)."""
        bufs = self._buffers()
        meta = self._meta(front[0])
        self.storage.commit(lambda: (meta, front[1]), bufs, self._n, removed=None)
        self._set_buffers(self.storage.published(bufs))

    def adopt_storage(self, storage) -> None:
        """Keep the rows in ``storage`` (a folder just opened): every per-row
        array its file's map."""
        count = len(self._buffers())
        if count > storage.n_parts:
            from skknn.exceptions import ModelFileError

            raise ModelFileError(
                storage.folder / "manifest.json",
                "manifest.json: parts",
                "names no norms for a memory that normalises",
            )
        self.storage = storage
        self._set_buffers(storage.published(self._buffers()))

    def check_picklable(self) -> None:
        self.storage.check_picklable()
