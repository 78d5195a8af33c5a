"""KNNVoter: equivalences, the memory's life cycle and its errors."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skknn import KNNVoter
from tests.conftest import ENGINES, HAS_FAISS, stored
from tests.voting.test_voting import reference_vote

needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")


def brute_force(X, Q, k, metric, preprocessing, mean=None):
    """Ten-line reference: pre-process, all distances, stable top-k."""

    def prep(A):
        A = np.asarray(A, dtype=np.float64)
        if preprocessing == "center_l2":
            A = A - mean
        if preprocessing is not None or metric == "cosine":
            n = np.linalg.norm(A, axis=1, keepdims=True)
            A = A / np.where(n == 0, 1, n)
        return A

    Xp, Qp = prep(X), prep(Q)
    if metric == "cosine":
        D = 1 - Qp @ Xp.T
    else:
        D = ((Qp[:, None, :] - Xp[None]) ** 2).sum(-1)
        D = np.sqrt(D) if metric == "euclidean" else D
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, 1), idx


def snapshot(est):
    mem = stored(est.memory_)
    return (
        mem.vectors,
        mem.labels,
        mem.ids,
        est.classes_.copy(),
        mem.reliability,
        est.n_features_in_,
        est.memory_.version,
    )


def assert_unchanged(est, snap):
    for before, after in zip(snap, snapshot(est)):
        np.testing.assert_array_equal(before, after)


# -- equivalences ----------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_plurality_euclidean_equals_sklearn(engine, rng):
    X = rng.normal(size=(300, 6))
    y = rng.integers(0, 4, 300)
    Q = rng.normal(size=(80, 6))
    ours = KNNVoter(
        15, voting="plurality", metric="euclidean", preprocessing=None, index=engine
    ).fit(X, y)
    ref = KNeighborsClassifier(15, weights="uniform", algorithm="brute").fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q), atol=1e-9)
    dist, ids = ours.kneighbors(Q)
    ref_dist, ref_ids = ref.kneighbors(Q)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("metric", "preprocessing"),
    [
        ("cosine", "l2"),
        ("cosine", "center_l2"),
        ("sqeuclidean", None),
        ("sqeuclidean", "l2"),
        ("euclidean", "center_l2"),
    ],
)
@pytest.mark.parametrize("voting", ["plurality", "distance", "softmax", "rank"])
def test_voting_matches_numpy_reference(engine, metric, preprocessing, voting, rng):
    X = rng.normal(loc=0.5, size=(120, 5))
    y = rng.integers(0, 3, 120)
    Q = rng.normal(loc=0.5, size=(30, 5))
    est = KNNVoter(
        7,
        voting=voting,
        metric=metric,
        preprocessing=preprocessing,
        temperature=0.2,
        index=engine,
    ).fit(X, y)
    mean = X.mean(0) if preprocessing == "center_l2" else None
    dist, idx = brute_force(X, Q, 7, metric, preprocessing, mean)
    ref_p, ref_y = reference_vote(dist, y[idx], 3, voting, T=0.2)
    np.testing.assert_allclose(est.predict_proba(Q), ref_p, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(est.predict(Q), ref_y)
    np.testing.assert_array_equal(est.kneighbors(Q)[1], idx)


@pytest.mark.parametrize("engine", ENGINES)
def test_reliability_weights_enter_the_vote(engine, rng):
    X = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, 60)
    Q = rng.normal(size=(20, 4))
    est = KNNVoter(9, voting="rank", index=engine).fit(X, y)
    rel = rng.uniform(0.05, 1.0, 60)
    est.memory_.set_reliability(est.sample_ids_, rel)
    dist, idx = brute_force(X, Q, 9, "cosine", "l2")
    ref_p, ref_y = reference_vote(dist, y[idx], 3, "rank", rel=rel[idx])
    np.testing.assert_allclose(est.predict_proba(Q), ref_p, rtol=1e-5)
    np.testing.assert_array_equal(est.predict(Q), ref_y)


def test_predict_breaks_ties_by_nearest_neighbour():
    X = np.array([[0.0, 1.0], [1.0, 0.0]])
    est = KNNVoter(
        2, voting="plurality", metric="euclidean", preprocessing=None, index="exact"
    ).fit(X, [0, 1])
    # One neighbour per class: tied 1-1, the nearest one (class 1) wins.
    assert est.predict([[0.9, 0.2]])[0] == 1
    assert est.predict([[0.2, 0.9]])[0] == 0
    proba = est.predict_proba([[0.9, 0.2]])
    assert np.argmax(proba) == 1
    assert proba[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("engine", ENGINES)
def test_leave_one_out_with_duplicates_drops_self_by_id(engine):
    base = np.eye(4)
    X = np.vstack([np.repeat(base[:1], 5, 0), base[1:]])  # 5 copies of e0
    y = np.array([0, 0, 0, 0, 0, 1, 2, 3])
    est = KNNVoter(2, index=engine).fit(X, y, sample_ids=np.arange(10, 18))
    dist, ids = est.kneighbors(None, n_neighbors=2)
    assert ids.shape == (8, 2)
    for row, sid in enumerate(range(10, 18)):
        assert sid not in ids[row]
    # Every copy of e0 finds two *other* copies at distance 0.
    assert set(ids[:5].ravel()) <= set(range(10, 15))
    np.testing.assert_allclose(dist[:5], 0.0, atol=1e-6)
    # k = 1 with 5 copies: self may not be among the 2 retrieved; one remains.
    ids1 = est.kneighbors(None, n_neighbors=1, return_distance=False)
    assert ids1.shape == (8, 1)
    assert all(ids1[r, 0] != 10 + r for r in range(8))


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_agree_with_brute_force_on_unit_vectors(engine, rng):
    X = rng.normal(size=(500, 16)).astype(np.float32)
    Q = rng.normal(size=(50, 16)).astype(np.float32)
    est = KNNVoter(10, index=engine).fit(X, np.zeros(500, int))
    _, idx = brute_force(X, Q, 10, "cosine", "l2")
    np.testing.assert_array_equal(est.kneighbors(Q)[1], idx)


@needs_faiss
@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("IVF8,Flat", {"nprobe": 8}),
        ("HNSW16", {"efSearch": 256}),
    ],
)
def test_approximate_indexes_with_exhaustive_knobs_are_exact(factory, params, rng):
    X = rng.normal(size=(800, 16)).astype(np.float32)
    Q = rng.normal(size=(40, 16)).astype(np.float32)
    y = rng.integers(0, 5, 800)
    exact = KNNVoter(10, index="exact").fit(X, y)
    approx = KNNVoter(10, index=factory, index_params=params).fit(X, y)
    np.testing.assert_array_equal(approx.kneighbors(Q)[1], exact.kneighbors(Q)[1])
    np.testing.assert_allclose(
        approx.predict_proba(Q), exact.predict_proba(Q), rtol=1e-5
    )
    approx.unlearn(np.arange(0, 800, 3))
    exact.unlearn(np.arange(0, 800, 3))
    np.testing.assert_array_equal(approx.kneighbors(Q)[1], exact.kneighbors(Q)[1])


@needs_faiss
def test_index_errors_are_clear(rng):
    X = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match=r"not a valid faiss\.index_factory"):
        KNNVoter(index="NoSuchIndex42").fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        KNNVoter(index="HNSW8", index_params={"bogus": 1}).fit(X, np.zeros(20))


# -- growing, shrinking ------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_partial_fit_adds_a_new_class_without_retraining(engine, blobs):
    X, y = blobs
    held = y == 1
    est = KNNVoter(5, index=engine).fit(X[~held], y[~held] + 10)  # labels 10, 12
    assert list(est.classes_) == [10, 12]
    before = est.predict_proba(X[~held])
    # Class 11 sorts between the known ones: stored labels are re-encoded.
    est.partial_fit(X[held][:40], y[held][:40] + 10)
    assert list(est.classes_) == [10, 11, 12]
    assert np.mean(est.predict(X[held][40:]) == 11) > 0.9
    after = est.predict_proba(X[~held])
    np.testing.assert_allclose(after[:, [0, 2]], before, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_repeated_partial_fit_equals_fit(engine, blobs):
    X, y = blobs
    one = KNNVoter(7, preprocessing="center_l2", index=engine).fit(X, y)
    parts = KNNVoter(7, preprocessing="center_l2", index=engine)
    for chunk in np.array_split(np.arange(len(y)), 4):
        parts.partial_fit(X[chunk], y[chunk], classes=[0, 1, 2])
    np.testing.assert_array_equal(parts.sample_ids_, one.sample_ids_)
    # The centre is frozen at the first call, as FORMULAS.md 1 demands.
    np.testing.assert_allclose(parts.mean_, X[:45].mean(0), rtol=1e-5)
    parts_same_mean = KNNVoter(7, preprocessing="l2", index=engine)
    for chunk in np.array_split(np.arange(len(y)), 4):
        parts_same_mean.partial_fit(X[chunk], y[chunk])
    ref = KNNVoter(7, preprocessing="l2", index=engine).fit(X, y)
    np.testing.assert_allclose(parts_same_mean.predict_proba(X), ref.predict_proba(X))


def test_partial_fit_classes_are_known_before_samples(blobs):
    X, y = blobs
    est = KNNVoter(3, index="exact").partial_fit(
        X[y == 0], y[y == 0], classes=[0, 1, 2]
    )
    assert list(est.classes_) == [0, 1, 2]
    proba = est.predict_proba(X[:5])
    assert proba.shape == (5, 3)
    assert np.all(proba[:, 1:] == 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_unlearned_ids_never_return(engine, blobs):
    X, y = blobs
    est = KNNVoter(20, index=engine).fit(X, y, sample_ids=np.arange(1000, 1180))
    gone = np.arange(1000, 1180, 4)
    est.unlearn(gone)
    assert not np.isin(gone, est.sample_ids_).any()
    ids = est.kneighbors(X, n_neighbors=60, return_distance=False)
    assert not np.isin(ids, gone).any()
    assert not np.isin(est.kneighbors(None, return_distance=False), gone).any()
    assert not np.isin(est.explain(X[:10]).neighbor_ids, gone).any()
    # Fresh ids never reuse unlearned ones.
    est.partial_fit(X[:2], y[:2])
    assert est.sample_ids_[-2:].min() >= 1180


@pytest.mark.parametrize("engine", ENGINES + (["IVF4,Flat"] if HAS_FAISS else []))
def test_unlearn_then_save_leaves_no_bytes_of_removed_vectors(engine, tmp_path, rng):
    X = rng.normal(size=(200, 16)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    est = KNNVoter(5, index=engine).fit(X, y)
    removed = np.arange(0, 200, 7)
    prepared = est.memory_.prepare(X)  # as the memory stores them
    stored_bytes = [prepared[i].tobytes() for i in removed]
    raw_bytes = [X[i].tobytes() for i in removed]
    est.unlearn(removed)
    path = tmp_path / "memory.skknn"
    est.save(path)
    blob = path.read_bytes()
    kept = prepared[1].tobytes()
    assert kept in blob  # the check can see vectors at all
    for b in stored_bytes + raw_bytes:
        assert b not in blob
    pkl = tmp_path / "memory.joblib"
    joblib.dump(est, pkl)
    assert not any(b in pkl.read_bytes() for b in stored_bytes)


@needs_faiss
@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF4,PQ4x4"])
def test_unlearn_retrains_the_index_as_a_fresh_fit_would(factory, rng):
    import faiss

    # 1,600 samples: enough that PQ's 16-centroid codebooks train without warnings.
    X = rng.normal(size=(1600, 16)).astype(np.float32)
    y = rng.integers(0, 3, 1600)
    removed = np.arange(0, 1600, 4)
    kept = np.setdiff1d(np.arange(1600), removed)

    def index_bytes(est):
        return est.memory_.engine.state()["faiss_index"].tobytes()

    def centroids(est):
        ivf = faiss.extract_index_ivf(est.memory_.engine.index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    est = KNNVoter(5, index=factory).fit(X, y)
    before = centroids(est)
    est.unlearn(removed)
    fresh = KNNVoter(5, index=factory).fit(X[kept], y[kept], sample_ids=kept)
    assert index_bytes(est) == index_bytes(fresh)
    assert not np.array_equal(centroids(est), before)
    np.testing.assert_array_equal(
        est.kneighbors(X[:20])[1], fresh.kneighbors(X[:20])[1]
    )

    kept_parts = KNNVoter(5, index=factory).fit(X, y)
    kept_parts.unlearn(removed, retrain_index=False)
    np.testing.assert_array_equal(centroids(kept_parts), before)
    assert kept_parts.memory_.n_samples == len(kept)


@needs_faiss
def test_an_ivf_index_waits_for_enough_samples_and_searches_exactly_until_then(rng):
    """IVF16 trains when the memory first holds 39 x 16 = 624 samples; below
    that (fit, partial_fit or unlearn) it searches exactly, as a fresh fit on the
    same samples would."""
    X = rng.normal(size=(1000, 8)).astype(np.float32)
    y = rng.integers(0, 2, 1000)
    Q = rng.normal(size=(30, 8)).astype(np.float32)
    exact = KNNVoter(5, index="exact").fit(X[:300], y[:300])
    est = KNNVoter(5, index="IVF16,Flat", index_params={"nprobe": 1})
    est.fit(X[:300], y[:300])
    assert not est.memory_.engine.ready
    np.testing.assert_array_equal(est.kneighbors(Q)[1], exact.kneighbors(Q)[1])
    est.partial_fit(X[300:600], y[300:600])
    assert not est.memory_.engine.ready  # 600 < 624
    est.partial_fit(X[600:], y[600:])
    assert est.memory_.engine.ready
    assert est.memory_.engine.index.ntotal == 1000
    fresh = KNNVoter(5, index="IVF16,Flat", index_params={"nprobe": 1}).fit(X, y)
    assert (
        est.memory_.engine.state()["faiss_index"].tobytes()
        == fresh.memory_.engine.state()["faiss_index"].tobytes()
    )
    est.unlearn(np.arange(500))  # 500 left: back to exact search
    assert not est.memory_.engine.ready
    kept = KNNVoter(5, index="exact").fit(
        X[500:], y[500:], sample_ids=np.arange(500, 1000)
    )
    np.testing.assert_array_equal(est.kneighbors(Q)[1], kept.kneighbors(Q)[1])
    with pytest.raises(ValueError, match="not built yet"):
        est.tune_index(Q)
    est.set_params(index_params={"nprobe": 4})  # checked now, applied when built
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        est.set_params(index_params={"bogus": 1})


@needs_faiss
def test_unlearn_keeps_trained_parts_with_a_warning_when_retraining_fails(rng):
    import faiss

    # PQ4x8 codebooks have 256 centroids: 100 remaining samples cannot train them,
    # which no check can tell before k-means runs.
    X = rng.normal(size=(400, 16)).astype(np.float32)
    est = KNNVoter(3, index="IVF2,PQ4x8").fit(X, rng.integers(0, 2, 400))
    ivf = faiss.extract_index_ivf(est.memory_.engine.index)
    before = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    with pytest.warns(UserWarning, match="trained parts .* were kept"):
        est.unlearn(np.arange(300))
    assert est.memory_.n_samples == est.memory_.engine.index.ntotal == 100
    ivf = faiss.extract_index_ivf(est.memory_.engine.index)
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), before)
    assert np.isin(
        est.kneighbors(X[:10], return_distance=False), np.arange(300, 400)
    ).all()


# -- explain, persistence, composition ------------------------------------------------
def test_explain_reports_the_vote(blobs):
    X, y = blobs
    est = KNNVoter(5, voting="rank", index="exact").fit(
        X, y, sample_ids=np.arange(180) * 2
    )
    ex = est.explain(X[:4])
    assert ex.neighbor_ids.shape == ex.distances.shape == ex.weights.shape == (4, 5)
    assert np.all(ex.neighbor_ids % 2 == 0)
    np.testing.assert_allclose(ex.weights.sum(1), 1.0)
    np.testing.assert_allclose(
        ex.weights[0], np.array([1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6]) / 1.45
    )
    np.testing.assert_array_equal(ex.neighbor_labels, y[ex.neighbor_ids // 2])
    assert np.all(np.diff(ex.distances, axis=1) >= 0)
    np.testing.assert_array_equal(ex.prediction, est.predict(X[:4]))


@pytest.mark.parametrize("engine", ENGINES)
def test_joblib_and_safe_save_round_trip(engine, blobs, tmp_path):
    import skknn

    X, y = blobs
    est = KNNVoter(5, voting="softmax", preprocessing="center_l2", index=engine)
    est.fit(X, y.astype(str))
    est.unlearn([3, 4])
    joblib.dump(est, tmp_path / "m.joblib")
    est.save(tmp_path / "m.skknn")
    for loaded in (
        joblib.load(tmp_path / "m.joblib"),
        skknn.load(tmp_path / "m.skknn"),
    ):
        np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
        np.testing.assert_array_equal(loaded.sample_ids_, est.sample_ids_)
        assert loaded.get_params() == est.get_params()
        loaded.partial_fit(X[:3], ["0", "1", "new"])  # still editable
        assert "new" in loaded.classes_


def test_save_is_atomic_and_load_refuses_foreign_files(blobs, tmp_path):
    import skknn

    X, y = blobs
    est = KNNVoter(3, index="exact").fit(X, y)
    path = tmp_path / "m.skknn"
    est.save(path)
    good = path.read_bytes()
    bad = KNNVoter(3, voting=lambda d, r: np.ones_like(d), index="exact").fit(X, y)
    with pytest.raises(TypeError, match="callable"):
        bad.save(path)
    assert path.read_bytes() == good
    assert len(list(tmp_path.iterdir())) == 1
    (tmp_path / "junk").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a skknn model file"):
        skknn.load(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        skknn.load(tmp_path / "missing.skknn")


def test_pipeline_and_grid_search(digits):
    X, y, Xt, yt = digits
    pipe = make_pipeline(StandardScaler(), KNNVoter(index="exact"))
    grid = GridSearchCV(
        pipe,
        {"knnvoter__n_neighbors": [1, 10], "knnvoter__voting": ["plurality", "rank"]},
        cv=3,
    )
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert grid.best_estimator_.score(Xt, yt) > 0.9


def test_rank_voting_does_not_decay_with_k_on_real_digits(digits):
    """[VM]'s claim: plurality decays as k grows, rank voting stays (nearly) flat."""
    X, y, Xt, yt = digits
    acc = {}
    for voting in ("plurality", "rank"):
        for k in (10, 100):
            acc[voting, k] = (
                KNNVoter(k, voting=voting, index="exact").fit(X, y).score(Xt, yt)
            )
    drop_plurality = acc["plurality", 10] - acc["plurality", 100]
    drop_rank = acc["rank", 10] - acc["rank", 100]
    assert drop_plurality > 0.03
    assert drop_rank < drop_plurality / 3
    assert acc["rank", 100] > acc["plurality", 100] + 0.03


