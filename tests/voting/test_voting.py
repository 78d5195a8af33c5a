"""The voting rules of FORMULAS.md 3 against plain-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skknn.voting import _rules


def reference_vote(
    dist,
    labels,
    n_classes,
    voting,
    *,
    T=0.07,
    offset=2.0,
    p=1.0,
    rel=None,
    excluded=None,
):
    """One query at a time, loops only: the formulas as written."""
    n, k = dist.shape
    probas, preds = [], []
    for q in range(n):
        voters = [i for i in range(k) if excluded is None or not excluded[q, i]]
        if not voters:
            voters = list(range(k))  # all-excluded fallback
        d0 = min(float(dist[q, i]) for i in voters)
        scores = [0.0] * n_classes
        for rank, i in enumerate(voters):
            d = float(dist[q, i])
            w = {
                "plurality": 1.0,
                "distance": math.exp(-p * (d - d0)),
                "softmax": math.exp(-(d - d0) / T),
                "rank": 1.0 / (rank + offset),
            }[voting]
            scores[labels[q, i]] += w * (1.0 if rel is None else float(rel[q, i]))
        total = sum(scores)
        probas.append([s / total for s in scores])
        best = max(scores)
        tied = {c for c in range(n_classes) if scores[c] >= best * (1 - 1e-9)}
        preds.append(next(labels[q, i] for i in voters if labels[q, i] in tied))
    return np.array(probas), np.array(preds)


def run_vote(dist, labels, n_classes, voting, rel=None, excluded=None, **kw):
    mask = _rules.voting_mask(np.ones(dist.shape, bool), excluded)
    w = _rules.neighbor_weights(dist, mask, voting, **kw)
    if rel is not None:
        w = w * rel
    scores = _rules.class_scores(w, labels, n_classes)
    return _rules.scores_to_proba(scores), _rules.predict_with_ties(
        scores, labels, mask
    )


@pytest.fixture
def neighbours(rng):
    dist = np.sort(rng.uniform(0, 2, size=(40, 7)), axis=1).astype(np.float32)
    labels = rng.integers(0, 4, size=(40, 7))
    return dist, labels


@pytest.mark.parametrize("voting", _rules.VOTING_RULES)
def test_rules_match_reference(neighbours, voting):
    dist, labels = neighbours
    kw = {"temperature": 0.3, "rank_offset": 1.5, "distance_power": 2.0}
    proba, pred = run_vote(dist, labels, 4, voting, **kw)
    ref_p, ref_y = reference_vote(dist, labels, 4, voting, T=0.3, offset=1.5, p=2.0)
    np.testing.assert_allclose(proba, ref_p, rtol=1e-6)
    np.testing.assert_array_equal(pred, ref_y)


@pytest.mark.parametrize("voting", _rules.VOTING_RULES)
def test_reliability_and_exclusion_match_reference(neighbours, rng, voting):
    dist, labels = neighbours
    rel = rng.uniform(0.1, 1.0, size=dist.shape)
    excluded = rng.random(dist.shape) < 0.4
    excluded[0] = True  # a query whose neighbours are all excluded falls back
    mask = _rules.voting_mask(np.ones(dist.shape, bool), excluded)
    w = _rules.neighbor_weights(dist, mask, voting) * rel
    scores = _rules.class_scores(w, labels, 4)
    pred = _rules.predict_with_ties(scores, labels, mask)
    ref_p, ref_y = reference_vote(dist, labels, 4, voting, rel=rel, excluded=excluded)
    np.testing.assert_allclose(_rules.scores_to_proba(scores), ref_p, rtol=1e-6)
    np.testing.assert_array_equal(pred, ref_y)


def test_rank_weights_are_published_values():
    mask = np.ones((1, 4), bool)
    w = _rules.neighbor_weights(np.zeros((1, 4)), mask, "rank")
    np.testing.assert_allclose(w[0], [1 / 2, 1 / 3, 1 / 4, 1 / 5])


def test_ranks_close_up_over_excluded():
    mask = np.array([[True, False, True, False, True]])
    np.testing.assert_array_equal(_rules.ranks_from_mask(mask), [[0, -1, 1, -1, 2]])
    w = _rules.neighbor_weights(np.zeros((1, 5)), mask, "rank")
    np.testing.assert_allclose(w[0], [1 / 2, 0, 1 / 3, 0, 1 / 4])


def test_tie_goes_to_nearest_tied_neighbour():
    # Classes 2 and 0 tie 2-2 among 5 (class 1 has one vote); neighbour 0 is class 2.
    labels = np.array([[2, 1, 0, 0, 2]])
    proba, pred = run_vote(np.zeros((1, 5)), labels, 3, "plurality")
    assert pred[0] == 2  # sklearn's argmax would say 0
    assert np.argmax(proba[0]) == 0  # probabilities themselves are tied...
    _rules.align_proba_with_ties(proba, pred)
    assert np.argmax(proba[0]) == 2  # ...until aligned with the decision
    np.testing.assert_allclose(proba[0], [0.4, 0.2, 0.4], rtol=1e-9)


def test_softmax_never_nan_at_tiny_temperature():
    dist = np.array([[50.0, 60.0, 70.0]])
    mask = np.ones((1, 3), bool)
    w = _rules.neighbor_weights(dist, mask, "softmax", temperature=1e-4)
    assert np.all(np.isfinite(w))
    assert w[0, 0] == 1.0
    scores = _rules.class_scores(w, np.array([[1, 0, 0]]), 2)
    np.testing.assert_allclose(_rules.scores_to_proba(scores), [[0.0, 1.0]])


def test_softmax_equals_vm_and_nn_forms(rng):
    """exp(-d/T) on cosine d == [VM]'s exp(cos/T) == [NN]'s exp(-||q-x||^2/2T)."""
    q = rng.normal(size=8)
    q /= np.linalg.norm(q)
    X = rng.normal(size=(5, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cos = X @ q
    d = np.sort(1 - cos)[None]
    w = _rules.neighbor_weights(d, np.ones_like(d, bool), "softmax", temperature=0.07)
    vm = np.exp(np.sort(cos)[::-1] / 0.07)
    nn = np.exp(-np.sort(((X - q) ** 2).sum(1)) / (2 * 0.07))
    np.testing.assert_allclose(w[0] / w[0].sum(), vm / vm.sum(), rtol=1e-6)
    np.testing.assert_allclose(w[0] / w[0].sum(), nn / nn.sum(), rtol=1e-6)


def test_callable_voting_and_its_errors():
    dist = np.array([[0.1, 0.2, 0.3]])
    mask = np.ones((1, 3), bool)
    w = _rules.neighbor_weights(dist, mask, lambda d, r: 1.0 / (1.0 + r))
    np.testing.assert_allclose(w[0], [1, 1 / 2, 1 / 3])
    with pytest.raises(ValueError, match="shape"):
        _rules.neighbor_weights(dist, mask, lambda d, r: np.ones(3))
    with pytest.raises(ValueError, match="negative"):
        _rules.neighbor_weights(dist, mask, lambda d, r: -np.ones_like(d))
    zero = _rules.neighbor_weights(dist, mask, lambda d, r: np.zeros_like(d))
    with pytest.raises(ValueError, match="zero"):
        _rules.scores_to_proba(_rules.class_scores(zero, np.zeros((1, 3), int), 2))


def test_accuracy_by_k_equals_voting_at_each_k(neighbours, rng):
    dist, labels = neighbours
    y = rng.integers(0, 4, size=dist.shape[0])
    mask = np.ones(dist.shape, bool)
    for voting in _rules.VOTING_RULES:
        w = _rules.neighbor_weights(dist, mask, voting)
        acc = _rules.accuracy_by_k(w, labels, mask, y, 4)
        for k in (1, 3, 7):
            _, pred = run_vote(dist[:, :k], labels[:, :k], 4, voting)
            assert acc[k - 1] == pytest.approx(np.mean(pred == y))


@settings(max_examples=60, deadline=None)
@given(
    dist=arrays(np.float64, (3, 6), elements=st.floats(0, 4)),
    labels=arrays(np.int64, (3, 6), elements=st.integers(0, 2)),
    voting=st.sampled_from(_rules.VOTING_RULES),
)
def test_probabilities_are_distributions_and_order_of_equal_neighbours_irrelevant(
    dist, labels, voting
):
    dist = np.sort(dist, axis=1)
    proba, _ = run_vote(dist, labels, 3, voting, temperature=0.05)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert np.all((proba > 0).sum(1) <= 6)
    if voting != "rank":  # rank weights depend on order by design
        perm = np.random.default_rng(1).permutation(6)
        d2, l2 = dist[:, perm], labels[:, perm]
        order = np.argsort(d2, axis=1, kind="stable")
        d2, l2 = np.take_along_axis(d2, order, 1), np.take_along_axis(l2, order, 1)
        p2, _ = run_vote(d2, l2, 3, voting, temperature=0.05)
        np.testing.assert_allclose(p2, proba, rtol=1e-9, atol=1e-12)
