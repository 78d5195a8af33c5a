"""Embedding pre-processing (FORMULAS.md 1): "l2", "center_l2" or None.

Also the numeric range: searches square float32 values, so vectors near 1e20
overflow and vectors near 1e-21 fall below float32's normal range. Lengths are
computed here on rows rescaled by a power of two, and an unnormalised memory
keeps its vectors times one global power of two (:func:`choose_scale`), so
every engine computes on values of a comfortable size.
"""

from __future__ import annotations

import numpy as np

PREPROCESSING = ("l2", "center_l2")
# Bytes of rows pre-processed at a time: a chunk read from RAM for its lengths
# is still in cache when it is divided by them.
_CHUNK_BYTES = 4 << 20
# Squared lengths in this range were summed without overflow and without
# losing terms to float32's subnormals; the others are summed again, rescaled.
_SAFE_SQ = (2.0**-80, 2.0**120)
# An unnormalised memory keeps its data's largest |value| in this range as it
# is (scale 1): squares and sums of them stay normal floats for any width.
_COMFORT = (2.0**-30, 2.0**30)
# The largest |value| a stored vector or a query may reach once scaled: its
# squared distances, (2 * 2**40)**2 * d, stay finite in float32 below d = 2**46.
SCALED_LIMIT = 2.0**40


def check_preprocessing(preprocessing) -> None:
    """ValueError for a pre-processing the memory does not know."""
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise ValueError(
            f"Unknown preprocessing {preprocessing!r}. Valid options are "
            f"{[*PREPROCESSING, None]}."
        )


def fit_center(X: np.ndarray) -> np.ndarray:
    """Mean of the raw memory embeddings, accumulated in float64."""
    return X.mean(axis=0, dtype=np.float64).astype(np.float32)


def preprocess_inplace(
    X: np.ndarray,
    *,
    center: np.ndarray | None,
    normalize: bool,
    norms_out: np.ndarray | None = None,
) -> np.ndarray:
    """Centre and/or L2-normalise the rows of a float32 array, in place (see
    :func:`preprocess_into`)."""
    return preprocess_into(
        X, X, center=center, normalize=normalize, norms_out=norms_out
    )


def preprocess_into(
    X: np.ndarray,
    out: np.ndarray,
    *,
    center: np.ndarray | None,
    normalize: bool,
    norms_out: np.ndarray | None = None,
) -> np.ndarray:
    """Centre and/or L2-normalise the rows of ``X`` into ``out`` (float32, the
    same shape; ``X`` itself for in place), bit for bit as a copy then in place.

    Works in chunks, so no full-size temporary is made and rows are read once
    on their way into ``out`` (a copy first would read and write them again);
    a zero row stays zero (never divided by zero). ``norms_out`` receives each
    centred row's length before normalisation, so the raw row can be rebuilt as
    ``row * norm + center``.
    """
    chunk = max(1, _CHUNK_BYTES // max(1, 4 * X.shape[1]))
    for s in range(0, X.shape[0], chunk):
        src, dst = X[s : s + chunk], out[s : s + chunk]
        if center is not None:
            np.subtract(src, center, out=dst)
            if not np.isfinite(dst).all():
                raise ValueError(_RANGE_ERROR.format(what="Centred vectors"))
            src = dst
        if normalize:
            norms = _normalize_rows(src, out=dst)
            if norms_out is not None:
                norms_out[s : s + chunk] = norms
        elif src is not dst and out is not X:
            dst[...] = src
    return out


_RANGE_ERROR = (
    "{what} hold values beyond float32's range (|x| > 3.4e38); rescale the "
    "data (e.g. divide it by a power of ten) before fitting and querying."
)


def _normalize_rows(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Divide each row by its length, into ``out`` (default: in place); the
    lengths. A zero row stays zero. Rows whose squared length left float32's
    safe range (values near 1e20 overflow, near 1e-21 underflow) are measured
    again rescaled by a power of two, so their direction and length are right
    whatever their scale."""
    out = block if out is None else out
    sq = np.einsum("ij,ij->i", block, block)
    redo = ~((sq >= _SAFE_SQ[0]) & (sq < _SAFE_SQ[1]))
    norms = np.sqrt(sq)
    if redo.any():
        rows = block[redo]
        # 2**-e brings each row's largest |value| into [0.5, 1): exact.
        _, e = np.frexp(np.abs(rows).max(axis=1))
        rows = np.ldexp(rows, -e[:, None])
        scaled = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        with np.errstate(over="ignore"):
            lengths = np.ldexp(scaled, e)
        if not np.isfinite(lengths).all():
            raise ValueError(_RANGE_ERROR.format(what="Vector lengths"))
        scaled[scaled == 0] = 1.0
        keep = ~redo
        safe = np.where(norms[keep] == 0, 1.0, norms[keep]).astype(block.dtype)
        out[keep] = block[keep] / safe[:, None]
        out[redo] = rows / scaled[:, None]
        norms[redo] = lengths
        return norms
    safe = np.where(norms == 0, 1.0, norms).astype(block.dtype)
    np.divide(block, safe[:, None], out=out)
    return norms


def prepared_queries(X, n_features: int, center, normalize: bool) -> np.ndarray:
    """A pre-processed float32 copy of raw query vectors (the input untouched)."""
    with np.errstate(over="ignore"):  # values beyond float32: refused below
        Q = np.array(X, dtype=np.float32, order="C", copy=True)
    if Q.ndim != 2 or Q.shape[1] != n_features:
        raise ValueError(
            f"Queries must have shape (n_queries, {n_features}); got {Q.shape}."
        )
    if not np.isfinite(Q).all():
        raise ValueError(
            "Queries hold NaN, infinite values or values beyond float32's range "
            "(|x| > 3.4e38)."
        )
    if normalize:
        preprocess_inplace(Q, center=center, normalize=True)
    return Q


def largest_abs(X: np.ndarray) -> float:
    """The largest |value| of an array (0 for an empty one)."""
    return float(np.abs(X).max()) if X.size else 0.0


def choose_scale(top: float) -> float:
    """The power of two an unnormalised memory multiplies its vectors by, given
    its first data's largest |value| ``top``: 1 for data of a comfortable size,
    else one bringing ``top`` into [0.5, 1). Neighbours are invariant to a
    global positive scale (every metric), and a power of two multiplies
    without rounding."""
    if top == 0.0 or _COMFORT[0] <= top <= _COMFORT[1]:
        return 1.0
    return float(np.ldexp(1.0, -int(np.frexp(top)[1])))


def rescaled(X: np.ndarray, scale: float, out: np.ndarray | None = None):
    """``X`` times a power of two ``scale``, exactly (``ldexp``: the scale, up
    to 2**149, need not be a float32), into ``out`` if given."""
    e = int(np.frexp(scale)[1]) - 1
    return np.ldexp(X, e, out=out) if out is not None else np.ldexp(X, e)


def check_scaled(top: float, scale: float, what: str) -> None:
    """Refuse vectors whose largest |value| ``top``, times ``scale``, leaves the
    range every engine computes squared distances in without overflow."""
    if top * scale <= SCALED_LIMIT:
        return
    raise ValueError(
        f"{what} reach |x| = {top:.3g}, but this memory was fitted on data whose "
        f"values are at most about {SCALED_LIMIT / scale:.3g}: their squared "
        "distances to it would overflow float32 (the memory keeps its vectors at "
        "the scale its first fit chose). Fit the memory again on all the data, "
        "or bring it to one scale."
    )
