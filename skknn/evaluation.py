"""Accuracy of every voting rule at every k from one retrieval ([VM] Table 1 style)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from skknn import _voting


def voting_accuracy_by_k(
    voter, X, y, *, max_k: int = 100, votings=_voting.VOTING_RULES
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
    X : array-like of shape (n_queries, n_features)
    y : array-like of shape (n_queries,)
        True labels; labels unknown to the memory count as errors.
    max_k : int, default=100
    votings : iterable of str
        Rules to evaluate.

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
    nb = voter.neighbors(X, max_k)
    mask = _voting.record_mask(nb)
    classes = nb.classes
    known = np.isin(y, classes)
    y_idx = np.full(y.shape, -1, dtype=np.int64)
    y_idx[known] = np.searchsorted(classes, y[known])
    out = {}
    for voting in votings:
        weights = _voting.neighbor_weights(
            nb.distances,
            mask,
            voting,
            temperature=voter.temperature,
            rank_offset=voter.rank_offset,
            distance_power=voter.distance_power,
        )
        out[voting] = _voting.accuracy_by_k(
            weights, nb.labels, mask, y_idx, len(classes), reliability=nb.reliability
        )
    return out
