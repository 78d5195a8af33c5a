"""skknn.evaluation and score_samples against NumPy references and real data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from skknn.evaluation import expected_calibration_error, hit_rate_by_k


def _cosine_order(X, Q):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    D = 1.0 - Qn.astype(np.float64) @ Xn.T
    return D, np.argsort(D, axis=1, kind="stable")


def test_hit_rate_matches_a_numpy_reference(blobs):
    X, y = blobs
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(y)) < 0.3, rng.integers(0, 3, len(y)), y)
    Q = X[:40] + rng.normal(scale=2.0, size=(40, X.shape[1])).astype(np.float32)
    knn = KNNVoter(index="exact").fit(X[40:], noisy[40:])
    got = hit_rate_by_k(knn, Q, y[:40], max_k=25)
    _, order = _cosine_order(X[40:], Q)
    labels = noisy[40:][order[:, :25]]
    ref = [np.mean([y[q] in labels[q, :k] for q in range(40)]) for k in range(1, 26)]
    np.testing.assert_allclose(got, ref)
    assert got[0] < got[-1]  # more neighbours can only add hits
    acc = np.mean(knn.set_params(n_neighbors=25).predict(Q) == y[:40])
    assert acc <= got[-1]  # no vote beats the hit rate


def test_expected_calibration_error_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(4), size=500)
    y = rng.integers(0, 4, 500)
    ece, bins = expected_calibration_error(proba, y, classes=np.arange(4))
    conf, pred = proba.max(1), proba.argmax(1)
    ref = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ref += inside.mean() * abs(
                (pred[inside] == y[inside]).mean() - conf[inside].mean()
            )
    assert ece == pytest.approx(ref)
    assert bins.count.sum() == 500
    perfect = np.eye(4)[y]
    assert expected_calibration_error(perfect, y)[0] == 0.0
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(proba, y, n_bins=0)
    with pytest.raises(ValueError, match="proba must be"):
        expected_calibration_error(proba, y[:3])


def test_score_samples_is_minus_the_kth_distance(blobs):
    X, y = blobs
    Q = X[:10] + 0.5
    knn = KNNVoter(7, index="exact").fit(X[10:], y[10:])
    D, order = _cosine_order(X[10:], Q)
    ref = -np.take_along_axis(D, order, 1)[:, 6]
    np.testing.assert_allclose(knn.score_samples(Q), ref, atol=1e-5)
    np.testing.assert_allclose(
        knn.score_samples(Q, n_neighbors=2),
        -np.take_along_axis(D, order, 1)[:, 1],
        atol=1e-5,
    )
    joint = JointKNNClassifier(KNNVoter(7, index="exact"), random_state=0)
    pruner = MemoryPruner(KNNVoter(7, index="exact"), n_neighbors=3)
    for est in (joint, pruner):
        est.fit(X[10:], y[10:])
        np.testing.assert_allclose(est.score_samples(Q), knn.score_samples(Q))


@pytest.mark.slow
def test_faces_are_out_of_distribution_for_a_digits_memory(digits):
    """Real data: sklearn digits in memory; LFW face crops (skimage), resized to
    8x8 like the digits, score far lower (AUROC near 1); held-out digit
    classes score lower than seen ones (AUROC above 0.5)."""
    skimage = pytest.importorskip("skimage")
    from skimage.transform import resize

    X, y, Xt, yt = digits
    faces = skimage.data.lfw_subset()[:100]
    faces = np.stack([resize(f, (8, 8), anti_aliasing=True) for f in faces]) * 16
    faces = faces.reshape(len(faces), -1).astype(np.float32)
    knn = KNNVoter(10, preprocessing="center_l2", index="exact").fit(X, y)
    inside, outside = knn.score_samples(Xt), knn.score_samples(faces)
    auroc = roc_auc_score(
        np.r_[np.ones(len(inside)), np.zeros(len(outside))], np.r_[inside, outside]
    )
    assert auroc > 0.95  # measured 1.0
    seen = y < 7
    held = KNNVoter(10, preprocessing="center_l2", index="exact").fit(X[seen], y[seen])
    scores = held.score_samples(Xt)
    assert roc_auc_score(yt < 7, scores) > 0.9  # measured 0.97


def test_ood_auroc_matches_score_samples(digits):
    from skknn.evaluation import ood_auroc

    X, y, Xt, _ = digits
    knn = KNNVoter(10, index="exact").fit(X[y < 5], y[y < 5])
    inside, outside = Xt[:100], X[y >= 5][:100]
    got = ood_auroc(knn, inside, outside, ks=(1, 5, 10))
    for k, value in got.items():
        scores = np.r_[knn.score_samples(inside, k), knn.score_samples(outside, k)]
        truth = np.r_[np.ones(100), np.zeros(100)]
        assert value == pytest.approx(roc_auc_score(truth, scores))
    assert got[10] > 0.6  # digits the memory never saw sit farther away


def test_memory_scaling_fits_a_power_law_on_real_digits(digits):
    from skknn.evaluation import memory_scaling

    X, y, Xt, yt = digits
    result = memory_scaling(KNNVoter(5, index="exact"), X, y, Xt, yt, n_seeds=2)
    assert result.accuracy.shape == (len(result.sizes), 2)
    assert result.error[0] > result.error[-1]  # more memory, fewer errors
    fit = result.error > 0
    b, a = np.polyfit(np.log(result.sizes[fit]), np.log(result.error[fit]), 1)
    assert result.exponent == pytest.approx(b)
    assert result.intercept == pytest.approx(a)
    assert result.exponent < 0
    with pytest.raises(ValueError, match="sizes must lie"):
        memory_scaling(KNNVoter(5), X, y, Xt, yt, sizes=[1, 10])


def test_reranker_replaces_the_vote_and_stays_within_the_hit_rate(digits):
    from sklearn.linear_model import LogisticRegression

    from skknn.rerankers import ProbeReranker

    X, y, Xt, yt = digits
    plain = KNNVoter(10, index="exact").fit(X, y)
    same = KNNVoter(
        10, index="exact", reranker=lambda nb, Q: plain.vote(nb).scores
    ).fit(X, y)
    np.testing.assert_array_equal(same.predict(Xt), plain.predict(Xt))
    np.testing.assert_allclose(same.predict_proba(Xt), plain.predict_proba(Xt))
    probe = LogisticRegression(max_iter=2000).fit(X, y)
    ranked = KNNVoter(10, index="exact", reranker=ProbeReranker(probe)).fit(X, y)
    pred = ranked.predict(Xt)
    labels = ranked.explain(Xt).neighbor_labels
    assert all(p in row for p, row in zip(pred, labels))  # a neighbour's label
    assert np.mean(pred == yt) <= hit_rate_by_k(ranked, Xt, yt, max_k=10)[-1]
    free = KNNVoter(10, index="exact", reranker=ProbeReranker(probe, restrict=False))
    np.testing.assert_array_equal(free.fit(X, y).predict(Xt), probe.predict(Xt))
    with pytest.raises(TypeError, match="reranker"):
        KNNVoter(reranker="gemini").fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        KNNVoter(3, reranker=lambda nb, Q: np.ones((1, 1))).fit(X, y).predict(Xt)
