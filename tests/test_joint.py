"""JointKNNClassifier: interpolation, training with kNN guidance, the life cycle."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from skknn import JointKNNClassifier, KNNVoter
from skknn.heads import _training


def small_joint(**kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("max_epochs", 10)
    kw.setdefault("knn", KNNVoter(5, index="exact"))
    return JointKNNClassifier(**kw)


def few_shot(X, y, per_class, seed):
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [
            rng.choice(np.flatnonzero(y == c), per_class, replace=False)
            for c in np.unique(y)
        ]
    )
    return train, np.setdiff1d(np.arange(len(y)), train)


def test_interpolation_endpoints(blobs):
    X, y = blobs
    knn_only = small_joint(interpolation=1.0).fit(X, y)
    voter = KNNVoter(5, index="exact").fit(X, y)
    np.testing.assert_array_equal(knn_only.predict_proba(X), voter.predict_proba(X))
    np.testing.assert_array_equal(knn_only.predict(X), voter.predict(X))

    head_only = small_joint(interpolation=0.0).fit(X, y)
    with torch.no_grad():
        logits = head_only.head_(torch.from_numpy(X)).double()
    ref = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(head_only.predict_proba(X), ref, rtol=1e-5, atol=1e-7)

    mid = small_joint(interpolation=0.3).fit(X, y)
    np.testing.assert_allclose(
        mid.predict_proba(X),
        0.3 * voter.predict_proba(X) + 0.7 * head_only.predict_proba(X),
        rtol=1e-6,
    )
    np.testing.assert_allclose(np.exp(mid.decision_function(X)), mid.predict_proba(X))


def test_training_proba_is_leave_one_out(blobs):
    X, y = blobs
    clf = small_joint().fit(X, y)
    voter = KNNVoter(5, index="exact").fit(X, y)
    _dist, ids = voter.kneighbors(None)
    assert not np.any(ids == np.arange(len(y))[:, None])  # self never votes
    loo = voter.loo_proba()[np.arange(len(y)), y]
    np.testing.assert_allclose(clf.knn_train_proba_, loo, rtol=1e-6)
    assert clf.knn_train_proba_.min() < 1.0  # some samples are hard for the memory


def test_plain_cross_entropy_skips_the_leave_one_out_search(
    blobs, monkeypatch, tmp_path
):
    import skknn

    X, y = blobs
    # The reference: the same fit with p_kNN computed and handed to the loop.
    monkeypatch.setattr(JointKNNClassifier, "_uses_p_knn", lambda self: True)
    ref = small_joint(alpha=0.0).fit(X[:150], y[:150]).partial_fit(X[150:], y[150:])
    assert ref.knn_train_proba_ is not None
    monkeypatch.undo()

    def no_loo(self, sample_ids=None):
        raise AssertionError("leave-one-out search with alpha=0")

    monkeypatch.setattr(KNNVoter, "loo_proba", no_loo)
    clf = small_joint(alpha=0.0).fit(X[:150], y[:150]).partial_fit(X[150:], y[150:])
    assert clf.knn_train_proba_ is None
    for (k, a), (_, b) in zip(
        clf.head_.state_dict().items(), ref.head_.state_dict().items()
    ):
        assert torch.equal(a, b), k  # the weights ignore p_kNN when alpha=0
    clf.save(tmp_path / "m.skknn")
    loaded = skknn.load(tmp_path / "m.skknn")
    assert loaded.knn_train_proba_ is None
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    loaded.unlearn([0, 1], retrain=False)
    assert loaded.knn_train_proba_ is None
    # A loss that uses p_kNN does search.
    monkeypatch.undo()
    assert (
        small_joint(modulation="focal", alpha=0.0).fit(X, y).knn_train_proba_
        is not None
    )


def test_fit_is_bit_for_bit_repeatable(blobs):
    X, y = blobs
    a = small_joint(random_state=3).fit(X, y)
    b = small_joint(random_state=3).fit(X, y)
    for (ka, va), (kb, vb) in zip(
        a.head_.state_dict().items(), b.head_.state_dict().items()
    ):
        assert ka == kb
        assert torch.equal(va, vb)
    # L-BFGS solves a convex problem: the seed cannot matter; SGD's does.
    c, f = (small_joint(solver="lbfgs", random_state=s).fit(X, y) for s in (3, 4))
    assert torch.equal(
        c.head_.state_dict()["layers.0.weight"], f.head_.state_dict()["layers.0.weight"]
    )
    d, e = (small_joint(solver="sgd", random_state=s).fit(X, y) for s in (3, 4))
    assert not torch.equal(
        d.head_.state_dict()["layers.0.weight"], e.head_.state_dict()["layers.0.weight"]
    )


def test_alpha_zero_is_plain_cross_entropy(blobs, monkeypatch):
    """With alpha=0 the kNN probabilities cannot influence training."""
    X, y = blobs
    a = small_joint(alpha=0.0).fit(X, y)
    b = JointKNNClassifier(
        KNNVoter(1, index="exact"), alpha=0.0, random_state=0, max_epochs=10
    ).fit(X, y)
    for va, vb in zip(a.head_.state_dict().values(), b.head_.state_dict().values()):
        assert torch.equal(va, vb)
    c = small_joint(alpha=1.0).fit(X, y)
    assert not torch.equal(
        a.head_.state_dict()["layers.0.weight"], c.head_.state_dict()["layers.0.weight"]
    )


def test_joint_beats_base_in_low_data_regime_on_real_digits(digits):
    """[NN]'s claim where the head is weak: JOINT >= BASE, averaged over seeds."""
    X, y, Xt, yt = digits
    X, Xt = X / 16.0, Xt / 16.0
    scores = {"knn": [], "BASE": [], "JOINT-INF": [], "JOINT": []}
    settings = {
        "knn": {"interpolation": 1.0},
        "BASE": {"alpha": 0.0, "interpolation": 0.0},
        "JOINT-INF": {"alpha": 0.0},
        "JOINT": {},
    }
    for seed in range(3):
        train, _ = few_shot(X, y, 5, seed)
        for name, kw in settings.items():
            clf = JointKNNClassifier(random_state=seed, **kw).fit(X[train], y[train])
            scores[name].append(clf.score(Xt, yt))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["JOINT"] >= mean["BASE"]
    assert mean["JOINT-INF"] >= mean["BASE"]


