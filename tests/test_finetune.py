"""FineTunedJointClassifier: JOINT with a trainable backbone and a refreshed memory.

Small and fast: the seeded ``tiny-cnn`` backbone on 32x32 images made from
sklearn's real 8x8 digits (upscaled), a few epochs. The claim on real data with
EfficientNet-Lite0 is measured by ``benchmarks/bench_finetune.py``; one test here
checks its first half (fine-tuning beats the frozen probe) on MNIST.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

import skknn
from skknn import KNNVoter, TorchFeatureExtractor
from skknn.finetune import FineTunedJointClassifier


@pytest.fixture(scope="module")
def digit_images():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    images = np.kron(X.reshape(-1, 8, 8) / 16.0, np.ones((4, 4))).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    images, y = images[order], y[order]
    return images[:300], y[:300], images[300:500], y[300:500]


def _model(**params):
    defaults = {
        "max_epochs": 3,
        "batch_size": 32,
        "augment": "crop",
        "random_state": 0,
        "knn": KNNVoter(5, voting="softmax", preprocessing="center_l2"),
    }
    return FineTunedJointClassifier(
        TorchFeatureExtractor("tiny-cnn"), **{**defaults, **params}
    )


def _backbone_params(clf):
    return {
        k: v.detach().clone() for k, v in clf.extractor_.model_.state_dict().items()
    }


def test_memory_follows_the_backbone_for_each_refresh_mode(digit_images):
    X, y, Q, _ = digit_images
    pretrained = TorchFeatureExtractor("tiny-cnn").fit(X[:1]).transform(X)
    for mode, refreshes in (("epoch", 4), ("test", 2), ("never", 1)):
        clf = _model(memory_refresh=mode).fit(X, y)
        assert clf.n_memory_refreshes_ == refreshes
        stored = clf.knn_.memory_.get(clf.knn_.sample_ids_).X
        # On CUDA, cuDNN's TF32 convolutions (torch's default) round by the
        # batch's kernel choice: 8e-3 relative at most on an H200.
        tf32 = clf.extractor_.device_.type == "cuda"
        if mode == "never":  # the pretrained backbone serves the memory
            rtol, atol = (1e-2, 3e-4) if tf32 else (1e-5, 1e-5)
            np.testing.assert_allclose(stored, pretrained, rtol=rtol, atol=atol)
        else:  # the memory holds the trained backbone's embeddings
            rtol, atol = (1e-2, 3e-4) if tf32 else (1e-4, 1e-5)
            np.testing.assert_allclose(stored, clf.embed(X), rtol=rtol, atol=atol)
            assert not np.allclose(stored, pretrained, atol=1e-3)
        proba = clf.predict_proba(Q)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
        assert (clf.predict(Q) == clf.classes_[proba.argmax(1)]).all()


def test_p_knn_is_recomputed_from_the_current_backbone_only_with_epoch(
    digit_images, monkeypatch
):
    from skknn import finetune

    X, y, _, _ = digit_images
    seen = []
    original = finetune._p_true

    def spy(knn, codes, ids):
        seen.append(knn.memory_.version)
        return original(knn, codes, ids)

    monkeypatch.setattr(finetune, "_p_true", spy)
    _model(memory_refresh="epoch", max_epochs=3).fit(X, y)
    assert len(seen) == 3
    assert len(set(seen)) == 3
    seen.clear()
    _model(memory_refresh="test", max_epochs=3).fit(X, y)
    assert len(seen) == 1  # JOINT-UT: from the pretrained backbone only


def test_only_the_named_modules_train(digit_images):
    X, y, _, _ = digit_images
    before = TorchFeatureExtractor("tiny-cnn").fit(X[:1]).model_.state_dict()
    names = [
        n
        for n, _ in TorchFeatureExtractor("tiny-cnn").fit(X[:1]).model_.named_children()
    ]
    last = names[-1]
    clf = _model(trainable=[last]).fit(X, y)
    after = _backbone_params(clf)
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (
            key.startswith(last + ".")
            and value.is_floating_point()
            and "running" not in key
            and "num_batches" not in key
        ), key
    probe = _model(trainable=[]).fit(X, y)  # only the head
    assert all(torch.equal(v, _backbone_params(probe)[k]) for k, v in before.items())


def test_a_module_named_with_its_child_trains_once(digit_images):
    X, y, _, _ = digit_images
    # "" is the whole backbone (as in named_modules()); "conv2" lies inside it.
    a = _backbone_params(_model(trainable=[""], max_epochs=1).fit(X, y))
    b = _backbone_params(_model(trainable=["", "conv2"], max_epochs=1).fit(X, y))
    assert not torch.equal(
        a["conv2.weight"],
        _backbone_params(_model(trainable=[], max_epochs=1).fit(X, y))["conv2.weight"],
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_model_on_the_cpu(digit_images):
    X, y, Q, _ = digit_images
    a = _model(random_state=3).fit(X, y)
    b = _model(random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(Q), b.predict_proba(Q))
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    c = _model(random_state=4).fit(X, y)
    assert not np.array_equal(a.predict_proba(Q), c.predict_proba(Q))


def test_interpolation_and_base(digit_images):
    X, y, Q, _ = digit_images
    base = _model(alpha=0.0, interpolation=0.0).fit(X, y)
    knn_only = _model(interpolation=1.0).fit(X, y)
    E = knn_only.embed(Q)
    np.testing.assert_allclose(
        knn_only.predict_proba(Q), knn_only.knn_.predict_proba(E)
    )
    head = base._head_proba(base.embed(Q))
    np.testing.assert_allclose(base.predict_proba(Q), head)


def test_partial_fit_unlearn_and_a_new_class(digit_images):
    X, y, Q, yq = digit_images
    clf = _model().fit(X[y != 9], y[y != 9])
    new = Q[yq == 9]
    clf.partial_fit(new, np.full(len(new), 9), sample_ids=10_000 + np.arange(len(new)))
    assert 9 in clf.classes_
    stored = clf.knn_.memory_.get(10_000 + np.arange(len(new))).X
    np.testing.assert_allclose(stored, clf.embed(new), rtol=1e-4, atol=1e-5)
    proba = clf.predict_proba(new)
    assert proba.shape[1] == 10
    assert (proba[:, -1] > 0).any()
    clf.unlearn(10_000 + np.arange(len(new)))
    assert not np.isin(10_000 + np.arange(len(new)), clf.knn_.sample_ids_).any()


def test_save_and_load_keep_the_trained_backbone_without_pickle(digit_images, tmp_path):
    X, y, Q, _ = digit_images
    for mode in ("epoch", "never"):
        clf = _model(memory_refresh=mode).fit(X, y)
        path = tmp_path / f"ft-{mode}.skknn"
        clf.save(path)
        with zipfile.ZipFile(path) as zf:
            assert all(n.endswith((".npy", ".json")) for n in zf.namelist())
        back = skknn.load(path)
        np.testing.assert_allclose(
            back.predict_proba(Q), clf.predict_proba(Q), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(back.embed(Q), clf.embed(Q), rtol=1e-5, atol=1e-6)


def test_bad_parameters_are_refused(digit_images):
    X, y, _, _ = digit_images
    with pytest.raises(ValueError, match="memory_refresh"):
        _model(memory_refresh="always").fit(X, y)
    with pytest.raises(ValueError, match="augment"):
        _model(augment="rotate").fit(X, y)
    with pytest.raises(ValueError, match="trainable"):
        _model(trainable=["no_such_block"]).fit(X, y)
    with pytest.raises(ValueError, match="in RAM"):
        _model(knn=KNNVoter(backend="dask")).fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction"):
        _model(early_stopping=True, validation_fraction=1.5).fit(X, y)
    with pytest.raises(ValueError, match="n_iter_no_change"):
        _model(early_stopping=True, n_iter_no_change=0).fit(X, y)


def test_divergence_stops_restores_the_best_weights_and_warns(digit_images):
    """An absurd learning rate used to raise (or, finite, to leave a head with
    losses of 1e13): now training stops, the best weights come back, and a
    ConvergenceWarning says so."""
    X, y, Q, _yq = digit_images
    probe = _model(trainable=[]).fit(X, y)  # the linear probe LP-FT starts from
    with pytest.warns(ConvergenceWarning, match="diverged at epoch 1"):
        clf = _model(backbone_lr=1e6, head_lr=1e6, max_epochs=5).fit(X, y)
    assert clf.n_iter_ == 1
    assert clf.best_epoch_ == 0
    assert not clf.history_[-1]["loss"] < 10 * np.log(10)  # nan, inf or huge
    pretrained = TorchFeatureExtractor("tiny-cnn").fit(X[:1]).model_.state_dict()
    for key, value in _backbone_params(clf).items():
        assert torch.equal(value, pretrained[key]), key  # the probe's backbone
    for value in clf.head_.state_dict().values():
        assert torch.isfinite(value).all()
    np.testing.assert_allclose(clf.predict_proba(Q), probe.predict_proba(Q), atol=1e-6)


def test_a_finite_blow_up_is_caught_too(digit_images, monkeypatch):
    """A loss that stays finite but far above the first epoch's (the issue's
    5e9 and 2e13) stops training at that epoch."""
    from skknn import finetune

    X, y, _, _ = digit_images
    real = finetune.FineTunedJointClassifier._epoch
    calls = []

    def exploding(self, run, optimizer, peaks, epoch):
        loss, accuracy = real(self, run, optimizer, peaks, epoch)
        calls.append(epoch)
        return (loss * 1e9 if epoch == 2 else loss), accuracy

    monkeypatch.setattr(finetune.FineTunedJointClassifier, "_epoch", exploding)
    with pytest.warns(ConvergenceWarning, match="diverged at epoch 3"):
        clf = _model(max_epochs=6).fit(X, y)
    assert calls == [0, 1, 2]
    assert clf.n_iter_ == 3
    losses = [h["loss"] for h in clf.history_]
    assert clf.best_epoch_ == 1 + int(np.argmin(losses[:2]))


def test_early_stopping_stops_when_validation_stalls(digit_images):
    X, y, _, _ = digit_images
    # Steps too small to change anything: the validation score stalls at once.
    clf = _model(
        early_stopping=True,
        n_iter_no_change=2,
        max_epochs=8,
        backbone_lr=1e-12,
        head_lr=1e-12,
    ).fit(X, y)
    assert clf.n_iter_ == 2 < 8
    assert clf.best_epoch_ == 0  # the linear probe, measured before any epoch
    assert len(clf.validation_scores_) == 3
    assert all("validation_accuracy" in h for h in clf.history_)
    # The held-out images train nothing but stay in the memory.
    assert len(clf.knn_.sample_ids_) == len(y)
    plain = _model(max_epochs=2).fit(X, y)
    assert plain.n_iter_ == 2
    assert plain.best_epoch_ == 2
    assert plain.validation_scores_ == []


def test_early_stopping_keeps_the_best_validated_epoch(digit_images):
    X, y, _, _ = digit_images
    clf = _model(early_stopping=True, n_iter_no_change=3, max_epochs=4).fit(X, y)
    scores = clf.validation_scores_
    assert 1 <= clf.n_iter_ <= 4
    assert len(scores) == clf.n_iter_ + 1
    assert scores[clf.best_epoch_] == max(scores)


def test_frozen_head_matches_the_standardised_probe_on_dead_columns():
    """EfficientNet-Lite0's default 1280-d embedding of 32 px digits has mostly
    constant (dead) columns. The frozen head used to divide them by 1e-6 and
    reached 0.46 against 0.66 for StandardScaler + LogisticRegression."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    images = np.kron(X.reshape(-1, 8, 8) / 16.0, np.ones((4, 4))).astype(np.float32)
    rng = np.random.default_rng(0)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), 15, replace=False) for c in range(10)]
    )
    test = rng.choice(np.setdiff1d(np.arange(len(y)), train), 300, replace=False)
    extractor = TorchFeatureExtractor("efficientnet-lite0", image_size=32)
    E = extractor.fit(images[:1]).transform(images[np.r_[train, test]])
    assert (E[:150].std(axis=0) == 0).mean() > 0.5  # mostly dead columns
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    acc_probe = probe.fit(E[:150], y[train]).score(E[150:], y[test])
    clf = FineTunedJointClassifier(
        extractor, trainable=[], interpolation=0.0, random_state=0
    ).fit(images[train], y[train])
    for value in clf.head_.state_dict().values():
        assert torch.isfinite(value).all()
    acc_head = clf.score(images[test], y[test])
    assert acc_head >= acc_probe - 0.04, (acc_head, acc_probe)


