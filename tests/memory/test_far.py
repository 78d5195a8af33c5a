"""index_params["far_quantile"]: queries far from all the memory holds are
searched exactly (skknn/memory/far.py)."""

from __future__ import annotations

import numpy as np
import pytest

from skknn import KNNVoter
from skknn.memory.engines import AUTO_PARAMS, split_refine
from skknn.memory.far import far_queries
from tests.conftest import HAS_FAISS

needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")


def _clusters(n_clusters=16, per=150, d=32, seed=1):
    rng = np.random.default_rng(seed)
    centres = 4 * rng.standard_normal((n_clusters, d)).astype(np.float32)
    y = np.repeat(np.arange(n_clusters), per)
    X = centres[y] + rng.standard_normal((len(y), d)).astype(np.float32)

    def queries(clusters):
        noise = rng.standard_normal((len(clusters), d)).astype(np.float32)
        return centres[clusters] + noise

    return X, y, queries


class _Store:
    def __init__(self, version):
        self.version = version


def test_mask_matches_a_numpy_reference():
    """The radius is the far-quantile of stored samples' own k-th-neighbour
    distance (themselves left out), over a seeded sample of the memory."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    Q = np.vstack([X[:20] + 0.01, 6 + rng.standard_normal((20, 5))]).astype(np.float32)
    k, kk = 3, 7

    def brute(S, n):
        d = ((S[:, None, :] - X[None]) ** 2).sum(-1)
        rows = np.argsort(d, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(d, rows, 1), rows

    dist, _ = brute(Q, kk)
    got = far_queries(_Store(7), X, Q, dist, k, kk, 0.9, brute)
    # The reference, written out: all 300 rows are sampled (fewer than 512).
    d_self = ((X[:, None, :] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(d_self, np.inf)
    radius = np.quantile(np.sort(d_self, axis=1)[:, k - 1], 0.9)
    np.testing.assert_array_equal(got, dist[:, k - 1] > radius)
    assert got[20:].all()  # far from every stored row
    assert got[:20].mean() <= 0.2  # near copies: the tail of the scale at most


def test_reference_is_measured_once_per_state():
    X = np.random.default_rng(2).standard_normal((50, 3)).astype(np.float32)
    calls = []

    def brute(S, n):
        calls.append(len(S))
        d = ((S[:, None, :] - X[None]) ** 2).sum(-1)
        rows = np.argsort(d, axis=1)[:, :n]
        return np.take_along_axis(d, rows, 1), rows

    store, dist = _Store(1), np.zeros((4, 5))
    for _ in range(3):
        far_queries(store, X, X[:4], dist, 2, 5, 0.99, brute)
    assert calls == [50]
    store.version = 2  # an edit: measured again
    far_queries(store, X, X[:4], dist, 2, 5, 0.99, brute)
    assert calls == [50, 50]


@pytest.mark.parametrize(
    "bad", [0, 0.0, -0.1, 1.5, True, "0.9", float("nan")], ids=repr
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="far_quantile"):
        split_refine("IVF8,Flat", {"far_quantile": bad})


@pytest.mark.parametrize("engine", ["exact", "flat"])
def test_exact_engines_refuse_it(engine):
    with pytest.raises(ValueError, match="exact search"):
        split_refine(engine, {"far_quantile": 0.99})


def test_split_keeps_faiss_knobs_apart():
    refinement, knobs = split_refine("IVF8,PQ4", dict(AUTO_PARAMS))
    assert refinement == (4, 0.999)
    assert knobs == {"nprobe": 32}


@needs_faiss
@pytest.mark.parametrize("index", ["IVF16,Flat", "IVF16,PQ8x4"])
def test_queries_about_an_unlearned_region_are_answered_exactly(index):
    """The streaming failure, small: train on clusters 0-11, unlearn 0-2 (their
    lists empty), add clusters 12-15 (some land in those lists) and ask about
    0-2. The one probed list holds unrelated samples; with far_quantile those
    queries get brute force's answer, and the others keep the index's."""
    X, y, queries = _clusters()
    first, later = np.flatnonzero(y < 12), np.flatnonzero(y >= 12)
    params = {"nprobe": 1, "refine": 4}
    knn = KNNVoter(5, index=index, index_params=params, metric="sqeuclidean")
    knn.set_params(preprocessing=None).fit(X[first], y[first], sample_ids=first)
    knn.unlearn(np.flatnonzero(y < 3), retrain_index=False)
    knn.partial_fit(X[later], y[later], sample_ids=later)
    Q = np.vstack([queries(np.arange(3).repeat(10)), queries(np.arange(3, 16))])
    live = np.flatnonzero(y >= 3)
    exact = KNNVoter(5, index="flat", metric="sqeuclidean", preprocessing=None)
    truth = exact.fit(X[live], y[live], sample_ids=live)
    truth = truth.kneighbors(Q, return_distance=False)

    def recall(ids):
        return np.mean([np.intersect1d(a, b).size / 5 for a, b in zip(ids, truth)])

    with pytest.warns(UserWarning, match="fewer than k"):
        before = knn.kneighbors(Q, return_distance=False)
    knn.set_params(index_params={**params, "far_quantile": 0.99})
    after = knn.kneighbors(Q, return_distance=False)
    assert recall(before[:30]) < 0.5  # the rule has something to repair
    np.testing.assert_array_equal(after[:30], truth[:30])
    # Queries among live samples are not far: the index still answers them.
    np.testing.assert_array_equal(after[30:], before[30:])


@needs_faiss
def test_one_state_answers_one_way_and_files_keep_the_knob(tmp_path):
    from skknn.io import load, save

    X, y, queries = _clusters()
    params = {"nprobe": 2, "far_quantile": 0.95}
    knn = KNNVoter(5, index="IVF16,Flat", index_params=params).fit(X, y)
    Q = queries(np.arange(16).repeat(3))
    keys = set(vars(knn.memory_))
    first = knn.kneighbors(Q)
    assert set(vars(knn.memory_)) == keys  # the reference is kept outside
    np.testing.assert_array_equal(knn.kneighbors(Q)[1], first[1])
    save(knn, tmp_path / "m.skknn")
    loaded = load(tmp_path / "m.skknn")
    assert loaded.memory_.index_params == params
    np.testing.assert_array_equal(loaded.kneighbors(Q)[1], first[1])