def test_zero_vector_stays_zero():
    est = KNNVoter(1, index="exact").fit([[0.0, 0.0], [1.0, 0.0]], [0, 1])
    np.testing.assert_array_equal(stored(est.memory_).vectors[0], [0.0, 0.0])
    # A zero query has no direction: every unit vector is equally far from it,
    # so the answer is uniform (and the first class), not whichever ties came up.
    proba = est.predict_proba([[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(proba[1], [0.5, 0.5])
    assert est.predict([[0.0, 0.0]])[0] == 0
    assert np.all(est.explain([[0.0, 0.0]]).weights == 0.0)
    plain = KNNVoter(1, metric="sqeuclidean", preprocessing=None, index="exact")
    plain.fit([[0.0, 0.0], [1.0, 0.0]], [0, 1])
    np.testing.assert_array_equal(plain.predict([[0.0, 0.0]]), [0])


@pytest.mark.requires_cuda
@pytest.mark.parametrize("engine", ENGINES)
def test_cuda_matches_cpu(engine, blobs):
    X, y = blobs
    cpu = KNNVoter(9, index=engine, device="cpu").fit(X, y)
    gpu = KNNVoter(9, index=engine, device="cuda").fit(X, y)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-4)
    gpu.unlearn([0, 1])
    cpu.unlearn([0, 1])
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-4)


def test_cuda_request_without_cuda_is_an_error(monkeypatch, blobs):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, y = blobs
    with pytest.raises(ValueError, match="CUDA is not available"):
        KNNVoter(device="cuda").fit(X, y)


def test_model_fitted_on_gpu_loads_on_cpu(monkeypatch, blobs, tmp_path):
    """A GPU-fitted memory (device_ saved as cuda) loads on a CPU box, warning."""
    import torch

    import skknn

    X, y = blobs
    est = KNNVoter(5, index="exact").fit(X, y)
    est.memory_.backend.device = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(skknn.DeviceWarning):
        loaded = joblib.load(_dump(est, tmp_path))
    assert loaded.device_.type == "cpu"
    est.memory_.backend.device = torch.device("cpu")
    np.testing.assert_allclose(loaded.predict_proba(X), est.predict_proba(X))


def _dump(est, tmp_path):
    path = tmp_path / "gpu.joblib"
    joblib.dump(est, path)
    return path


# -- errors leave the memory untouched ------------------------------------------------
@pytest.fixture
def fitted(blobs):
    X, y = blobs
    return KNNVoter(5, index="exact").fit(X, y), X, y


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (
            lambda e, X, y: e.partial_fit(np.where(X == X[0, 0], np.nan, X), y),
            ValueError,
            "NaN",
        ),
        (
            lambda e, X, y: e.partial_fit(np.full_like(X, np.inf), y),
            ValueError,
            "infinity",
        ),
        (lambda e, X, y: e.partial_fit(X[:, :3], y), ValueError, "features"),
        (lambda e, X, y: e.partial_fit(X[:0], y[:0]), ValueError, "minimum of 1"),
        (lambda e, X, y: e.partial_fit(X[:2], ["a", "b"]), TypeError, "one type"),
        (
            lambda e, X, y: e.partial_fit(X[:2], y[:2], sample_ids=[0, 1]),
            ValueError,
            "already in memory",
        ),
        (
            lambda e, X, y: e.partial_fit(X[:2], y[:2], sample_ids=[500, 500]),
            ValueError,
            "unique",
        ),
        # A failed fit changes nothing, n_features_in_ included (ids are checked
        # after validate_data has already seen the narrower X).
        (
            lambda e, X, y: e.fit(X[:, :3], y, sample_ids=np.zeros(len(y), int)),
            ValueError,
            "unique",
        ),
        (
            lambda e, X, y: e.partial_fit(X[:2], y[:2], sample_ids=[-5, 7000]),
            ValueError,
            r"\[0, 2\*\*63 - 1\]",
        ),
        (lambda e, X, y: e.unlearn([0, 99999]), ValueError, "not in memory"),
        (lambda e, X, y: e.unlearn([3, 3]), ValueError, "unique"),
        (
            lambda e, X, y: e.set_params(n_neighbors=0).predict(X),
            ValueError,
            "n_neighbors",
        ),
        (
            lambda e, X, y: e.set_params(voting="majority").predict(X),
            ValueError,
            "voting",
        ),
        (
            lambda e, X, y: e.set_params(temperature=0.0).predict(X),
            ValueError,
            "temperature",
        ),
        (
            lambda e, X, y: e.set_params(temperature=-1).partial_fit(X[:2], y[:2]),
            ValueError,
            "temperature",
        ),
        (
            lambda e, X, y: e.set_params(metric="cosine", index="flat").partial_fit(
                X, y
            ),
            ValueError,
            "take effect only through fit",
        ),
        # Changed after fit, memory-shaping parameters refuse every use.
        (
            lambda e, X, y: e.set_params(preprocessing=None).predict(X),
            ValueError,
            r"preprocessing='l2' -> None",
        ),
        (
            lambda e, X, y: e.set_params(metric="sqeuclidean").kneighbors(),
            ValueError,
            "metric='cosine' -> 'sqeuclidean'",
        ),
        (
            lambda e, X, y: e.set_params(index_params={"nprobe": 2}).predict(X),
            ValueError,
            "takes no index_params",
        ),
        (
            lambda e, X, y: e.predict(np.full((2, X.shape[1]), np.nan)),
            ValueError,
            "NaN",
        ),
        (lambda e, X, y: e.predict(X[:, :2]), ValueError, "features"),
        (lambda e, X, y: e.kneighbors(X, n_neighbors=0), ValueError, "n_neighbors"),
    ],
)
def test_bad_input_is_refused_and_memory_unchanged(fitted, call, err, match):
    est, X, y = fitted
    snap = snapshot(est)
    with pytest.raises(err, match=match):
        call(est, X, y)
    assert_unchanged(est, snap)


