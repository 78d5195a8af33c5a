"""The one distance convention: engine scores, pair distances, the radius test."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from skknn.memory.metric import METRICS


def test_scores_become_distances():
    score = np.array([[0.9, -0.2]], np.float32)
    np.testing.assert_allclose(
        METRICS["cosine"].to_distance(score), [[0.1, 1.2]], rtol=1e-6
    )
    sq = np.array([[4.0, -1e-7]], np.float32)  # the expansion can dip below 0
    np.testing.assert_allclose(METRICS["sqeuclidean"].to_distance(sq), [[4.0, 0.0]])
    np.testing.assert_allclose(METRICS["euclidean"].to_distance(sq), [[2.0, 0.0]])


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
@pytest.mark.parametrize("with_faiss", [True, False])
def test_pair_distances_match_float64_and_ignore_batching(
    metric, with_faiss, monkeypatch
):
    if with_faiss:
        pytest.importorskip("faiss")
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)  # the NumPy fallback
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 37)).astype(np.float32)
    Q = rng.normal(size=(600, 37)).astype(np.float32)
    rows = rng.integers(0, 300, size=(600, 9))
    rows[3, 4] = -1
    spec = METRICS[metric]
    got = spec.pair_distances(X, Q, rows)
    x64, q64 = X.astype(np.float64)[np.maximum(rows, 0)], Q.astype(np.float64)
    if metric == "cosine":
        ref = 1 - np.einsum("ijk,ik->ij", x64, q64)
    else:
        ref = ((x64 - q64[:, None, :]) ** 2).sum(-1)
        ref = np.sqrt(ref) if metric == "euclidean" else ref
    valid = rows >= 0
    np.testing.assert_allclose(got[valid], ref[valid], rtol=1e-5, atol=1e-4)
    assert np.isinf(got[3, 4])
    # A query's values do not depend on the other queries of the call.
    for part in (slice(0, 1), slice(5, 262), slice(599, 600)):
        np.testing.assert_array_equal(
            spec.pair_distances(X, Q[part], rows[part]), got[part]
        )


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
def test_any_within_is_the_radius_test(metric):
    rng = np.random.default_rng(1)
    A = rng.normal(size=(50, 5)).astype(np.float32)
    P = rng.normal(size=(3000, 5)).astype(np.float32)  # more than one block
    if metric == "cosine":
        A /= np.linalg.norm(A, axis=1, keepdims=True)
        P /= np.linalg.norm(P, axis=1, keepdims=True)
    spec = METRICS[metric]
    rows = np.tile(np.arange(3000), (50, 1))
    D = np.stack([spec.pair_distances(P, A[i : i + 1], rows[:1])[0] for i in range(50)])
    radii = np.quantile(D.min(1), 0.5).astype(np.float32) * np.ones(50, np.float32)
    radii[0] = np.inf
    got = spec.any_within(A, P, radii)
    ref = (D <= radii[:, None]).any(1)
    clear = np.abs(D.min(1) - radii) > 1e-3
    np.testing.assert_array_equal(got[clear], ref[clear])
    assert got[0]
    assert 0 < got.sum() < 50
    assert not spec.any_within(A, P[:0], radii).any()  # no points: nobody is near