@pytest.mark.slow
def test_fine_tuning_beats_the_frozen_probe_on_mnist():
    """[NN] A.5's premise on real digits and a real pretrained backbone: training
    the last blocks beats the same head on the frozen backbone (10 per class),
    with the defaults (LP-FT, no augmentation)."""
    from skknn.datasets import load_mnist

    X, y, _ = load_mnist()
    images = X.reshape(-1, 28, 28)
    rng = np.random.default_rng(0)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in range(10)]
    )
    test = rng.choice(np.setdiff1d(np.arange(len(y)), train), 2000, replace=False)
    # The extractor's default embedding (the 1280-d final map): with a pooled
    # mid layer (_blocks.10, 112-d) the probe fits 100 images to zero loss and
    # fine-tuning then has nothing to learn from (tuned == frozen, 0.8585).
    extractor = TorchFeatureExtractor("efficientnet-lite0", image_size=32)
    common = {
        "alpha": 0.0,
        "interpolation": 0.0,
        "memory_refresh": "test",
        "batch_size": 20,
        "random_state": 0,
    }
    frozen = FineTunedJointClassifier(extractor, trainable=[], **common)
    tuned = FineTunedJointClassifier(
        extractor, trainable=["_blocks.9", "_blocks.10"], **common
    )
    acc_frozen = frozen.fit(images[train], y[train]).score(images[test], y[test])
    acc_tuned = tuned.fit(images[train], y[train]).score(images[test], y[test])
    # Same seed and recipe: an untrained backbone would give the same accuracy.
    assert acc_tuned > acc_frozen + 0.005


def test_pickle_keeps_the_trained_backbone(digit_images):
    import pickle

    X, y, Q, _ = digit_images
    clf = _model().fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.embed(Q), clf.embed(Q))
    np.testing.assert_array_equal(back.predict_proba(Q), clf.predict_proba(Q))
    pretrained = TorchFeatureExtractor("tiny-cnn").fit(X[:1]).transform(Q)
    assert not np.allclose(back.embed(Q), pretrained, atol=1e-3)


def test_the_edit_log_records_refreshes_and_the_head(digit_images):
    """Every re-embedding of the memory is a logged edit; an unlearn after the
    training leaves a head that saw the removed images, and the log says so."""
    from skknn.memory.digest import chain_problems

    X, y, _, _ = digit_images
    clf = _model(memory_refresh="epoch").fit(X, y)
    ops = [e["op"] for e in clf.edit_log()]
    refreshes = clf.n_memory_refreshes_ - 1  # the first embedding is the fit
    assert ops == ["fit"] + ["refresh"] * refreshes + ["head"]
    clf.unlearn([3, 4])
    log = clf.edit_log()
    assert log[-1]["op"] == "unlearn"
    assert log[-1]["after"] == clf.memory_digest()
    assert chain_problems(log) == []