def test_mixed_labels_within_one_call_and_fit_errors(blobs):
    X, y = blobs
    with pytest.raises((TypeError, ValueError)):
        KNNVoter().fit(X[:4], np.array(["a", 1, "b", 2], dtype=object))
    with pytest.raises(ValueError, match="voting"):
        KNNVoter(voting="bogus").fit(X, y)
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNVoter(n_neighbors=0).fit(X, y)
    with pytest.raises(ValueError, match="preprocessing"):
        KNNVoter(preprocessing="zscore").fit(X, y)


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        KNNVoter().predict([[0.0, 1.0]])
    with pytest.raises(NotFittedError):
        KNNVoter().unlearn([0])


@needs_faiss
def test_index_params_changed_after_fit_take_effect(rng):
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    y = rng.integers(0, 4, 2000)
    Q = rng.normal(size=(200, 16)).astype(np.float32)
    exact = KNNVoter(20, index="flat").fit(X, y).kneighbors(Q)[1]
    knn = KNNVoter(20, index="IVF32,Flat", index_params={"nprobe": 1}).fit(X, y)

    def recall():
        ids = knn.kneighbors(Q)[1]
        return np.mean([np.isin(a, b).mean() for a, b in zip(ids, exact)])

    low = recall()
    version = knn.memory_.version
    knn.set_params(index_params={"nprobe": 32})  # every list: exact
    assert recall() == 1.0 > low
    assert knn.memory_.version == version + 1  # results changed: a new state
    with pytest.raises(ValueError, match="no parameter 'efSearch'"):
        knn.set_params(index_params={"efSearch": 8}).predict(Q)
    knn.set_params(index_params={"nprobe": 32})
    assert recall() == 1.0  # the failed change left the index as it was


