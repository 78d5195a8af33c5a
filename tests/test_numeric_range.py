"""Floats far from 1 and the memory a prediction holds (issue 22, items 7, 8).

Searches square float32 values: data near 1e20 overflows, near 1e-21 its
squares fall among the subnormals. The memory either searches it correctly
(neighbours are invariant to a global scale; reported distances are those of
the raw data) or refuses it clearly; it never answers wrong. And ``batch_size``
bounds the memory a prediction holds beyond its output, whatever the number of
queries.
"""

import pickle
import tracemalloc

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

import skknn
from skknn import KNNVoter, VectorStore

SCALES = [1e20, 1e-21]
# Exact engines, and an inverted index probing every list (exact answers, but
# trained, stored and searched by FAISS's IVF code).
INDEXES = [("exact", None), ("flat", None), ("IVF4,Flat", {"nprobe": 4})]
# (metric, preprocessing): the unnormalised path rescales the memory, the
# normalising ones measure lengths rescaled.
SETTINGS = [("euclidean", None), ("cosine", "l2"), ("euclidean", "center_l2")]


def _data(seed=0, n=300, n_queries=25, d=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, rng.integers(0, 3, n), rng.normal(size=(n_queries, d))


def _reference(X, Q, k, metric, preprocessing):
    """sklearn's neighbours in float64 of the float32 data the memory takes."""
    X = X.astype(np.float32).astype(np.float64)
    Q = Q.astype(np.float32).astype(np.float64)
    if preprocessing == "center_l2":
        mean = X.mean(axis=0)
        X, Q = X - mean, Q - mean
    if preprocessing is not None or metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    nn = NearestNeighbors(n_neighbors=k, metric=metric).fit(X)
    return nn.kneighbors(Q)


def _voter(index, params, metric, preprocessing, k=5):
    return KNNVoter(
        k, index=index, index_params=params, metric=metric, preprocessing=preprocessing
    )


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("metric", "preprocessing"), SETTINGS)
@pytest.mark.parametrize(("index", "params"), INDEXES)
def test_neighbours_far_from_one_equal_those_at_one_and_sklearns(
    index, params, metric, preprocessing, scale
):
    X, y, Q = _data()
    at_one = _voter(index, params, metric, preprocessing).fit(X, y)
    knn = _voter(index, params, metric, preprocessing).fit(X * scale, y)
    dist, ids = knn.kneighbors(Q * scale)
    ref_dist, ref_ids = _reference(X * scale, Q * scale, 5, metric, preprocessing)
    np.testing.assert_array_equal(ids, at_one.kneighbors(Q)[1])
    np.testing.assert_array_equal(ids, ref_ids)
    assert dist.dtype == np.float32
    assert np.isfinite(dist).all()
    # Within float32 rounding of the float64 reference, relative to its scale.
    unit = ref_dist.max()
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-6 * unit)
    np.testing.assert_array_equal(knn.predict(Q * scale), at_one.predict(Q))


@pytest.mark.parametrize("scale", SCALES)
def test_leave_one_out_and_the_raw_vectors_far_from_one(scale):
    X, y, _ = _data()
    knn = KNNVoter(5, index="flat", metric="euclidean", preprocessing=None)
    knn.fit(X * scale, y)
    at_one = KNNVoter(5, index="flat", metric="euclidean", preprocessing=None)
    at_one.fit(X, y)
    dist, ids = knn.kneighbors()
    np.testing.assert_array_equal(ids, at_one.kneighbors()[1])
    np.testing.assert_allclose(dist, at_one.kneighbors()[0] * scale, rtol=1e-5)
    # The memory gives back the vectors it was given, not its rescaled copy.
    got = knn.memory_.get(knn.sample_ids_[:10]).X
    np.testing.assert_array_equal(got, (X[:10] * scale).astype(np.float32))
    np.testing.assert_array_equal(
        knn.memory_.get(knn.sample_ids_[:10], prepared=True).X, got
    )


@pytest.mark.parametrize("scale", SCALES)
def test_squared_distances_out_of_float32s_range_are_refused_at_fit(scale):
    X, y, _ = _data()
    knn = KNNVoter(5, index="flat", metric="sqeuclidean", preprocessing=None)
    with pytest.raises(ValueError, match="metric='euclidean'"):
        knn.fit(X * scale, y)


def test_partial_fit_at_another_scale_is_refused_and_at_the_same_one_works():
    X, y, Q = _data()
    knn = KNNVoter(5, index="flat", metric="euclidean", preprocessing=None)
    knn.fit(X[:150], y[:150])
    with pytest.raises(ValueError, match="Fit the memory again"):
        knn.partial_fit(X[150:] * 1e20, y[150:])
    assert knn.memory_.n_samples == 150  # nothing added

    knn.fit(X[:150] * 1e20, y[:150]).partial_fit(X[150:] * 1e20, y[150:])
    _, ref_ids = _reference(X * 1e20, Q * 1e20, 5, "euclidean", None)
    np.testing.assert_array_equal(knn.kneighbors(Q * 1e20)[1], ref_ids)