def test_grid_search_over_joint_and_nested_knn(digits):
    X, y, _, _ = digits
    grid = GridSearchCV(
        small_joint(max_epochs=3),
        {
            "alpha": [0.0, 0.01],
            "interpolation": [0.5, 0.9],
            "knn__n_neighbors": [3, 10],
        },
        cv=2,
    )
    grid.fit(X[:300] / 16, y[:300])
    assert len(grid.cv_results_["params"]) == 8
    assert grid.best_score_ > 0.8
    assert grid.best_estimator_.knn_.n_neighbors in (3, 10)


def test_partial_fit_adds_a_class_and_keeps_old_rows(blobs):
    X, y = blobs
    clf = small_joint().fit(X[y != 1], y[y != 1] * 10)  # classes 0, 20
    old_w = clf.head_.output_layer.weight.detach().clone()
    new = np.flatnonzero(y == 1)
    clf.partial_fit(X[new[:30]], np.full(30, 10))  # class 10 sorts in between
    assert list(clf.classes_) == [0, 10, 20]
    w = clf.head_.output_layer.weight.detach()
    assert w.shape[0] == 3
    # The pass moved the old rows a little, but they are the old rows, in place.
    assert torch.allclose(w[[0, 2]], old_w, atol=0.5)
    assert np.mean(clf.predict(X[new[30:]]) == 10) > 0.8
    assert clf.knn_.memory_.n_samples == (y != 1).sum() + 30