def test_flat_and_exact_indexes_refuse_index_params(blobs):
    X, y = blobs
    for index in ENGINES:
        with pytest.raises(ValueError, match="takes no index_params"):
            KNNVoter(index=index, index_params={"nprobe": 4}).fit(X, y)


def test_a_one_over_distance_callable_handles_exact_matches(blobs):
    """sklearn's weights="distance": a query that coincides with memory samples
    is decided by them alone (skknn's own "distance" rule is exp(-d) ** p)."""
    X, y = blobs
    knn = KNNVoter(
        5,
        voting=lambda d, r: 1.0 / d,
        metric="euclidean",
        preprocessing=None,
        index="exact",
    ).fit(X, y)
    ref = KNeighborsClassifier(5, weights="distance").fit(X, y)
    Q = np.r_[X[:10], X[10:20] + 0.05]  # ten exact matches, ten near ones
    np.testing.assert_allclose(knn.predict_proba(Q)[:10], np.eye(3)[y[:10]])
    np.testing.assert_allclose(knn.predict_proba(Q), ref.predict_proba(Q), rtol=1e-5)


def test_sample_weight_multiplies_each_vote():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, 60)
    Q = rng.normal(size=(15, 4))
    w = rng.uniform(0.2, 3.0, 60)
    est = KNNVoter(7, voting="rank", index="exact").fit(X, y, sample_weight=w)
    dist, idx = brute_force(X, Q, 7, "cosine", "l2")
    ref_p, ref_y = reference_vote(dist, y[idx], 3, "rank", rel=w[idx])
    np.testing.assert_allclose(est.predict_proba(Q), ref_p, rtol=1e-5)
    np.testing.assert_array_equal(est.predict(Q), ref_y)
    # Composes with pruning's reliability: the vote uses their product.
    rel = rng.uniform(0.1, 1.0, 60)
    est.memory_.set_reliability(est.sample_ids_, rel)
    ref_p, _ = reference_vote(dist, y[idx], 3, "rank", rel=(w * rel)[idx])
    np.testing.assert_allclose(est.predict_proba(Q), ref_p, rtol=1e-5)
    # partial_fit takes them too; bad weights are refused before any change.
    est.partial_fit(X[:2], y[:2], sample_weight=[2.0, 2.0])
    for bad in ([-1.0, 1.0], [np.nan, 1.0], [1.0]):
        with pytest.raises(ValueError, match="sample_weight"):
            est.partial_fit(X[:2], y[:2], sample_weight=bad)
    assert est.memory_.n_samples == 62
    # A zero weight means the sample is absent (sklearn's convention).
    est.partial_fit(X[:2], y[:2], sample_weight=[0.0, 1.0])
    assert est.memory_.n_samples == 63


