"""Evaluation of a memory: accuracy of every voting rule at every k and the hit
rate from one retrieval ([VM] Table 1 style), and calibration (FORMULAS.md 7)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from skknn._docstrings import fill_doc
from skknn.voting import _rules


@fill_doc
def voting_accuracy_by_k(
    voter, X, y, *, max_k: int = 100, votings=_rules.VOTING_RULES, neighbors=None
) -> dict[str, np.ndarray]:
    """Accuracy at ``k = 1..max_k`` for each voting rule, from **one** search.

    The class scores at each ``k`` are prefix sums over the ``max_k`` ranked
    neighbours (FORMULAS.md 3), so the memory is searched once, not ``max_k``
    times per rule. The voter's own temperature, offset, power, reliabilities
    and hard-pruning exclusions apply.

    Parameters
    ----------
    voter : KNNVoter
        A fitted voter (its memory is the training set).
    %(X_evaluated)s
    y : array-like of shape (n_queries,)
        True labels; labels unknown to the memory count as errors.
    %(max_k)s
    votings : iterable of str
        Rules to evaluate.
    neighbors : Neighbors, default=None
        The record of ``voter.neighbors(X, max_k)``, when the caller has it
        already (one search serves accuracy, hit rate and calibration).

    Returns
    -------
    accuracy : dict of str to ndarray of shape (min(max_k, memory size),)
        ``accuracy[rule][k - 1]`` is the accuracy with ``k`` neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.evaluation import voting_accuracy_by_k
    >>> X = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> voter = KNNVoter(index="exact").fit(X, [0, 0, 1, 1])
    >>> acc = voting_accuracy_by_k(voter, X, [0, 0, 1, 1], max_k=3)
    >>> acc["rank"]
    array([1., 1., 1.])
    """
    check_is_fitted(voter)
    y = np.asarray(y)
    nb = _one_column(voter.neighbors(X, max_k) if neighbors is None else neighbors)
    mask = _rules.record_mask(nb)
    classes = nb.classes
    known = np.isin(y, classes)
    y_idx = np.full(y.shape, -1, dtype=np.int64)
    y_idx[known] = np.searchsorted(classes, y[known])
    out = {}
    for voting in votings:
        weights = _rules.neighbor_weights(
            nb.distances,
            mask,
            voting,
            temperature=voter.temperature,
            rank_offset=voter.rank_offset,
            distance_power=voter.distance_power,
        )
        out[voting] = _rules.accuracy_by_k(
            weights, nb.labels, mask, y_idx, len(classes), reliability=nb.reliability
        )
    return out


@fill_doc
def hit_rate_by_k(voter, X, y, *, max_k: int = 100, neighbors=None) -> np.ndarray:
    """``hit@k`` for ``k = 1..max_k`` from one search (FORMULAS.md 7).

    ``hit@k(q) = 1`` when the query's true label is among its ``k`` nearest
    neighbours' labels: no aggregation of those neighbours can be right more
    often, so the gap between a voting rule's accuracy and ``hit@k`` is what
    better aggregation (re-ranking) can still win. Hard-pruned neighbours count
    (they are retrieved); missing ones (fewer than ``k`` found) do not.

    Parameters
    ----------
    voter : KNNVoter
        A fitted voter.
    %(X_evaluated)s
    y : array-like of shape (n_queries,)
        True labels; labels unknown to the memory are never hit.
    %(max_k)s
    neighbors : Neighbors, default=None
        The record of ``voter.neighbors(X, max_k)``, if already searched.

    Returns
    -------
    hit_rate : ndarray of shape (min(max_k, memory size),)
        ``hit_rate[k - 1]`` is the mean ``hit@k``.

    Examples
    --------
    >>> from skknn import KNNVoter
    >>> from skknn.evaluation import hit_rate_by_k
    >>> knn = KNNVoter(index="exact").fit([[1., 0.], [.9, .1], [0., 1.]], [0, 0, 1])
    >>> hit_rate_by_k(knn, [[1., .2], [.3, .6]], [1, 1], max_k=3)
    array([0.5, 0.5, 1. ])
    """
    check_is_fitted(voter)
    y = np.asarray(y)
    nb = _one_column(voter.neighbors(X, max_k) if neighbors is None else neighbors)
    hit = nb.present & (nb.label_values() == y[:, None])
    return np.mean(np.logical_or.accumulate(hit, axis=1), axis=0)


def expected_calibration_error(proba, y, classes=None, *, n_bins: int = 15):
    """Expected calibration error of the top-class confidence (FORMULAS.md 7).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over ``n_bins``
    equal-width bins of the confidence ``max_c p(c | x)``.

    Parameters
    ----------
    proba : array-like of shape (n_queries, n_classes)
        Predicted probabilities (``predict_proba``).
    y : array-like of shape (n_queries,)
        True labels.
    classes : array-like of shape (n_classes,), default=None
        The labels of ``proba``'s columns (an estimator's ``classes_``); default
        ``0 .. n_classes - 1``.
    n_bins : int, default=15
        Number of equal-width bins of the confidence over [0, 1].

    Returns
    -------
    ece : float
        In [0, 1]; 0 when every bin's accuracy equals its mean confidence.
    bins : Bunch
        ``confidence``, ``accuracy`` and ``count`` per bin (NaN where empty):
        the points of a reliability diagram.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.evaluation import expected_calibration_error
    >>> proba = np.array([[.9, .1], [.8, .2], [.3, .7], [.6, .4]])
    >>> round(expected_calibration_error(proba, [0, 1, 1, 0], n_bins=5)[0], 3)
    0.25
    """
    from sklearn.utils import Bunch

    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    if proba.ndim != 2 or y.shape != (proba.shape[0],):
        raise ValueError(
            f"proba must be (n_queries, n_classes) and y (n_queries,); got "
            f"{proba.shape} and {y.shape}."
        )
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}.")
    classes = np.arange(proba.shape[1]) if classes is None else np.asarray(classes)
    confidence = proba.max(axis=1)
    correct = classes[proba.argmax(axis=1)] == y
    # Bins (i / n_bins, (i + 1) / n_bins]; a confidence of 0 joins the first.
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, confidence, n_bins) / count
        acc = np.bincount(which, correct.astype(float), n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / len(y) * np.abs(acc[filled] - conf[filled])))
    return ece, Bunch(confidence=conf, accuracy=acc, count=count)


def calibration_at_best_k(voter, neighbors, y, accuracy: dict, *, n_bins: int = 15):
    """ECE of each voting rule at the ``k`` where it is most accurate.

    Parameters
    ----------
    voter : KNNVoter
        Supplies the rules' parameters (temperature, offset, power).
    neighbors : Neighbors
        One record of ``max_k`` neighbours per query.
    y : array-like of shape (n_queries,)
        True labels.
    accuracy : dict of str to ndarray
        :func:`voting_accuracy_by_k` on the same record.
    n_bins : int, default=15
        Number of equal-width confidence bins, as in
        :func:`expected_calibration_error`.

    Returns
    -------
    calibration : dict of str to (int, float, Bunch)
        ``{rule: (best k, ECE, bins)}``; ``bins`` as
        :func:`expected_calibration_error` gives them (a reliability diagram).

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.evaluation import calibration_at_best_k, voting_accuracy_by_k
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (40, 4)), rng.normal(2, 1, (40, 4))]
    >>> y = np.repeat([0, 1], 40)
    >>> voter = KNNVoter(index="exact").fit(X[::2], y[::2])
    >>> nb = voter.neighbors(X[1::2], 10)
    >>> acc = voting_accuracy_by_k(voter, X[1::2], y[1::2], max_k=10, neighbors=nb)
    >>> calibration = calibration_at_best_k(voter, nb, y[1::2], acc, n_bins=5)
    >>> {rule: k for rule, (k, ece, bins) in calibration.items()}
    {'plurality': 5, 'distance': 8, 'softmax': 6, 'rank': 6}
    >>> k, ece, bins = calibration["rank"]
    >>> round(ece, 3), bins.count
    (0.081, array([ 0,  0,  5,  4, 31]))
    """
    neighbors = _one_column(neighbors)
    out = {}
    for rule, acc in accuracy.items():
        k = int(np.argmax(acc)) + 1
        vote = _rules.vote(
            neighbors.first(k),
            rule,
            temperature=voter.temperature,
            rank_offset=voter.rank_offset,
            distance_power=voter.distance_power,
        )
        ece, bins = expected_calibration_error(
            vote.proba, y, neighbors.classes, n_bins=n_bins
        )
        out[rule] = (k, ece, bins)
    return out


def ood_auroc(voter, X_in, X_out, *, ks=(1, 10, 50)) -> dict[int, float]:
    """AUROC of :meth:`~skknn.KNNVoter.score_samples` separating in-distribution
    queries from others, at several ``k`` from one retrieval (FORMULAS.md 7).

    Parameters
    ----------
    voter : KNNVoter
        A fitted voter (its memory is the in-distribution data).
    X_in : array-like of shape (n_in, n_features)
        Queries of the memory's kind (test samples).
    X_out : array-like of shape (n_out, n_features)
        Queries of another kind.
    ks : iterable of int, default=(1, 10, 50)
        Capped at the memory size.

    Returns
    -------
    auroc : dict of int to float
        1.0: every in-distribution query is nearer to the memory than every
        other one; 0.5: no separation.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.evaluation import ood_auroc
    >>> knn = KNNVoter(index="exact").fit([[1., 0.], [.9, .1], [.8, .3]], [0, 0, 1])
    >>> ood_auroc(knn, [[1., .1], [.9, .2]], [[-1., .1], [0., 1.]], ks=(1, 2))
    {1: 1.0, 2: 1.0}
    """
    from sklearn.metrics import roc_auc_score

    check_is_fitted(voter)
    ks = sorted({min(int(k), voter.memory_.n_samples) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive ints; got {ks!r}.")
    inside, outside = voter.neighbors(X_in, ks[-1]), voter.neighbors(X_out, ks[-1])
    truth = np.r_[np.ones(inside.n_queries), np.zeros(outside.n_queries)]
    out = {}
    for k in ks:
        d_k = np.r_[inside.first(k).farthest(), outside.first(k).farthest()]
        out[k] = float(roc_auc_score(truth, -d_k))
    return out


def memory_scaling(
    voter, X, y, X_test, y_test, *, sizes=None, n_seeds: int = 3, random_state=0
):
    """Accuracy against memory size and its power law (FORMULAS.md 7, [VM] 3.3).

    Memories are random subsets of ``(X, y)`` of sizes evenly spaced in log scale;
    each is fitted by a clone of ``voter`` and scored on the test set, for
    ``n_seeds`` draws. The error then follows ``log(err) = a + b log(N)``, fitted
    by least squares on the mean error per size (sizes with no error are left
    out of the fit: their log is undefined).

    Parameters
    ----------
    voter : KNNVoter
        The configuration to scale (cloned, not fitted).
    X, y : array-like
        The full memory.
    X_test, y_test : array-like
        Queries and their true labels.
    sizes : array-like of int, default=None
        Default: 6 sizes from ``max(n_neighbors, 2 * n_classes)`` to ``len(y)``.
    n_seeds : int, default=3
        Random draws of the memory at each size.
    random_state : int, default=0
        Seeds the draws.

    Returns
    -------
    scaling : Bunch
        ``sizes``, ``accuracy`` (n_sizes, n_seeds), ``error`` (mean per size),
        ``exponent`` ``b`` and ``intercept`` ``a`` (NaN when fewer than two sizes
        have an error to fit).

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.evaluation import memory_scaling
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (100, 4)), rng.normal(2, 1, (100, 4))]
    >>> y = np.repeat([0, 1], 100)
    >>> scaling = memory_scaling(
    ...     KNNVoter(5, index="exact"), X[::2], y[::2], X[1::2], y[1::2]
    ... )
    >>> scaling.sizes, scaling.accuracy.shape
    (array([  5,   9,  17,  30,  55, 100]), (6, 3))
    >>> scaling.error.round(2)
    array([0.38, 0.37, 0.18, 0.12, 0.1 , 0.08])
    >>> round(scaling.exponent, 2)
    -0.57
    """
    from sklearn.base import clone
    from sklearn.utils import Bunch

    X, y = np.asarray(X), np.asarray(y)
    n = len(y)
    if sizes is None:
        low = min(n, max(getattr(voter, "n_neighbors", 1), 2 * len(np.unique(y))))
        sizes = np.unique(np.geomspace(low, n, 6).round().astype(int))
    sizes = np.asarray(sizes, dtype=int)
    if sizes.min() < 2 or sizes.max() > n:
        raise ValueError(f"sizes must lie in [2, {n}]; got {sizes.tolist()}.")
    rng = np.random.default_rng(random_state)
    accuracy = np.empty((len(sizes), n_seeds))
    for j in range(n_seeds):
        order = rng.permutation(n)
        for i, size in enumerate(sizes):
            part = order[:size]
            model = clone(voter).fit(X[part], y[part])
            accuracy[i, j] = np.mean(model.predict(X_test) == np.asarray(y_test))
    error = 1.0 - accuracy.mean(axis=1)
    fit = error > 0
    if fit.sum() >= 2:
        b, a = np.polyfit(np.log(sizes[fit]), np.log(error[fit]), 1)
    else:
        a = b = float("nan")
    return Bunch(
        sizes=sizes,
        accuracy=accuracy,
        error=error,
        exponent=float(b),
        intercept=float(a),
    )


def _one_column(neighbors):
    """The record, refused when it holds several label levels (say which)."""
    if neighbors.taxonomy is not None:
        raise ValueError(
            f"The memory holds {neighbors.taxonomy.n_levels} label levels; these "
            "scores take one. Pass the record of one level: "
            "neighbors=voter.neighbors(X, max_k).level(l), with y[:, l]."
        )
    return neighbors