def test_partial_fit_from_scratch_with_classes(blobs):
    X, y = blobs
    clf = small_joint()
    clf.partial_fit(X[y == 0], y[y == 0], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2]
    assert clf.predict_proba(X[:2]).shape == (2, 3)
    clf.partial_fit(X[y != 0], y[y != 0])
    assert clf.score(X, y) > 0.8


def test_unlearn_with_retraining_equals_fresh_fit(blobs):
    X, y = blobs
    clf = small_joint(knn=KNNVoter(5, preprocessing="center_l2", index="exact")).fit(
        X, y
    )
    removed = np.arange(0, 180, 5)
    clf.unlearn(removed)
    keep = np.setdiff1d(np.arange(180), removed)
    fresh = small_joint(knn=KNNVoter(5, preprocessing="center_l2", index="exact")).fit(
        X[keep], y[keep], sample_ids=keep
    )
    # The memory gives back the raw vectors to float32 rounding (it keeps the
    # normalised ones and their lengths), so the refit matches to that rounding.
    np.testing.assert_allclose(clf.predict_proba(X), fresh.predict_proba(X), rtol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), fresh.predict(X))
    np.testing.assert_array_equal(clf.knn_.sample_ids_, keep)
    np.testing.assert_allclose(clf.knn_.mean_, X[keep].mean(0), rtol=1e-5)


def test_unlearn_without_retraining_only_forgets_in_memory(blobs):
    X, y = blobs
    clf = small_joint().fit(X, y)
    before = {k: v.clone() for k, v in clf.head_.state_dict().items()}
    clf.unlearn([0, 1, 2], retrain=False)
    assert not np.isin([0, 1, 2], clf.knn_.sample_ids_).any()
    for k, v in clf.head_.state_dict().items():
        assert torch.equal(v, before[k])
    assert clf.knn_.memory_.n_samples == 177
    assert clf.knn_train_proba_.shape == (177,)


def test_the_memory_is_the_only_copy_of_the_training_set(blobs):
    X, y = blobs
    clf = small_joint().fit(X, y)
    big = [
        name
        for name, value in vars(clf).items()
        if isinstance(value, np.ndarray) and value.size >= X.size
    ]
    assert big == []
    clf.unlearn([0, 1])  # retrains from the memory's own vectors
    assert clf.knn_.memory_.n_samples == 178


def test_persistence_round_trips(blobs, tmp_path):
    import skknn

    X, y = blobs
    clf = small_joint(hidden_layer_sizes=(16,)).fit(X, y.astype(str))
    joblib.dump(clf, tmp_path / "j.joblib")
    clf.save(tmp_path / "j.skknn")
    for loaded in (
        joblib.load(tmp_path / "j.joblib"),
        skknn.load(tmp_path / "j.skknn"),
    ):
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        assert loaded.get_params()["hidden_layer_sizes"] == (16,)
        loaded.unlearn([0, 1])  # still fully usable: retrains from its stored data
        assert loaded.knn_.memory_.n_samples == 178


def test_gpu_trained_model_loads_on_cpu(blobs, tmp_path, monkeypatch):
    import skknn

    X, y = blobs
    clf = small_joint().fit(X, y)
    clf.device_ = torch.device("cuda:0")  # the head, as if trained on a GPU
    joblib.dump(clf, tmp_path / "gpu.joblib")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(skknn.DeviceWarning):
        loaded = joblib.load(tmp_path / "gpu.joblib")
    assert loaded.device_.type == "cpu"
    clf.device_ = torch.device("cpu")
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


@pytest.mark.requires_cuda
def test_cuda_training_matches_cpu_closely(blobs):
    X, y = blobs
    cpu = small_joint(device="cpu").fit(X, y)
    gpu = small_joint(device="cuda").fit(X, y)
    assert np.mean(cpu.predict(X) == gpu.predict(X)) > 0.95


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"interpolation": 1.5}, "interpolation"),
        ({"interpolation": -0.1}, "interpolation"),
        ({"modulation": "hinge"}, "modulation"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"knn": "kNN"}, "knn"),
    ],
)
def test_bad_parameters(params, match, blobs):
    X, y = blobs
    with pytest.raises((ValueError, TypeError), match=match):
        small_joint(**params).fit(X, y)