@needs_faiss
@pytest.mark.parametrize("factory", ["HNSW16", "IVF8,Flat"])
def test_unlearn_equals_a_fresh_fit_for_graph_and_inverted_indexes(factory, rng):
    X = rng.normal(size=(600, 8)).astype(np.float32)
    y = rng.integers(0, 3, 600)
    removed = np.arange(0, 600, 3)
    kept = np.setdiff1d(np.arange(600), removed)
    est = KNNVoter(5, index=factory).fit(X, y).unlearn(removed)
    fresh = KNNVoter(5, index=factory).fit(X[kept], y[kept], sample_ids=kept)
    state = est.memory_.engine.state()["faiss_index"].tobytes()
    assert state == fresh.memory_.engine.state()["faiss_index"].tobytes()
    Q = rng.normal(size=(30, 8)).astype(np.float32)
    np.testing.assert_array_equal(est.kneighbors(Q)[1], fresh.kneighbors(Q)[1])


@needs_faiss
def test_index_params_apply_in_set_params_not_in_a_read(rng):
    X = rng.normal(size=(600, 8)).astype(np.float32)
    knn = KNNVoter(5, index="IVF8,Flat").fit(X, np.arange(600) % 3)
    knn.set_params(index_params={"nprobe": 8})
    with knn.memory_.reading():  # a read never edits: this used to deadlock-raise
        knn.predict(X[:5])
    knn.index_params = {"nprobe": 2}  # behind set_params' back
    with pytest.raises(ValueError, match="without set_params"):
        knn.predict(X[:5])


