"""JOINT's loss, schedule and training (FORMULAS.md 4) in ``skknn.heads._training``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from skknn.heads import _head, _training

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_loss(logits, targets, p, *, alpha, modulation, gamma):
    """FORMULAS.md 4 in float64 NumPy, one sample at a time."""
    losses = []
    for z, t, pn in zip(logits, targets, p):
        z = np.asarray(z, dtype=np.float64)
        ce = math.log(np.exp(z - z.max()).sum()) + z.max() - z[t]
        if modulation == "nll":
            m = 100.0 if pn == 0 else min(-math.log(pn), 100.0)
            losses.append((1.0 + alpha * m) * ce)
        else:
            losses.append((1.0 - pn) ** gamma * ce)
    return float(np.mean(losses))


def blobs(n=1200, d=16, c=6, *, offset=0.0, seed=0, unit=False):
    """Separable Gaussian classes; ``offset`` adds a shared mean, as ReLU features
    have, so that unit-norm rows have small, nearly equal coordinates."""
    g = np.random.default_rng(seed)
    centers = g.normal(scale=3.0, size=(c, d))
    y = g.integers(0, c, size=n)
    X = centers[y] + g.normal(size=(n, d)) + offset
    if unit:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y.astype(np.int64)


def fit(X, y, *, seed=0, p=None, hidden=(), **kw):
    """build_head + train_head as the estimator calls them."""
    g = gen(seed)
    x_mean, x_scale = _head.input_stats(X)
    head = _head.build_head(
        X.shape[1],
        int(y.max()) + 1,
        hidden,
        generator=g,
        x_mean=x_mean,
        x_scale=x_scale,
    )
    p = np.full(len(y), 0.5, np.float32) if p is None else p
    kw.setdefault("alpha", 0.01)
    result = _training.train_head(head, X, y, p, generator=g, device=CPU, **kw)
    return head, result


def accuracy(head, X, y):
    return float((_head.predict_logits(head, X, device=CPU).argmax(1) == y).mean())


# -- loss ---------------------------------------------------------------------


@pytest.fixture
def batch():
    g = np.random.default_rng(3)
    logits = g.normal(scale=2.0, size=(7, 4))
    targets = g.integers(0, 4, size=7)
    p = np.array([0.9, 0.5, 0.1, 1e-3, 1.0, 0.3, 1e-60])
    return logits, targets, p


@pytest.mark.parametrize(
    ("modulation", "alpha", "gamma"),
    [
        ("nll", 0.0, 2.0),
        ("nll", 0.01, 2.0),
        ("nll", 1.0, 2.0),
        ("focal", 0.0, 2.0),
        ("focal", 0.5, 0.5),
        ("focal", 0.0, 5.0),
    ],
)
def test_loss_matches_numpy_reference(batch, modulation, alpha, gamma):
    logits, targets, p = batch
    expected = reference_loss(
        logits, targets, p, alpha=alpha, modulation=modulation, gamma=gamma
    )
    got = _training.knn_weighted_loss(
        torch.tensor(logits),
        torch.tensor(targets),
        torch.tensor(p),
        alpha=alpha,
        modulation=modulation,
        gamma=gamma,
    )
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_focal_has_no_one_plus(batch):
    logits, targets, _ = batch
    ones = torch.ones(len(targets), dtype=torch.float64)
    loss = _training.knn_weighted_loss(
        torch.tensor(logits), torch.tensor(targets), ones, alpha=1.0, modulation="focal"
    )
    assert loss.item() == 0.0


@pytest.mark.parametrize("alpha", [0.01, 1.0])
def test_nll_clamp_at_zero_probability(alpha):
    logits = torch.tensor([[1.0, -0.5, 0.25]], requires_grad=True)
    targets = torch.tensor([2])
    loss = _training.knn_weighted_loss(
        logits, targets, torch.zeros(1), alpha=alpha, modulation="nll"
    )
    ce = F.cross_entropy(logits, targets)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx((1 + alpha * 100) * ce.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_alpha_zero_is_exactly_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(33, 5, generator=g)
    targets = torch.randint(0, 5, (33,), generator=g)
    p = torch.rand(33, generator=g)
    p[0] = 0.0
    loss = _training.knn_weighted_loss(logits, targets, p, alpha=0.0)
    assert torch.equal(loss, F.cross_entropy(logits, targets))


def test_no_gradient_flows_into_p_knn(batch):
    logits, targets, p = batch
    p_t = torch.tensor(p, requires_grad=True)
    z = torch.tensor(logits, requires_grad=True)
    _training.knn_weighted_loss(z, torch.tensor(targets), p_t, alpha=0.5).backward()
    assert p_t.grad is None
    assert z.grad is not None


def test_loss_rejects_bad_input(batch):
    logits, targets, p = batch
    z, t = torch.tensor(logits), torch.tensor(targets)
    with pytest.raises(ValueError, match="modulation"):
        _training.knn_weighted_loss(z, t, torch.tensor(p), alpha=0.1, modulation="l2")
    with pytest.raises(ValueError, match="p_knn"):
        _training.knn_weighted_loss(z, t, torch.tensor(p[:3]), alpha=0.1)


# -- schedule -----------------------------------------------------------------


def test_lr_schedule():
    kw = {"base_lr": 0.4, "warmup_epochs": 10, "max_epochs": 100}
    assert _training.lr_at(0, **kw) == 0.0
    assert _training.lr_at(2.5, **kw) == pytest.approx(0.1)
    assert _training.lr_at(5, **kw) == pytest.approx(0.2)
    assert _training.lr_at(10, **kw) == pytest.approx(0.4)
    assert _training.lr_at(55, **kw) == pytest.approx(0.2)
    assert _training.lr_at(100, **kw) == 0.0
    assert _training.lr_at(99.999, **kw) == pytest.approx(0.0, abs=1e-8)
    decay = [_training.lr_at(e, **kw) for e in np.linspace(10, 100, 50)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    no_warmup = {"base_lr": 1.0, "warmup_epochs": 0, "max_epochs": 4}
    assert _training.lr_at(0, **no_warmup) == 1.0
    assert _training.lr_at(2, **no_warmup) == pytest.approx(0.5)


# -- train_head ---------------------------------------------------------------


def test_train_head_is_bit_for_bit_repeatable():
    X, y = blobs(300, 8, 3)
    p = np.random.default_rng(0).uniform(0, 1, size=300).astype(np.float32)
    kw = {"p": p, "hidden": (16,), "max_epochs": 4, "batch_size": 32}
    head_a, res_a = fit(X, y, seed=5, **kw)
    _, res_b = fit(X, y, seed=5, **kw)
    _, res_c = fit(X, y, seed=6, **kw)
    assert res_a["loss_curve"] == res_b["loss_curve"]
    for key, value in res_a["state_dict"].items():
        assert torch.equal(value, res_b["state_dict"][key])
        assert torch.equal(value, head_a.state_dict()[key])
    assert not torch.equal(
        res_a["state_dict"]["layers.0.weight"], res_c["state_dict"]["layers.0.weight"]
    )


@pytest.mark.parametrize("unit", [False, True])
def test_train_head_defaults_learn_separable_problem(unit):
    # offset=20 makes unit-norm rows nearly parallel (coordinates ~0.25 +- 0.03),
    # the case where a raw default learning rate would barely move the logits.
    X, y = blobs(2400, 16, 6, offset=20.0 if unit else 0.0, seed=1, unit=unit)
    if not unit:
        X = (X - X.mean(0)) / X.std(0)
    head, res = fit(X[:1800], y[:1800], alpha=0.0)
    assert res["n_epochs"] == _training.DEFAULT_MAX_EPOCHS
    assert res["loss_curve"][-1] < 0.5 * res["loss_curve"][0]
    assert accuracy(head, X[1800:], y[1800:]) > 0.97


def test_best_epoch_has_max_validation_score():
    # Noisy labels make the validation accuracy go up and down between epochs.
    X, y = blobs(600, 8, 4, seed=2)
    g = np.random.default_rng(0)
    flip = g.random(600) < 0.35
    y = np.where(flip, g.integers(0, 4, 600), y)
    head, res = fit(
        X[:400], y[:400], X_val=X[400:], y_val=y[400:], batch_size=16, max_epochs=12
    )
    scores = res["val_scores"]
    assert len(scores) == res["n_epochs"] == 12
    assert len(set(scores)) > 1
    assert res["best_epoch"] == int(np.argmax(scores))
    assert accuracy(head, X[400:], y[400:]) == pytest.approx(max(scores))
    assert head.training is False
    assert next(head.parameters()).device.type == "cpu"


def test_early_stopping():
    X, y = blobs(400, 8, 3, seed=3)
    _, res = fit(
        X[:300],
        y[:300],
        X_val=X[300:],
        y_val=y[300:],
        max_epochs=40,
        n_iter_no_change=3,
    )
    # Separable: validation saturates early, then nothing strictly improves.
    assert res["n_epochs"] == res["best_epoch"] + 4 < 40


def test_weight_decay_spares_biases():
    # focal with p = 1 weighs every sample by 0: the loss gradient is exactly 0 and
    # only weight decay moves the parameters.
    X, y = blobs(200, 6, 3)
    ones = np.ones(200, np.float32)
    for decay in (0.1, 0.0):
        head = _head.build_head(6, 3, (5,), generator=gen(0))
        before = {k: v.clone() for k, v in head.state_dict().items()}
        _training.train_head(
            head,
            X,
            y,
            ones,
            alpha=0.0,
            modulation="focal",
            weight_decay=decay,
            max_epochs=3,
            batch_size=50,
            generator=gen(0),
            device=CPU,
        )
        after = head.state_dict()
        for key in ("layers.0.bias", "layers.2.bias"):
            assert torch.equal(after[key], before[key])
        for key in ("layers.0.weight", "layers.2.weight"):
            shrunk = after[key].norm() < before[key].norm()
            assert shrunk if decay else torch.equal(after[key], before[key])


def test_verbose_shows_progress(capsys):
    X, y = blobs(100, 4, 2)
    fit(X, y, max_epochs=2, verbose=False)
    assert capsys.readouterr().err == ""
    fit(X, y, max_epochs=2, verbose=True)
    assert "loss=" in capsys.readouterr().err


def test_training_restores_thread_count(monkeypatch):
    X, y = blobs(100, 4, 2)
    threads = torch.get_num_threads()
    calls = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    fit(X, y, max_epochs=1)
    assert calls == []  # n_threads=None leaves torch's thread count to the user
    monkeypatch.setattr(torch, "set_num_threads", real_set)
    fit(X, y, max_epochs=1, n_threads=1)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="n_threads"):
        fit(X, y, max_epochs=1, n_threads=0)
    assert torch.get_num_threads() == threads


def test_sample_weight_is_scale_free():
    X, y = blobs(200, 6, 3)
    _, plain = fit(X, y, max_epochs=2, alpha=0.0)
    _, ones = fit(X, y, max_epochs=2, alpha=0.0, sample_weight=np.full(200, 3.0))
    for key, value in plain["state_dict"].items():
        assert torch.allclose(value, ones["state_dict"][key], atol=1e-5)


def test_train_head_rejects_bad_input():
    X, y = blobs(50, 4, 2)
    head = _head.build_head(4, 2, generator=gen())
    with pytest.raises(ValueError, match="class indices"):
        _training.train_head(
            head, X, y + 1, np.ones(50), alpha=0.0, generator=gen(), device=CPU
        )
    with pytest.raises(ValueError, match="p_knn"):
        fit(X, y, p=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="together"):
        fit(X, y, X_val=X)


# -- one_pass -----------------------------------------------------------------


def test_one_pass():
    X, y = blobs(200, 6, 3)
    p = np.full(200, 0.5, np.float32)
    kw = {"alpha": 0.1, "modulation": "nll", "gamma": 2.0, "batch_size": 32}
    kw.update(momentum=0.9, weight_decay=0.0, device=CPU)
    head = _head.build_head(6, 3, generator=gen(0))
    still = {k: v.clone() for k, v in head.state_dict().items()}
    loss = _training.one_pass(head, X, y, p, lr=0.0, generator=gen(1), **kw)
    assert all(torch.equal(v, still[k]) for k, v in head.state_dict().items())
    assert math.isfinite(loss)
    first = _training.one_pass(head, X, y, p, lr=0.05, generator=gen(1), **kw)
    later = _training.one_pass(head, X, y, p, lr=0.05, generator=gen(2), **kw)
    assert later < first
    assert not head.training


def test_small_steps_train_on_one_thread():
    small = _head.build_head(256, 50, generator=gen())
    large = _head.build_head(512, 100, hidden_layer_sizes=(512,), generator=gen())
    assert _training.threads_for(small, 512) == 1  # 6.6 M multiply-adds
    assert _training.threads_for(large, 512) is None  # 160 M: torch's count
