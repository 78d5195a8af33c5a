"""The memory: embeddings, labels, stable sample ids and reliabilities.

One :class:`Memory` serves every estimator. It owns the host arrays (the one copy
of the embeddings), keeps them consistent with its search engine, and never shows
a half-updated state: every mutation validates first, writes new rows into spare
capacity or into new arrays, and publishes them with a few plain assignments at
the end.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from skknn._search import METRICS, make_engine

# Queries per chunk of the NumPy fallback of _pair_scores: bounds its (chunk, k, d)
# gather of neighbour vectors.
_REFINE_CHUNK = 256
# Rows per step when compacting in place: bounds NumPy's overlap buffer (~6 MB).
_MOVE_CHUNK = 4096


class Memory:
    """A searchable, editable set of ``(embedding, label, id, reliability)`` rows.

    Parameters
    ----------
    n_features : int
        Embedding width.
    metric : {"cosine", "sqeuclidean", "euclidean"}
        Distance reported by :meth:`search`; cosine expects unit vectors.
    engine : str
        "exact" (torch), "flat" (FAISS exact) or a ``faiss.index_factory`` string.
    device : torch.device
        Where the engine searches.
    index_params : dict, optional
        FAISS parameters by their FAISS names (``{"nprobe": 16}``).

    Notes
    -----
    Labels are class *indices*; the estimator owns the class names. ``excluded``
    marks hard-pruned samples: they are still retrieved, but do not vote.
    """

    def __init__(
        self,
        n_features: int,
        *,
        metric: str,
        engine: str,
        device: torch.device,
        index_params: dict | None = None,
    ):
        self.n_features = int(n_features)
        self.metric = metric
        self.engine_name = engine
        self.device = torch.device(device)
        self.index_params = dict(index_params or {})
        self.engine = make_engine(engine, metric, self.device, self.index_params)
        self._n = 0
        self._X = np.empty((0, self.n_features), dtype=np.float32)
        self._y = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._rel = np.empty(0, dtype=np.float32)
        self._excl = np.empty(0, dtype=bool)
        self._next_id = 0
        self._sorted = None  # (sorted ids, their rows): built lazily for id lookups

    # -- views ----------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def embeddings(self) -> np.ndarray:
        return self._X[: self._n]

    @property
    def labels(self) -> np.ndarray:
        return self._y[: self._n]

    @property
    def sample_ids(self) -> np.ndarray:
        return self._ids[: self._n]

    @property
    def reliability(self) -> np.ndarray:
        return self._rel[: self._n]

    @property
    def excluded(self) -> np.ndarray:
        return self._excl[: self._n]

    # -- ids ------------------------------------------------------------------
    def new_ids(self, n: int) -> np.ndarray:
        """Fresh ids for ``n`` samples: never used before in this memory."""
        return np.arange(self._next_id, self._next_id + n, dtype=np.int64)

    def check_new_ids(self, ids: np.ndarray, n: int) -> np.ndarray:
        """Validate user-given ids for ``n`` new samples: integers, unique, unused."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != n:
            raise ValueError(
                f"sample_ids must be a 1-d array of {n} ids (one per sample); got "
                f"shape {ids.shape}."
            )
        if n and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"sample_ids must be integers; got dtype {ids.dtype}.")
        ids = ids.astype(np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(
                "sample_ids must be unique; duplicated: "
                f"{uniq[counts > 1][:10].tolist()}."
            )
        if self._n and n:
            # Ids above every id ever issued cannot collide; check only the rest.
            low = ids[ids < self._next_id]
            clash = low[np.isin(low, self.sample_ids)]
            if clash.size:
                raise ValueError(
                    f"sample_ids already in memory: {np.sort(clash)[:10].tolist()}."
                )
        return ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Memory rows of the given sample ids (-1 stays -1)."""
        if self._sorted is None:
            order = np.argsort(self.sample_ids, kind="stable")
            self._sorted = (self.sample_ids[order], order)
        sorted_ids, order = self._sorted
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        rows = order[pos] if len(order) else np.full_like(ids, -1)
        found = (sorted_ids[pos] == ids) if len(order) else np.zeros(ids.shape, bool)
        return np.where(found & (ids >= 0), rows, -1)

    # -- mutation -------------------------------------------------------------
    def add(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        *,
        label_map: np.ndarray | None = None,
        prepare=None,
    ) -> None:
        """Append rows. ``ids`` must come from :meth:`new_ids` / :meth:`check_new_ids`.

        ``X`` is copied once, into the memory's own buffer, where ``prepare`` (if
        given) transforms the new rows in place: the memory is the only copy.
        ``label_map`` re-encodes the stored labels first (``new = label_map[old]``),
        for classes inserted before existing ones; both happen, or neither.
        """
        m = X.shape[0]
        n = self._n
        if n + m > self._X.shape[0]:
            # Amortised growth, with headroom from the start: partial_fit of a
            # small batch into a large memory must not copy the whole memory.
            cap = (
                n + m + max(1024, (n + m) // 16)
                if n == 0
                else max(n + m, int(self._X.shape[0] * 1.5) + 16)
            )
            bufs = [
                _grow(b, n, cap)
                for b in (self._X, self._y, self._ids, self._rel, self._excl)
            ]
        else:
            bufs = [self._X, self._y, self._ids, self._rel, self._excl]
        Xb, yb, idb, rb, eb = bufs
        if label_map is not None:
            yb = yb.copy()
            yb[:n] = label_map[yb[:n]]
        for buf in (Xb, yb, idb, rb, eb):
            if not buf.flags.writeable:  # e.g. loaded from a read-only memmap
                raise RuntimeError("memory buffers are read-only")
        Xb[n : n + m] = X
        if prepare is not None:
            prepare(Xb[n : n + m])
        yb[n : n + m] = labels
        idb[n : n + m] = ids
        rb[n : n + m] = 1.0
        eb[n : n + m] = False
        if n == 0:
            self.engine.build(Xb[: n + m], idb[: n + m])
        else:
            self.engine.add(Xb[: n + m], Xb[n : n + m], np.asarray(ids, dtype=np.int64))
        # Publish.
        self._X, self._y, self._ids, self._rel, self._excl = Xb, yb, idb, rb, eb
        self._n = n + m
        if m:
            self._next_id = max(self._next_id, int(np.max(ids)) + 1)
        self._sorted = None

    def check_removable(self, ids) -> np.ndarray:
        """Validate ids to delete (1-d ints, unique, all in memory); sorted copy."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"sample_ids must be 1-d; got shape {ids.shape}.")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"sample_ids must be integers; got dtype {ids.dtype}.")
        ids = ids.astype(np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(
                f"sample_ids to unlearn must be unique; duplicated: "
                f"{uniq[counts > 1][:10].tolist()}."
            )
        unknown = uniq[~np.isin(uniq, self.sample_ids)]
        if unknown.size:
            raise ValueError(
                f"Cannot unlearn ids that are not in memory: {unknown[:10].tolist()}."
            )
        return uniq

    def remove(self, ids, retrain_index: bool = False) -> None:
        """Physically delete the rows with these ids (all must exist).

        ``retrain_index`` retrains an approximate index's trained parts (IVF
        centroids, PQ/SQ codebooks) on the remaining rows; otherwise they are
        kept and only the removed codes leave the index.
        """
        uniq = self.check_removable(ids)
        if not uniq.size:
            return
        check = getattr(self.engine, "check_remove", None)
        if check is not None:
            check(self.n_features, self._n - uniq.size, retrain_index)
        gone = np.isin(self.sample_ids, uniq)
        runs = _kept_runs(np.flatnonzero(gone), self._n)
        n_old, n_new = self._n, self._n - uniq.size
        bufs = [self._X, self._y, self._ids, self._rel, self._excl]
        with _uninterrupted():
            if all(b.flags.writeable for b in bufs):
                # In place, order kept: a fresh 1.5 GB array costs more in page
                # faults than the copy itself. The vacated tail is zeroed, so no
                # spare capacity keeps a removed vector's bytes.
                for b in bufs:
                    _compact_inplace(b, runs)
                    b[n_new:n_old] = 0
            else:  # read-only buffers (a memmap from joblib): compact into copies
                bufs = [_compact_inplace(np.array(b[:n_old]), runs) for b in bufs]
            self._X, self._y, self._ids, self._rel, self._excl = bufs
            self._n = n_new
            self._sorted = None
            # Inside the guard: rows and index change together or not at all.
            self.engine.remove(
                self.embeddings, self.sample_ids, uniq, retrain=retrain_index
            )

    def set_votes(self, reliability: np.ndarray | None = None, excluded=None) -> None:
        """Replace reliabilities and/or hard-pruning exclusions (aligned with rows)."""
        n = self._n
        rel = self._rel if reliability is None else _exact(reliability, n, np.float32)
        excl = self._excl if excluded is None else _exact(excluded, n, bool)
        if reliability is not None and (
            not np.all(np.isfinite(rel)) or np.any(rel <= 0)
        ):
            raise ValueError("reliability weights must be finite and > 0.")
        # Keep the spare capacity: add() writes new rows into it in place.
        cap = self._X.shape[0]
        if reliability is not None:
            rel = _grow(rel, n, cap)
        if excluded is not None:
            excl = _grow(excl, n, cap)
        self._rel, self._excl = rel, excl

    # -- search ---------------------------------------------------------------
    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query, nearest first.

        Returns ``(distances, rows)`` of shape ``(n_queries, min(k, n_samples))``;
        rows are memory positions, -1 where an approximate index found fewer.
        Distances are recomputed exactly for the retrieved pairs, so they do not
        depend on the engine's blocking or on which other queries share the call.
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        k = min(int(k), self._n)
        if k <= 0:
            raise ValueError("The memory is empty: fit or partial_fit samples first.")
        if Q.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        _, keys = self.engine.search(self.embeddings, Q, k)
        keys = np.asarray(keys, dtype=np.int64)
        rows = self.rows_of(keys) if self.engine.keys_are_ids else keys
        return self._refine(Q, rows)

    def _refine(self, Q: np.ndarray, rows: np.ndarray):
        spec = METRICS[self.metric]
        scores = _pair_scores(self.embeddings, Q, rows, spec.inner_product)
        if spec.inner_product:
            dist = 1.0 - scores
        else:
            dist = np.sqrt(scores) if spec.sqrt else scores
        dist = np.where(rows >= 0, dist, np.inf).astype(np.float32, copy=False)
        # Exact distances may reorder near-ties the engine's arithmetic saw apart.
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rows, order, 1)

    def iter_loo(
        self, k: int, rows: np.ndarray | None = None, block_size: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Leave-one-out neighbours of memory rows, in blocks (FORMULAS.md 2).

        Searches ``k + 1`` and drops the query's own row *by sample id* (with
        duplicate vectors, self is not always first); if self is not among them,
        the last neighbour is dropped so exactly ``min(k, n - 1)`` remain.
        Yields ``(query_rows, distances, neighbour_rows)`` per block.
        """
        rows = np.arange(self._n) if rows is None else np.asarray(rows, dtype=np.int64)
        k = min(int(k), self._n - 1)
        if k <= 0:
            raise ValueError(
                f"Leave-one-out needs at least 2 samples in memory; it has {self._n}."
            )
        ids = self.sample_ids
        for s in range(0, rows.shape[0], block_size):
            qr = rows[s : s + block_size]
            dist, nb = self.search(self.embeddings[qr], k + 1)
            is_self = (nb >= 0) & (ids[np.maximum(nb, 0)] == ids[qr][:, None])
            drop = np.where(is_self.any(1), np.argmax(is_self, 1), nb.shape[1] - 1)
            keep = np.ones(nb.shape, dtype=bool)
            keep[np.arange(nb.shape[0]), drop] = False
            yield (
                qr,
                dist[keep].reshape(-1, k),
                nb[keep].reshape(-1, k),
            )

    # -- persistence ----------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: everything needed to rebuild, trimmed to the rows."""
        meta = {
            "n_features": self.n_features,
            "metric": self.metric,
            "engine": self.engine_name,
            "index_params": self.index_params,
            "next_id": int(self._next_id),
        }
        arrays = {
            "embeddings": np.ascontiguousarray(self.embeddings),
            "labels": np.ascontiguousarray(self.labels),
            "sample_ids": np.ascontiguousarray(self.sample_ids),
            "reliability": np.ascontiguousarray(self.reliability),
            "excluded": np.ascontiguousarray(self.excluded),
        }
        for name, value in self.engine.state().items():
            arrays["engine/" + name] = value
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict, device: torch.device) -> Memory:
        mem = cls(
            meta["n_features"],
            metric=meta["metric"],
            engine=meta["engine"],
            device=device,
            index_params=meta.get("index_params"),
        )
        X = arrays["embeddings"]
        mem._X, mem._y, mem._ids = X, arrays["labels"], arrays["sample_ids"]
        mem._rel, mem._excl = arrays["reliability"], arrays["excluded"]
        mem._n = X.shape[0]
        mem._next_id = int(meta["next_id"])
        engine_state = {
            k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("engine/")
        }
        if mem._n:
            mem.engine.load_state(engine_state, mem.embeddings, mem.sample_ids)
        return mem

    def __getstate__(self):
        meta, arrays = self.state()
        return {"meta": meta, "arrays": arrays, "device": str(self.device)}

    def __setstate__(self, state):
        from skknn._device import device_after_unpickling

        device = device_after_unpickling(state["device"], owner="Memory")
        other = Memory.from_state(state["meta"], state["arrays"], device)
        self.__dict__.update(other.__dict__)


