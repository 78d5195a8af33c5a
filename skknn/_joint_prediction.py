"""What a fitted ``JointKNNClassifier`` answers: the interpolation of the kNN's
and the head's probabilities, the predictions made of it, and the kNN's
neighbours, scores and explanations with the head's view added.

A mixin of :class:`skknn.JointKNNClassifier` (``skknn/joint.py``), as
scikit-learn composes its estimators from mixins; the class holds ``__init__``
and the fitting. Every answer reads the head and the memory in one state
(``GuardedState``'s read lock).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from skknn._docstrings import fill_doc
from skknn.heads import _head


class JointPredictionMixin:
    """The prediction surface of JOINT: interpolated probabilities, labels,
    log-probabilities, decision function, and the kNN's neighbours,
    out-of-distribution scores and explanations."""

    def _head_proba(self, X: np.ndarray) -> np.ndarray:
        return _head.predict_proba(self.head_, X, device=self.device_)

    @fill_doc
    def predict_proba(self, X) -> np.ndarray:
        """``interpolation * p_kNN + (1 - interpolation) * softmax(head(x))``.

        %(X_queries)s

        %(returns_proba)s
        """
        return self._interpolated(X, lambda proba: proba)

    def _interpolated(self, X, answer):
        """``answer(proba)`` of the queries, with the classes and the
        probabilities read in one state of the head and the memory."""
        check_is_fitted(self)
        self._check_params()
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with self._reading():
            return answer(self._proba(X))

    def _knn_columns(self, proba: np.ndarray) -> np.ndarray:
        """The kNN's probabilities in the columns of ``classes_``. They differ
        only after a failed partial_fit left a class known to the memory with no
        samples in it (so with probability 0), which the head never learnt."""
        known = self.knn_.classes_
        if len(known) == len(self.classes_):
            return proba
        return proba[:, np.searchsorted(known, self.classes_)]

    def _proba(self, X: np.ndarray) -> np.ndarray:
        lam = float(self.interpolation)
        if lam == 1.0:
            return self._knn_columns(self.knn_.predict_proba(X))
        head = self._head_proba(X)
        if lam == 0.0:
            return head
        knn = self._knn_columns(self.knn_.predict_proba(X))
        return lam * knn + (1.0 - lam) * head

    @fill_doc
    def predict(self, X) -> np.ndarray:
        """Labels of the largest interpolated probability.

        %(X_queries)s

        %(returns_labels)s
        """
        return self._interpolated(
            X, lambda proba: self.classes_[np.argmax(proba, axis=1)]
        )

    @fill_doc
    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba` (``-inf`` where it is 0), as
        ``LogisticRegression`` offers it (``cross_val_predict(...,
        method="predict_log_proba")``).

        %(X_queries)s

        Returns
        -------
        log_proba : ndarray of shape (n_queries, n_classes)
            Columns follow :attr:`classes_`.
        """
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):  # log(0) = -inf is the answer
            return np.log(proba)

    @fill_doc
    def decision_function(self, X) -> np.ndarray:
        """Log of the interpolated probabilities (log-odds of the second class
        for two classes, as sklearn expects of binary classifiers).

        %(X_queries)s

        Returns
        -------
        scores : ndarray of shape (n_queries, n_classes) or (n_queries,)
            Log-probabilities, columns following :attr:`classes_`; for two
            classes, the log-odds of ``classes_[1]`` against ``classes_[0]``.
        """
        logp = np.log(np.maximum(self.predict_proba(X), np.finfo(np.float64).tiny))
        return logp[:, 1] - logp[:, 0] if logp.shape[1] == 2 else logp

    @fill_doc
    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest memory samples by id: see :meth:`KNNVoter.kneighbors`.

        %(X_kneighbors)s
        n_neighbors : int, default=None
            Defaults to the kNN's ``n_neighbors``; capped at the memory size
            (minus one when leaving one out).
        %(return_distance)s

        %(returns_kneighbors)s
        """
        check_is_fitted(self)
        return self.knn_.kneighbors(X, n_neighbors, return_distance)

    @fill_doc
    def score_samples(self, X, n_neighbors=None) -> np.ndarray:
        """Out-of-distribution score of the memory: see
        :meth:`KNNVoter.score_samples` (higher = nearer to the training set).

        %(X_queries)s
        n_neighbors : int, default=None
            ``k``; defaults to the kNN's ``n_neighbors``, capped at the memory
            size.

        %(returns_scores)s
        """
        check_is_fitted(self)
        return self.knn_.score_samples(X, n_neighbors)

    @fill_doc
    def explain(self, X):
        """The kNN's explanation (:meth:`KNNVoter.explain`) with the head's and the
        interpolated probabilities added (``head_proba``, ``joint_proba``).

        %(X_queries)s

        Returns
        -------
        explanation : Bunch
            The kNN's explanation: ``neighbor_ids``, ``neighbor_labels``,
            ``distances``, ``weights``, and ``proba`` (the kNN's probabilities)
            with columns following ``classes`` (:attr:`classes_`). Added:
            ``head_proba`` and ``joint_proba`` (n_queries, n_classes);
            ``prediction`` is the label of the largest ``joint_proba``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with self._reading():
            ex = self.knn_.explain(X)
            ex.proba, ex.classes = self._knn_columns(ex.proba), self.classes_
            ex.head_proba = self._head_proba(X)
        lam = float(self.interpolation)
        ex.joint_proba = lam * ex.proba + (1 - lam) * ex.head_proba
        ex.prediction = ex.classes[np.argmax(ex.joint_proba, axis=1)]
        return ex
