"""Re-rankers: what decides among the retrieved neighbours when voting is not
enough (FORMULAS.md 7, [VM] 3.2).

A re-ranker is any callable ``(neighbors, X) -> class scores`` passed as
``KNNVoter(reranker=...)``. [VM] used a vision-language model; this module ships
one that runs offline: a classifier's probabilities, restricted to the labels
present among each query's neighbours, so the memory proposes the candidates
and a stronger model chooses. Its accuracy is bounded by ``hit@k``.
"""

from __future__ import annotations

import numpy as np

from skknn.memory.neighbors import Neighbors

__all__ = ["ProbeReranker"]


class ProbeReranker:
    """Re-rank the neighbours' labels with a fitted probabilistic classifier.

    Parameters
    ----------
    probe : classifier
        A fitted estimator with ``predict_proba`` and ``classes_`` (e.g. a
        ``LogisticRegression`` linear probe, or a ``JointKNNClassifier`` whose
        head is the probe).
    restrict : bool, default=True
        Score only the labels present among a query's neighbours (the memory
        proposes, the probe decides); False lets the probe pick any class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skknn import KNNVoter
    >>> from skknn.rerankers import ProbeReranker
    >>> X = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> y = np.array([0, 0, 1, 1])
    >>> probe = LogisticRegression().fit(X, y)
    >>> knn = KNNVoter(2, index="exact", reranker=ProbeReranker(probe)).fit(X, y)
    >>> knn.predict([[.8, .3], [.2, .7]])
    array([0, 1])
    """

    def __init__(self, probe, *, restrict: bool = True):
        self.probe = probe
        self.restrict = restrict

    def __call__(self, neighbors: Neighbors, X) -> np.ndarray:
        classes = neighbors.classes
        proba = np.asarray(self.probe.predict_proba(X), dtype=np.float64)
        scores = np.zeros((neighbors.n_queries, len(classes)))
        known = np.isin(self.probe.classes_, classes)
        columns = np.searchsorted(classes, self.probe.classes_[known])
        scores[:, columns] = proba[:, known]
        if self.restrict:
            candidates = np.zeros_like(scores, dtype=bool)
            rows = np.repeat(np.arange(neighbors.n_queries), neighbors.k)
            present = neighbors.present.ravel()
            candidates[rows[present], neighbors.labels.ravel()[present]] = True
            scores = np.where(candidates, scores, 0.0)
            # A probe that gives every candidate zero: the candidates share alike.
            empty = scores.sum(axis=1) == 0
            scores[empty] = candidates[empty]
        return scores
