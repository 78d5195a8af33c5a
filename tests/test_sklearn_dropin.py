"""KNNVoter as a drop-in for sklearn's KNeighborsClassifier (issue 23, items 3
and 4): the graph, the attributes, sparse input, zero weights, log-probabilities,
the KNeighborsTransformer contract and sklearn's tie rule."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN, SpectralClustering
from sklearn.datasets import load_digits, load_iris, make_swiss_roll
from sklearn.ensemble import BaggingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE, Isomap
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import (
    KDTree,
    KNeighborsClassifier,
    KNeighborsTransformer,
    NearestNeighbors,
)
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skknn import JointKNNClassifier, KNNTransformer, KNNVoter, MemoryPruner
from tests.conftest import ENGINES

SKLEARN_LIKE = {"metric": "euclidean", "preprocessing": None, "index": "exact"}


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, 60)
    return X, y


def _assert_graphs_equal(ours, theirs):
    assert sp.isspmatrix_csr(ours) or (sp.issparse(ours) and ours.format == "csr")
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-5, atol=1e-5)


# -- kneighbors_graph -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["connectivity", "distance"])
@pytest.mark.parametrize("queries", ["loo", "X"])
def test_kneighbors_graph_equals_sklearn(blobs, mode, queries):
    X, y = blobs
    knn = KNNVoter(4, **SKLEARN_LIKE).fit(X, y)
    ref = NearestNeighbors(n_neighbors=4, metric="euclidean").fit(X)
    Q = None if queries == "loo" else X[:20] + 0.01
    _assert_graphs_equal(
        knn.kneighbors_graph(Q, mode=mode), ref.kneighbors_graph(Q, mode=mode)
    )
    # n_neighbors per call, as sklearn's
    _assert_graphs_equal(
        knn.kneighbors_graph(Q, n_neighbors=2, mode=mode),
        ref.kneighbors_graph(Q, n_neighbors=2, mode=mode),
    )


def test_kneighbors_graph_columns_are_row_positions_not_ids(blobs):
    X, y = blobs
    ids = np.arange(len(y))[::-1] * 10 + 7  # ids unlike positions, unsorted
    knn = KNNVoter(3, **SKLEARN_LIKE).fit(X, y, sample_ids=ids)
    graph = knn.kneighbors_graph(X[:5])
    ref = NearestNeighbors(n_neighbors=3).fit(X).kneighbors_graph(X[:5])
    _assert_graphs_equal(graph, ref)
    # the columns index sample_ids_: the same neighbours as kneighbors' ids
    cols = graph.indices.reshape(5, 3)
    np.testing.assert_array_equal(knn.sample_ids_[cols], knn.kneighbors(X[:5])[1])


def test_kneighbors_graph_bad_mode(blobs):
    X, y = blobs
    knn = KNNVoter(3, **SKLEARN_LIKE).fit(X, y)
    with pytest.raises(ValueError, match="'mode' parameter"):
        knn.kneighbors_graph(mode="weights")


# -- attributes ---------------------------------------------------------------------
def test_sklearn_attributes(blobs):
    X, y = blobs
    knn = KNNVoter(3, **SKLEARN_LIKE).fit(X, y)
    ref = KNeighborsClassifier(3).fit(X, y)
    assert knn.n_samples_fit_ == ref.n_samples_fit_ == 60
    assert knn.effective_metric_ == ref.effective_metric_ == "euclidean"
    assert knn.effective_metric_params_ == {}
    assert knn.outputs_2d_ is ref.outputs_2d_ is False
    assert KNNVoter(3, index="exact").fit(X, y).effective_metric_ == "cosine"
    assert knn.unlearn([0, 1]).n_samples_fit_ == 58
    Y = np.c_[y, y * 2]
    assert KNNVoter(3, index="exact").fit(X, Y).outputs_2d_ is True


# -- sparse input -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_on_exact_engines(blobs, fmt):
    X, y = blobs
    X = np.where(np.abs(X) > 0.8, X, 0.0)  # really sparse
    Xs = sp.csr_matrix(X).asformat(fmt)
    for index in ("exact", "flat"):
        dense = KNNVoter(3, metric="euclidean", preprocessing=None, index=index)
        dense.fit(X, y)
        # small blocks: queries densified a block at a time
        sparse = KNNVoter(
            3, metric="euclidean", preprocessing=None, index=index, batch_size=7
        ).fit(Xs, y)
        np.testing.assert_array_equal(sparse.predict(Xs), dense.predict(X))
        np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X))
        np.testing.assert_array_equal(sparse.kneighbors(Xs)[1], dense.kneighbors(X)[1])
        _assert_graphs_equal(sparse.kneighbors_graph(Xs), dense.kneighbors_graph(X))
        sparse.explain(sp.csr_matrix(X[:3]).asformat(fmt))


def test_sparse_input_refused_clearly_by_approximate_indexes(blobs):
    X, y = blobs
    with pytest.raises(TypeError, match=r"approximate FAISS index.*TruncatedSVD"):
        KNNVoter(3, index="HNSW8").fit(sp.csr_matrix(X), y)
    knn = KNNVoter(3, index="HNSW8").fit(X, y)
    with pytest.raises(TypeError, match="index='exact' or 'flat'"):
        knn.predict(sp.csr_matrix(X))


# -- a fitted NearestNeighbors as X --------------------------------------------------
@pytest.mark.parametrize(
    "make", [lambda X: NearestNeighbors().fit(X), lambda X: KDTree(X)]
)
def test_fitted_neighbors_object_refused_with_what_to_pass(blobs, make):
    X, y = blobs
    with pytest.raises(TypeError, match="pass the array it was fitted on"):
        KNNVoter(3).fit(make(X), y)


# -- zero sample weights --------------------------------------------------------------
def test_zero_weight_means_absent(blobs):
    X, y = blobs
    rng = np.random.default_rng(1)
    w = rng.integers(0, 3, len(y)).astype(float)
    keep = w > 0
    weighted = KNNVoter(5, index="exact").fit(X, y, sample_weight=w)
    subset = KNNVoter(5, index="exact").fit(X[keep], y[keep], sample_weight=w[keep])
    np.testing.assert_array_equal(weighted.sample_ids_, subset.sample_ids_)
    np.testing.assert_array_equal(weighted.predict_proba(X), subset.predict_proba(X))
    assert weighted.n_samples_fit_ == keep.sum()
    # a zero-weight sample is nobody's neighbour
    _, ids = weighted.kneighbors(X)
    assert np.isin(ids, weighted.sample_ids_).all()


def test_zero_weight_labels_still_classes(blobs):
    X, y = blobs
    w = (y != 2).astype(float)  # every sample of class 2 absent
    knn = KNNVoter(5, index="exact").fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(knn.classes_, [0, 1, 2])
    assert np.all(knn.predict_proba(X)[:, 2] == 0)
    ref = LogisticRegression().fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(knn.classes_, ref.classes_)


def test_negative_or_all_zero_weights_refused(blobs):
    X, y = blobs
    w = np.ones(len(y))
    w[3] = -1
    for est in (KNNVoter(3, index="exact"), JointKNNClassifier(max_epochs=2)):
        with pytest.raises(ValueError, match=">= 0"):
            est.fit(X, y, sample_weight=w)
        with pytest.raises(ValueError, match="zero for all"):
            est.fit(X, y, sample_weight=np.zeros(len(y)))


def test_bagging_over_our_estimators():
    X, y = load_iris(return_X_y=True)
    ests = [
        KNNVoter(5, index="exact"),
        JointKNNClassifier(KNNVoter(5, index="exact"), max_epochs=5, random_state=0),
        MemoryPruner(KNNVoter(5, index="exact")),
    ]
    for est in ests:
        bag = BaggingClassifier(est, n_estimators=3, random_state=0).fit(X, y)
        assert bag.score(X, y) > 0.9
        # each member stored only the rows its bootstrap drew
        member = bag.estimators_[0]
        memory = getattr(member, "memory_", None) or member.estimator_.memory_
        assert memory.n_samples < len(y)


def test_joint_zero_weight_means_absent(blobs):
    X, y = blobs
    w = np.ones(len(y))
    w[:10] = 0
    joint = JointKNNClassifier(
        KNNVoter(3, index="exact"), max_epochs=3, random_state=0
    ).fit(X, y, sample_weight=w)
    assert joint.knn_.n_samples_fit_ == 50
    np.testing.assert_array_equal(joint.classes_, np.unique(y))


# -- predict_log_proba ---------------------------------------------------------------
@pytest.mark.parametrize(
    "est",
    [
        KNNVoter(5, index="exact"),
        JointKNNClassifier(KNNVoter(5, index="exact"), max_epochs=3, random_state=0),
        MemoryPruner(KNNVoter(5, index="exact")),
    ],
    ids=["voter", "joint", "pruner"],
)
def test_predict_log_proba(est):
    X, y = load_iris(return_X_y=True)
    est.fit(X, y)
    with np.errstate(divide="ignore"):
        expected = np.log(est.predict_proba(X))
    np.testing.assert_array_equal(est.predict_log_proba(X), expected)
    out = cross_val_predict(est, X, y, cv=3, method="predict_log_proba")
    assert out.shape == (len(y), 3)


# -- KNNTransformer -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["connectivity", "distance"])
def test_transformer_equals_sklearn(blobs, mode):
    X, _ = blobs
    ours = KNNTransformer(mode=mode, n_neighbors=4, index="exact")
    ref = KNeighborsTransformer(mode=mode, n_neighbors=4)
    _assert_graphs_equal(ours.fit_transform(X), ref.fit_transform(X))
    _assert_graphs_equal(ours.transform(X[:7] + 0.1), ref.transform(X[:7] + 0.1))
    per_row = 4 + (mode == "distance")  # sklearn's extra neighbour: self
    assert ours.transform(X).nnz == per_row * len(X)
    assert ours.n_samples_fit_ == len(X)


@pytest.mark.parametrize(
    ("index", "params"), [("exact", None), ("HNSW16", {"efSearch": 64})]
)
def test_transformer_in_precomputed_pipelines(index, params):
    X = make_swiss_roll(150, random_state=0)[0]
    # an approximate index may find fewer than k; efSearch >= k avoids it
    graph = {"n_neighbors": 12, "index": index, "index_params": params}
    emb = make_pipeline(
        KNNTransformer(**graph), Isomap(n_neighbors=12, metric="precomputed")
    ).fit_transform(X)
    assert emb.shape == (150, 2)
    assert np.isfinite(emb).all()
    emb = make_pipeline(
        KNNTransformer(n_neighbors=16, index=index, index_params=params),
        TSNE(
            metric="precomputed",
            init="random",
            perplexity=5,
            max_iter=250,
            random_state=0,
        ),
    ).fit_transform(X)
    assert emb.shape == (150, 2)
    assert np.isfinite(emb).all()
    labels = make_pipeline(
        KNNTransformer(mode="connectivity", **graph),
        SpectralClustering(
            n_clusters=3, affinity="precomputed_nearest_neighbors", random_state=0
        ),
    ).fit_predict(X)
    assert labels.shape == (150,)
    labels = make_pipeline(
        KNNTransformer(**graph), DBSCAN(eps=3.0, min_samples=5, metric="precomputed")
    ).fit_predict(X)
    assert labels.shape == (150,)


def test_transformer_hands_its_memory_parameters_to_its_voter(blobs):
    X, _ = blobs
    # each value differs from both estimators' defaults: a parameter left out
    # would reach the voter as the voter's default
    params = {
        "metric": "sqeuclidean",
        "preprocessing": "center_l2",
        "index": "HNSW16",
        "index_params": {"efSearch": 32},
        "device": "cpu",
        "batch_size": 7,
    }
    knn = KNNTransformer(n_neighbors=2, **params).fit(X).knn_
    assert {name: getattr(knn, name) for name in params} == params
    assert (knn.n_neighbors, knn.voting) == (2, "plurality")


def test_transformer_sparse_input(blobs):
    X, _ = blobs
    Xs = sp.csr_matrix(np.where(np.abs(X) > 0.3, X, 0.0))
    ref = KNeighborsTransformer(n_neighbors=3).fit_transform(Xs)
    _assert_graphs_equal(
        KNNTransformer(n_neighbors=3, index="exact").fit_transform(Xs), ref
    )


@parametrize_with_checks([KNNTransformer(index=e) for e in ENGINES])
def test_transformer_sklearn_compatible(estimator, check):
    check(estimator)


# -- sklearn's tie rule -------------------------------------------------------------
def _boundary_untied(X_train, X_test, k):
    """Queries whose k-th and (k+1)-th neighbours are at different distances
    (exact float64): only there are both libraries' neighbour sets the same
    (at a boundary tie each picks one of the tied samples its own way)."""
    d = ((X_test[:, None, :] - X_train[None]) ** 2).sum(-1)
    d.sort(axis=1)
    return d[:, k - 1] < d[:, k]


def test_tie_break_lowest_reproduces_kneighborsclassifier():
    X, y = load_digits(return_X_y=True)
    X_train, y_train, X_test = X[:1000], y[:1000], X[1000:]
    differed = 0
    for k in (1, 2, 3, 4):
        ok = _boundary_untied(X_train, X_test, k)
        ref = KNeighborsClassifier(k).fit(X_train, y_train).predict(X_test)
        ours = {
            rule: KNNVoter(k, voting="plurality", tie_break=rule, **SKLEARN_LIKE)
            .fit(X_train, y_train)
            .predict(X_test)
            for rule in ("lowest", "nearest")
        }
        np.testing.assert_array_equal(ours["lowest"][ok], ref[ok])
        differed += int(np.sum(ours["nearest"][ok] != ref[ok]))
    assert differed > 0  # the default rule is another rule


def test_tie_break_default_and_validation(blobs):
    X, y = blobs
    assert KNNVoter().tie_break == "nearest"
    with pytest.raises(ValueError, match="'tie_break' parameter"):
        KNNVoter(3, index="exact", tie_break="sklearn").fit(X, y)


def test_tie_break_lowest_on_an_exact_tie():
    # query between a class-1 sample (nearer) and a class-0 sample: 1 vote each
    X = [[0.0], [1.0]]
    knn = KNNVoter(2, voting="plurality", **SKLEARN_LIKE).fit(X, [1, 0])
    assert knn.predict([[0.1]])[0] == 1  # nearest tied neighbour's class
    assert knn.set_params(tie_break="lowest").predict([[0.1]])[0] == 0
    assert KNeighborsClassifier(2).fit(X, [1, 0]).predict([[0.1]])[0] == 0