def _pair_scores(
    X: np.ndarray, Q: np.ndarray, rows: np.ndarray, inner_product: bool
) -> np.ndarray:
    """``Q[i] . X[rows[i, j]]`` or ``|Q[i] - X[rows[i, j]]|^2`` for every pair.

    Each pair is computed on its own, in an order fixed by ``d`` alone, so a
    query's values do not depend on which other queries share the call. FAISS's
    ``fvec_*_by_idx`` does it without gathering the neighbour vectors (10x faster
    than the NumPy fallback at k = 100); the fallback serves installs without
    FAISS. Squared distances are summed from direct differences: the expansion
    ``|q|^2 + |x|^2 - 2 q.x`` would cancel digits for near pairs. Entries of
    ``rows`` below 0 give arbitrary values; callers mask them.
    """
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    safe = np.ascontiguousarray(np.maximum(rows, 0), dtype=np.int64)
    out = np.empty(rows.shape, dtype=np.float32)
    if out.size == 0:
        return out
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None and X.flags.c_contiguous and X.dtype == np.float32:
        nq, k = safe.shape
        by_idx = (
            faiss.fvec_inner_products_by_idx
            if inner_product
            else faiss.fvec_L2sqr_by_idx
        )
        by_idx(
            faiss.swig_ptr(out),
            faiss.swig_ptr(Q),
            faiss.swig_ptr(X),
            faiss.swig_ptr(safe),
            X.shape[1],
            nq,
            k,
        )
        return out
    for s in range(0, Q.shape[0], _REFINE_CHUNK):
        nb = X[safe[s : s + _REFINE_CHUNK]]
        q = Q[s : s + _REFINE_CHUNK, None, :]
        if inner_product:
            out[s : s + _REFINE_CHUNK] = np.matmul(nb, q.transpose(0, 2, 1))[..., 0]
        else:
            diff = nb - q
            out[s : s + _REFINE_CHUNK] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def _kept_runs(removed_rows: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Maximal ``[start, stop)`` row ranges that survive a removal."""
    starts = np.concatenate([[0], removed_rows + 1])
    stops = np.concatenate([removed_rows, [n]])
    return [(int(a), int(b)) for a, b in zip(starts, stops) if b > a]


def _compact_inplace(a: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Move the kept runs down to the front of ``a``, in order, in place.

    Copies go front to back in bounded chunks, so an overlapping move never makes
    NumPy buffer more than one chunk.
    """
    pos = 0
    for s, b in runs:
        if s != pos:
            for c in range(s, b, _MOVE_CHUNK):
                e = min(c + _MOVE_CHUNK, b)
                a[pos + c - s : pos + e - s] = a[c:e]
        pos += b - s
    return a


@contextmanager
def _uninterrupted():
    """Hold Ctrl-C back until the block ends, so an edit of the memory is never
    left half-done by a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *sig: received.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


def _grow(buf: np.ndarray, n: int, cap: int) -> np.ndarray:
    # calloc'd: free until touched, and spare rows never hold stale process memory.
    new = np.zeros((cap, *buf.shape[1:]), dtype=buf.dtype)
    new[:n] = buf[:n]
    return new


def _exact(values, n: int, dtype) -> np.ndarray:
    arr = np.array(values, dtype=dtype)  # a copy: callers keep their array
    if arr.shape != (n,):
        raise ValueError(
            f"expected {n} values aligned with the memory; got {arr.shape}."
        )
    return arr