def test_bad_input(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="at least 2 classes"):
        small_joint().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="NaN"):
        small_joint().fit(np.where(X > 2, np.nan, X), y)
    clf = small_joint().fit(X, y)
    n = clf.knn_.memory_.n_samples
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :2])
    with pytest.raises(ValueError, match="not in memory"):
        clf.unlearn([10_000])
    with pytest.raises(TypeError, match="one type"):
        clf.partial_fit(X[:2], ["a", "b"])
    assert clf.knn_.memory_.n_samples == n
    assert len(clf.knn_train_proba_) == n


def test_validation_fraction_selects_best_epoch(blobs):
    X, y = blobs
    clf = small_joint(validation_fraction=0.2, max_epochs=8).fit(X, y)
    assert len(clf.validation_scores_) == 8
    assert clf.validation_scores_[clf.best_epoch_] == max(clf.validation_scores_)


def test_nested_parameters_work_with_the_default_knn(blobs):
    from sklearn.model_selection import GridSearchCV

    X, y = blobs
    clf = JointKNNClassifier(max_epochs=2).set_params(knn__n_neighbors=5)
    assert clf.knn.n_neighbors == 5
    assert clf.knn.voting == "softmax"  # the default kNN, made explicit
    grid = GridSearchCV(
        JointKNNClassifier(max_epochs=2, random_state=0),
        {"knn__n_neighbors": [3, 7]},
        cv=2,
    ).fit(X, y)
    assert grid.best_estimator_.knn_.n_neighbors in (3, 7)


def test_lbfgs_head_is_logistic_regression_on_the_joint_weights(blobs):
    """A linear head by L-BFGS minimises JOINT's loss exactly as sklearn's
    LogisticRegression does with the JOINT weights as sample_weight."""
    from sklearn.linear_model import LogisticRegression

    X, y = blobs
    X = X + np.random.default_rng(0).normal(scale=3.0, size=X.shape)  # overlap
    clf = JointKNNClassifier(
        KNNVoter(5, index="exact"),
        alpha=0.5,
        interpolation=0.0,
        weight_decay=1e-2,
        random_state=0,
        device="cpu",  # solver="auto" picks L-BFGS on the CPU only
    ).fit(X, y)
    assert clf.solver_ == "lbfgs"
    with np.errstate(divide="ignore"):
        m = np.minimum(-np.log(clf.knn_train_proba_.astype(np.float64)), 100.0)
    weights = 1.0 + 0.5 * m  # FORMULAS.md 4, "nll"
    Z = (X - X.mean(0)) / X.std(0)
    ref = LogisticRegression(C=1.0 / (1e-2 * len(y)), max_iter=1000, tol=1e-8)
    ref.fit(Z, y, sample_weight=weights)
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(Z), atol=2e-3)
    np.testing.assert_array_equal(clf.predict(X), ref.predict(Z))
    sgd = JointKNNClassifier(
        KNNVoter(5, index="exact"), solver="sgd", random_state=0
    ).fit(X, y)
    assert sgd.solver_ == "sgd"
    assert len(sgd.loss_curve_) == sgd.max_epochs
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        JointKNNClassifier(solver="lbfgs", hidden_layer_sizes=(8,)).fit(X, y)


