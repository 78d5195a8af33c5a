"""Searching rows held in this process (RAM or memory-mapped files): one query
block in, distances and ids out, refined and tie-complete.

A mixin of :class:`~skknn.memory.local.LocalRows`: the search half of the row
backend protocol, over its own arrays and engine. A Dask shard runs the same
code on its worker (it holds a ``VectorStore`` of its rows), so every backend
ranks, refines and breaks ties the same way before
:func:`~skknn.memory.merge.merge_top` merges shards.
"""

from __future__ import annotations

import numpy as np
import torch

from skknn.memory.base import DEFAULT_BATCH_SIZE
from skknn.memory.engines import keyed_by_rows, split_refine
from skknn.memory.far import far_queries
from skknn.memory.neighbors import MISSING, Hits
from skknn.memory.preprocessing import check_scaled, largest_abs, rescaled
from skknn.memory.ties import TIE_SPARE, nearest_first, tie_open, warn_short


class LocalSearchMixin:
    """The search methods of a row backend whose rows are in this process."""

    def knobs(self, index_params: dict):
        """``(refine, engine knobs)`` of ``index_params`` for one search."""
        return split_refine(self.engine_name, dict(index_params))

    def in_store_units(self, Q: np.ndarray, what: str) -> np.ndarray:
        return self._scaled_queries(Q, what)

    def submit(self, Q: np.ndarray, k: int, exact: bool, knobs) -> Hits:
        """One block searched here and now (nothing is in flight in-process)."""
        return self._hits(*self._search_prepared(Q, k, exact=exact, knobs=knobs))

    def collect(self, hits: Hits, k: int) -> Hits:
        return hits

    def all_queries(self) -> np.ndarray:
        """Every row, in memory order (whatever rows a deletion moved on disk)."""
        rows = self._logical_rows()
        return np.arange(self._n) if rows is None else rows

    def self_jobs(self, rows: np.ndarray, batch_size: int) -> list:
        return [rows[s : s + batch_size] for s in range(0, rows.shape[0], batch_size)]

    def submit_self(self, rows: np.ndarray, block: np.ndarray, k: int):
        return None, self._search_self_rows(block, k)

    def collect_self(self, pending, k: int):
        return pending

    def _search_self_rows(self, qr: np.ndarray, k: int) -> Hits:
        """Leave-one-out neighbours of rows ``qr``: ``k + 1`` searched, the
        query dropped by sample id (or the last neighbour, when self is not
        among them: duplicates)."""
        Q = self._X[qr].astype(np.float32, copy=False)  # a gather: a copy
        dist, nb = self._search_prepared(Q, k + 1)
        own = self._ids[qr]
        nb_ids = np.where(nb >= 0, self._ids[np.maximum(nb, 0)], MISSING)
        is_self = nb_ids == own[:, None]
        drop = np.where(is_self.any(1), np.argmax(is_self, 1), nb.shape[1] - 1)
        keep = np.ones(nb.shape, dtype=bool)
        keep[np.arange(nb.shape[0]), drop] = False
        return self._hits(
            dist[keep].reshape(-1, k),
            nb[keep].reshape(-1, k),
            query_ids=own.copy(),
            query_codes=self._y[qr].copy(),
        )

    def points(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows, as searched."""
        return self._X[rows].astype(np.float32)

    def within(self, rows: np.ndarray, radii: np.ndarray, P: np.ndarray) -> np.ndarray:
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

    def _hits(self, dist, rows, *, query_ids=None, query_codes=None) -> Hits:
        present = rows >= 0
        safe = np.where(present, rows, 0)
        return Hits(
            self.metric.unscaled(dist, self._scale),
            np.where(present, self._ids[safe], MISSING),
            np.where(present, self._y[safe], 0),
            self._rel[safe] * self._sw[safe],
            self._excl[safe] & present,
            query_ids,
            query_codes,
        )