@needs_faiss
@pytest.mark.parametrize(
    ("factory", "knob", "value"),
    [("IVF8,Flat", "nprobe", 8), ("HNSW8", "efSearch", 64)],
)
def test_dropping_a_knob_puts_faiss_default_back(factory, knob, value, rng):
    import faiss

    X = rng.normal(size=(600, 8)).astype(np.float32)
    knn = KNNVoter(5, index=factory, index_params={knob: value}).fit(
        X, np.arange(600) % 3
    )
    fresh = KNNVoter(5, index=factory).fit(X, np.arange(600) % 3)

    def current(est):
        index = est.memory_.engine.index
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            return ivf.nprobe
        return faiss.downcast_index(index.index).hnsw.efSearch

    assert current(knn) == value != current(fresh)
    knn.set_params(index_params=None)
    assert current(knn) == current(fresh)
    np.testing.assert_array_equal(
        knn.kneighbors(X[:20])[1], fresh.kneighbors(X[:20])[1]
    )


def test_residual_queries_find_the_second_concept(rng):
    """q = concept A + some of concept B: its neighbours are A's; the residual
    phi(q) - phi(n1) points to B (FORMULAS.md 7, compositionality probe)."""
    centers = np.eye(16, dtype=np.float32)[:3] * 10
    y = np.repeat(np.arange(3), 50)
    X = centers[y] + rng.normal(scale=0.3, size=(150, 16)).astype(np.float32)
    knn = KNNVoter(5, index="exact").fit(X, y)
    Q = centers[0] + 0.6 * centers[1] + rng.normal(scale=0.1, size=(10, 16))
    ex = knn.explain(Q, residual=True)
    assert (ex.neighbor_labels == 0).all()
    assert ex.residual_labels.shape == ex.neighbor_labels.shape
    assert np.mean(ex.residual_labels == 1) > 0.9
    # The residual is built in the memory's own space, then searched as given.
    store = knn.memory_
    q = store.prepare(Q[:1]) - store.get(ex.neighbor_ids[0, :1], prepared=True).X
    q /= np.linalg.norm(q)
    d = 1.0 - stored(store).vectors @ q[0]
    np.testing.assert_allclose(ex.residual_distances[0], np.sort(d)[:5], atol=1e-5)