def test_a_class_added_by_partial_fit_is_learnt_without_forgetting(digits):
    """Each digit held out of the fit, then 30 of its samples added: JOINT
    recognises the new digits at least as well as the kNN alone (on average
    over the ten) and keeps the old ones (within a point)."""
    X, y, Xt, yt = digits
    recall, knn_recall, kept = [], [], []
    for new in range(10):
        old = y != new
        added = np.flatnonzero(y == new)[:30]
        knn = KNNVoter(voting="softmax", preprocessing="center_l2")
        knn.fit(X[old], y[old]).partial_fit(X[added], y[added])
        joint = JointKNNClassifier(random_state=0).fit(X[old], y[old])
        is_new = yt == new
        before = np.mean(joint.predict(Xt[~is_new]) == yt[~is_new])
        joint.partial_fit(X[added], y[added])
        recall.append(np.mean(joint.predict(Xt[is_new]) == new))
        knn_recall.append(np.mean(knn.predict(Xt[is_new]) == new))
        kept.append(np.mean(joint.predict(Xt[~is_new]) == yt[~is_new]) - before)
    assert np.mean(recall) >= np.mean(knn_recall)
    assert min(recall) > 0.8  # one SGD pass without rehearsal: 0.13 on MNIST
    assert np.mean(kept) >= -0.01


def test_failed_calls_leave_joint_as_it_was(blobs, monkeypatch, tmp_path):
    import skknn

    X, y = blobs
    clf = small_joint().fit(X[:, :4], y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(X, np.zeros(len(y)))
    assert clf.n_features_in_ == 4  # not 8: the failed fit changed nothing
    clf.predict(X[:, :4])
    n, version = clf.memory_.n_samples, len(clf.loss_curve_)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_training, "one_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clf.partial_fit(X[:5, :4] + 0.1, np.array([7, 7, 7, 0, 1]))
    monkeypatch.undo()
    assert clf.memory_.n_samples == n  # the memory forgot the samples again
    assert len(clf.loss_curve_) == version
    assert len(clf.knn_train_proba_) == n
    assert list(clf.classes_) == [0, 1, 2]
    np.testing.assert_allclose(clf.predict_proba(X[:3, :4]).sum(1), 1.0)
    clf.save(tmp_path / "j.skknn")  # consistent, so it saves and loads
    skknn.load(tmp_path / "j.skknn").partial_fit(X[:5, :4] + 0.1, [7, 7, 7, 0, 1])


def test_binary_lbfgs_minimises_the_documented_objective(blobs):
    """Two classes: rows +-d/2 carry wd/2 (|d/2|^2 + |d/2|^2); the fitted
    weights are the minimum of that objective along their own direction."""
    X, y = blobs
    keep = y < 2
    X, y = X[keep], y[keep]
    X = X + np.random.default_rng(0).normal(scale=4.0, size=X.shape)
    clf = JointKNNClassifier(
        KNNVoter(5, index="exact"), alpha=0.0, interpolation=0.0, weight_decay=0.05
    ).fit(X, y)
    head = clf.head_
    W = head.output_layer.weight.detach().clone()
    b = head.output_layer.bias.detach().clone()
    Z = head.standardize(torch.from_numpy(X.astype(np.float32)))
    target = torch.from_numpy(y.astype(np.int64))

    def objective(t):
        logits = Z @ (t * W).T + b
        ce = torch.nn.functional.cross_entropy(logits, target)
        return float(ce + 0.5 * 0.05 * ((t * W) ** 2).sum())

    assert objective(1.0) <= min(objective(0.9), objective(1.1))


def test_feature_names_survive_save_load_and_retraining(blobs, tmp_path):
    pd = pytest.importorskip("pandas")
    import skknn

    X, y = blobs
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    clf = small_joint().fit(frame, y)
    clf.save(tmp_path / "j.skknn")
    loaded = skknn.load(tmp_path / "j.skknn")
    clf.unlearn([0, 1])
    for model in (loaded, clf):
        assert list(model.feature_names_in_) == list(frame.columns)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "X has feature names" warning
            model.predict(frame)


def test_a_validation_fraction_holding_out_nothing_is_refused(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="holds out no sample"):
        small_joint(validation_fraction=0.001, max_epochs=2).fit(X, y)
