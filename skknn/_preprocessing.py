"""Embedding pre-processing (FORMULAS.md 1): "l2", "center_l2" or None."""

from __future__ import annotations

import numpy as np

PREPROCESSING = ("l2", "center_l2")
_CHUNK = 65536


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
    """Centre and/or L2-normalise the rows of a float32 array, in place.

    Works in chunks so no second full-size temporary is made; a zero row stays
    zero (never divided by zero). ``norms_out`` receives each centred row's
    length before normalisation, so the raw row can be rebuilt as
    ``row * norm + center``.
    """
    for s in range(0, X.shape[0], _CHUNK):
        block = X[s : s + _CHUNK]
        if center is not None:
            block -= center
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            if norms_out is not None:
                norms_out[s : s + _CHUNK] = norms
            norms[norms == 0] = 1.0
            block /= norms[:, None]
    return X


def prepared_queries(X, n_features: int, center, normalize: bool) -> np.ndarray:
    """A pre-processed float32 copy of raw query vectors (the input untouched)."""
    Q = np.array(X, dtype=np.float32, order="C", copy=True)
    if Q.ndim != 2 or Q.shape[1] != n_features:
        raise ValueError(
            f"Queries must have shape (n_queries, {n_features}); got {Q.shape}."
        )
    if normalize:
        preprocess_inplace(Q, center=center, normalize=True)
    return Q
