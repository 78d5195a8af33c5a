"""The distance convention, defined once (FORMULAS.md 2).

Engines rank by a *score* (largest inner product, or smallest squared L2), the
store reports *distances*, pruning asks "is this vector within that radius?".
Every one of those conversions lives on :class:`Metric`, so a sign or a square
root can only be wrong in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Queries per chunk of the NumPy fallback of pair_distances: bounds its
# (chunk, k, d) gather of neighbour vectors.
_PAIR_CHUNK = 256
# Points per block of the radius test: bounds the (rows, _RADIUS_BLOCK) distance
# block to 32 MB at 4096 rows.
_RADIUS_BLOCK = 2048
# Slack of the radius test. Stored radii are float32 distances of one
# arithmetic (pair_distances), the test uses another (a Gram block); a slightly
# generous test only costs one unnecessary re-search, a strict one would miss a
# changed neighbour list.
RADIUS_TOL = 1e-4
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Squared distances of data of this size (2**-100) still keep 24 bits above
# float32's smallest normal (2**-126).
_SMALLEST_SQUARE = 2.0**-100


@dataclass(frozen=True)
class Metric:
    """How one metric is searched and how its scores become distances.

    ``inner_product``: engines rank by largest ``<q, x>`` and the distance is
    ``1 - <q, x>`` (cosine on unit vectors); otherwise they rank by smallest
    ``|q - x|^2``, reported as is (``"sqeuclidean"``) or its square root
    (``"euclidean"``).
    """

    name: str
    inner_product: bool
    sqrt: bool = False

    def faiss_metric(self, faiss):
        return faiss.METRIC_INNER_PRODUCT if self.inner_product else faiss.METRIC_L2

    def to_distance(self, score: np.ndarray) -> np.ndarray:
        """Distance from an engine's score (inner product or squared L2)."""
        if self.inner_product:
            return 1.0 - score
        score = np.maximum(score, 0.0)  # the expansion can go slightly negative
        return np.sqrt(score) if self.sqrt else score

    def distance_exponent(self, scale: float) -> int:
        """``e`` such that distances between vectors multiplied by ``scale`` (a
        power of two) are ``2**e`` times the raw vectors' distances."""
        if self.inner_product or scale == 1.0:
            return 0  # cosine compares unit vectors: a memory scale never applies
        p = int(np.frexp(scale)[1]) - 1  # scale == 2**p
        return p if self.sqrt else 2 * p

    def unscaled(self, dist: np.ndarray, scale: float) -> np.ndarray:
        """Distances of vectors kept times ``scale``, as between the raw vectors
        (float32; exact: a power of two)."""
        e = self.distance_exponent(scale)
        return dist if e == 0 else np.ldexp(dist, -e).astype(np.float32, copy=False)

    def scaled(self, radii: np.ndarray, scale: float) -> np.ndarray:
        """Raw distances (radii) in the units of vectors kept times ``scale``."""
        e = self.distance_exponent(scale)
        return radii if e == 0 else np.ldexp(radii, e).astype(np.float32, copy=False)

    def check_reported_range(self, top: float, n_features: int, first: bool) -> None:
        """Refuse raw data whose distances the float32 record cannot hold.

        ``top`` is the data's largest |value|. Distances reach ``2 sqrt(d) top``
        (squared for ``"sqeuclidean"``); for ``"sqeuclidean"`` data so small that
        its squares fall among float32's subnormals (``first``: the data that
        sets the memory's scale) would lose its digits. Euclidean distances of
        float32 data always fit: the way out for the other.
        """
        if self.inner_product or top == 0.0:
            return
        largest = 2.0 * np.sqrt(n_features) * top
        largest = largest if self.sqrt else largest**2
        small = not self.sqrt and first and top * top < _SMALLEST_SQUARE
        if largest <= _FLOAT32_MAX and not small:
            return
        raise ValueError(
            f"Data with |x| up to {top:.3g} has {self.name} distances up to "
            f"{largest:.3g}, {'below' if small else 'beyond'} what the float32 "
            "distances of the neighbour record can hold. metric='euclidean' finds "
            "the same neighbours with distances that fit; or rescale the data."
        )

    def pair_distances(
        self, X: np.ndarray, Q: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Distance from ``Q[i]`` to ``X[rows[i, j]]`` for every pair; ``inf``
        where ``rows < 0``.

        Each pair is computed on its own, in an order fixed by ``d`` alone, so a
        query's distances do not depend on which other queries share the call
        (BLAS blocking does: FAISS's and torch's GEMM paths round differently for
        1 and 100 queries). FAISS's ``pairwise_indexed_*`` does this without
        gathering the neighbour vectors (10x faster than the NumPy fallback at
        k = 100), the pairs taken in the order of their memory rows.
        Squared distances are summed from direct differences: the expansion
        ``|q|^2 + |x|^2 - 2 q.x`` would cancel digits for near pairs.
        """
        scores = _pair_scores(X, Q, rows, self.inner_product)
        if self.inner_product:
            dist = 1.0 - scores
        else:
            dist = np.sqrt(scores) if self.sqrt else scores
        return np.where(rows >= 0, dist, np.inf).astype(np.float32, copy=False)

    def any_within(self, A: np.ndarray, P: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """For each row of ``A``: is some row of ``P`` within its radius?

        A row with an infinite radius (fewer neighbours than asked) takes any
        point. Blocked over ``P`` so no ``len(A) x len(P)`` matrix is formed.
        """
        radii = np.asarray(radii, dtype=np.float32)
        hit = ~np.isfinite(radii)
        if A.shape[0] == 0 or P.shape[0] == 0:
            return np.zeros(A.shape[0], dtype=bool) if P.shape[0] == 0 else hit
        P = np.ascontiguousarray(P, dtype=np.float32)
        if self.inner_product:
            limit = (radii + RADIUS_TOL)[:, None]
        else:
            a_sq = np.einsum("ij,ij->i", A, A)
            p_sq = np.einsum("ij,ij->i", P, P)
            squared = radii * radii if self.sqrt else radii
            limit = (squared + RADIUS_TOL)[:, None]
        for t in range(0, P.shape[0], _RADIUS_BLOCK):
            todo = ~hit
            if not todo.any():
                break
            gram = A[todo] @ P[t : t + _RADIUS_BLOCK].T
            if self.inner_product:
                near = (1.0 - gram) <= limit[todo]
            else:
                scale = a_sq[todo][:, None] + p_sq[None, t : t + _RADIUS_BLOCK]
                # Relative slack: the expansion loses digits on long vectors.
                near = scale - 2.0 * gram <= limit[todo] + RADIUS_TOL * scale
            hit[todo] = near.any(axis=1)
        return hit


METRICS = {
    "cosine": Metric("cosine", inner_product=True),
    "sqeuclidean": Metric("sqeuclidean", inner_product=False),
    "euclidean": Metric("euclidean", inner_product=False, sqrt=True),
}


def _pair_scores(
    X: np.ndarray, Q: np.ndarray, rows: np.ndarray, inner_product: bool
) -> np.ndarray:
    """``Q[i] . X[rows[i, j]]`` or ``|Q[i] - X[rows[i, j]]|^2``; arbitrary values
    where ``rows < 0`` (callers mask them)."""
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
        _faiss_pairs(faiss, out, Q, X, safe, inner_product)
        return out
    # Other storage (float16, a strided map): gather the pairs' rows as float32,
    # then the same per-pair kernel, so a pair's value does not depend on where
    # it sits in the call (a batched matmul's would: BLAS blocks the rows).
    for s in range(0, Q.shape[0], _PAIR_CHUNK):
        nb = X[safe[s : s + _PAIR_CHUNK]].astype(np.float32)
        q = Q[s : s + _PAIR_CHUNK]
        if faiss is not None:
            c, k, d = nb.shape
            pos = np.arange(c * k, dtype=np.int64).reshape(c, k)
            block = np.empty((c, k), np.float32)
            _faiss_by_idx(faiss, block, q, nb.reshape(c * k, d), pos, inner_product)
            out[s : s + _PAIR_CHUNK] = block
        elif inner_product:
            out[s : s + _PAIR_CHUNK] = np.einsum("ijk,ik->ij", nb, q)
        else:
            diff = nb - q[:, None, :]
            out[s : s + _PAIR_CHUNK] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def _faiss_pairs(faiss, out, Q, X, rows, inner_product: bool) -> None:
    """``out[i, j]``: the pair ``(Q[i], X[rows[i, j]])`` by FAISS's per-pair
    kernel, pairs visited by memory row (in buckets of rows, by a 16-bit radix
    sort): a row that several queries retrieved is read from RAM once, not
    once per query (2x faster for leave-one-out's 4,096 x 105 pairs). The
    kernel and its operands are ``fvec_*_by_idx``'s: the same bits."""
    pairwise = getattr(
        faiss,
        "pairwise_indexed_inner_product" if inner_product else "pairwise_indexed_L2sqr",
        None,
    )
    if pairwise is None:  # an older FAISS
        _faiss_by_idx(faiss, out, Q, X, rows, inner_product)
        return
    flat = rows.reshape(-1)
    shift = max(0, (X.shape[0] - 1).bit_length() - 16)
    order = np.argsort((flat >> shift).astype(np.uint16), kind="stable")
    x_rows = np.ascontiguousarray(flat[order])
    q_rows = order // rows.shape[1]
    values = np.empty(flat.size, dtype=np.float32)
    pairwise(
        X.shape[1],
        flat.size,
        faiss.swig_ptr(Q),
        faiss.swig_ptr(q_rows),
        faiss.swig_ptr(X),
        faiss.swig_ptr(x_rows),
        faiss.swig_ptr(values),
    )
    out.reshape(-1)[order] = values


def _faiss_by_idx(faiss, out, Q, X, idx, inner_product: bool) -> None:
    by_idx = (
        faiss.fvec_inner_products_by_idx if inner_product else faiss.fvec_L2sqr_by_idx
    )
    nq, k = idx.shape
    by_idx(
        faiss.swig_ptr(out),
        faiss.swig_ptr(np.ascontiguousarray(Q, dtype=np.float32)),
        faiss.swig_ptr(X),
        faiss.swig_ptr(np.ascontiguousarray(idx, dtype=np.int64)),
        X.shape[1],
        nq,
        k,
    )