def test_queries_whose_distances_overflow_are_refused():
    X, y, Q = _data()
    knn = KNNVoter(5, index="flat", metric="euclidean", preprocessing=None).fit(X, y)
    # Finite in float32, but |q - x|**2 overflows it.
    with pytest.raises(ValueError, match="overflow float32"):
        knn.kneighbors(Q * 1e30)
    # Finite in float64, not in float32.
    with pytest.raises(ValueError, match=r"too large|float32's range"):
        knn.predict(Q * 1e39)
    store = VectorStore(8, metric="euclidean", preprocessing=None, engine="flat")
    store.add(X, y)
    with pytest.raises(ValueError, match="float32's range"):
        store.search(Q * 1e39, 3)
    cosine = VectorStore(8, engine="flat")
    cosine.add(X, y)
    with pytest.raises(ValueError, match="float32's range"):
        cosine.search(Q * 1e39, 3)


@pytest.mark.parametrize("scale", SCALES)
def test_a_memory_far_from_one_survives_save_load_and_pickle(tmp_path, scale):
    X, y, Q = _data()
    knn = KNNVoter(5, index="HNSW16", metric="euclidean", preprocessing=None)
    knn.fit(X * scale, y)
    want = knn.kneighbors(Q * scale)
    knn.save(tmp_path / "m.skknn")
    for back in (skknn.load(tmp_path / "m.skknn"), pickle.loads(pickle.dumps(knn))):
        got = back.kneighbors(Q * scale)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # The state holds the vectors as given (a shard split reads them so).
    meta, arrays = knn.memory_.state()
    np.testing.assert_array_equal(arrays["embeddings"], (X * scale).astype(np.float32))
    assert meta["scale"] != 1.0


def test_pruning_radii_far_from_one():
    X, y, _ = _data(n=200)
    y = np.where(np.random.default_rng(1).random(200) < 0.1, (y + 1) % 3, y)

    def pruned(scale):
        knn = KNNVoter(5, index="flat", metric="euclidean", preprocessing=None)
        pruner = skknn.MemoryPruner(knn, n_neighbors=5, mode="hard", threshold=1)
        pruner.fit(X * scale, y)
        pruner.partial_fit(X[:20] * scale * 1.01, y[:20])
        return np.sort(pruner.pruned_ids_), pruner.wrong_counts_

    (ids, counts), (ids_at_one, counts_at_one) = pruned(1e20), pruned(1.0)
    np.testing.assert_array_equal(ids, ids_at_one)
    np.testing.assert_array_equal(counts, counts_at_one)


# -- batch_size bounds the memory of a prediction ------------------------------------
def _traced_growth(call) -> tuple[int, object]:
    """Peak bytes traced (NumPy's allocations) during ``call`` beyond what was
    held before it, and its result."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, out


@pytest.mark.parametrize(
    ("method", "n_queries"),
    [("predict_proba", 50_000), ("predict", 20_000), ("score", 20_000)],
)
def test_batch_size_bounds_the_memory_a_prediction_holds(method, n_queries):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    Q = rng.normal(size=(n_queries, 16)).astype(np.float32)
    yq = rng.integers(0, 10, n_queries)
    knn = KNNVoter(50, index="flat", batch_size=1024).fit(X, y)
    args = (Q, yq) if method == "score" else (Q,)
    growth, out = _traced_growth(lambda: getattr(knn, method)(*args))
    output = np.asarray(out).nbytes
    # Held for every query, the neighbour record and the vote take ~50 bytes
    # per query-neighbour pair: 50-140 MB here. One block of 1024 takes ~3 MB.
    assert growth - output < 12 * 2**20, (growth, output)


def test_batched_answers_equal_one_block():
    X, y, Q = _data(n=400, n_queries=300)
    small = KNNVoter(7, index="flat", voting="softmax", batch_size=32).fit(X, y)
    whole = KNNVoter(7, index="flat", voting="softmax", batch_size=4096).fit(X, y)
    np.testing.assert_array_equal(small.predict_proba(Q), whole.predict_proba(Q))
    np.testing.assert_array_equal(small.predict(Q), whole.predict(Q))
    Y = np.column_stack([y, y % 2])
    multi = KNNVoter(7, index="flat", batch_size=32).fit(X, Y)
    one = KNNVoter(7, index="flat").fit(X, Y)
    for a, b in zip(multi.predict_proba(Q), one.predict_proba(Q)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(multi.predict(Q), one.predict(Q))


def test_joint_predict_proba_is_bounded_by_batch_size():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 16)).astype(np.float32)
    y = rng.integers(0, 10, 1000)
    Q = rng.normal(size=(20_000, 16)).astype(np.float32)
    knn = KNNVoter(50, index="flat", batch_size=1024)
    joint = skknn.JointKNNClassifier(knn, max_iter=2).fit(X, y)
    growth, out = _traced_growth(lambda: joint.predict_proba(Q))
    # The head's probabilities and their mix with the kNN's: a few outputs.
    assert growth - 4 * out.nbytes < 12 * 2**20, (growth, out.nbytes)


def test_float16_storage_refuses_values_it_would_keep_as_inf():
    X = np.array([[1.0, 2.0], [7e4, 1.0], [3.0, 3.0]], dtype=np.float32)
    knn = KNNVoter(
        1,
        index="exact",
        preprocessing=None,
        metric="euclidean",
        storage_dtype="float16",
    )
    with pytest.raises(ValueError, match="beyond float16"):
        knn.fit(X, [0, 1, 2])
    knn.fit(X[[0, 2]], [0, 2])
    with pytest.raises(ValueError, match="beyond float16"):
        knn.partial_fit(X[[1]], [1])
    assert knn.memory_.n_samples == 2
    # normalised memories keep unit vectors, which float16 holds
    KNNVoter(1, index="exact", storage_dtype="float16").fit(X, [0, 1, 2])
