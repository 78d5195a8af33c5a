"""The index of a fitted ``KNNVoter``: its knobs tuned against exact search
(or its family chosen, with ``index="auto"``) and its trained parts rebuilt.

A mixin of :class:`skknn.KNNVoter` (``skknn/voter.py``); the measuring lives in
``skknn/_tuning.py`` and ``skknn/_family_tuning.py``.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from skknn._validation import check_int
from skknn._voter_voting import vote_prediction


class IndexTuningMixin:
    """Tuning and retraining of the fitted memory's index."""

    def retrain_index(self):
        """Train the index again on a sample of the whole memory.

        An IVF index trains once, when the memory first holds 39 samples per
        list; a memory grown by many ``partial_fit`` calls afterwards (a stream)
        keeps centroids fitted to its beginning. This rebuilds the index as a
        fresh :meth:`fit` on the same samples would (exact engines just rebuild).

        Returns
        -------
        self : KNNVoter
            The estimator, its index rebuilt.
        """
        check_is_fitted(self)
        self._check_memory_unchanged()
        self.memory_.retrain_index()
        return self

    def tune_index(
        self,
        X,
        target_agreement: float = 0.99,
        *,
        n_neighbors=None,
        max_memory_bytes=None,
    ):
        """Set ``index_params`` to the cheapest knobs that keep predictions.

        Measures, on the queries ``X``, the prediction agreement with exact
        search (the share of queries predicted alike, FORMULAS.md 7) and the
        recall of the ``k`` neighbours, for each setting of the index's knobs:
        ``nprobe`` (IVF) or ``efSearch`` (HNSW) in rising powers of two, times
        ``refine`` (1 to 32, for compact PQ/SQ codes only). For each refine
        factor the knob rises until the target is met. The fastest measured
        setting that meets it is set (with a warning, the most accurate one
        when none does); the table is kept in :attr:`tuning_`.

        With ``index="auto"`` the index family is chosen too: exact flat
        search, IVF with flat, SQ8 and PQ codes, and HNSW32 are each built on
        a copy of the memory's rows (same ids, labels, weights and flags) and
        their knobs measured as above; the fastest setting that meets the
        target within ``max_memory_bytes`` replaces the memory (its version
        advances) and ``index`` / ``index_params`` become that index and its
        knobs. The measured Pareto front (agreement, queries/s, bytes) is kept
        in :attr:`index_front_`. A memory past the size where ``"auto"``
        turns approximate has a ``far_quantile`` guard (far queries searched
        by brute force); a family is measured with it only when none of its
        settings meets the target without it, and the chosen knobs keep it
        only then (set it again with ``set_params(index_params=...)`` for a
        memory whose deletions will leave regions empty). Only a memory in
        RAM (no ``storage_path``, ``backend="local"``) can be rebuilt so.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Queries like those to come (e.g. a validation set); a few thousand
            give agreement to a fraction of a percent.
        target_agreement : float, default=0.99
            In (0, 1].
        n_neighbors : int, default=None
            ``k``; defaults to ``n_neighbors``.
        max_memory_bytes : int, default=None
            With ``index="auto"``: the most bytes the memory may take (stored
            vectors plus the index's codes). None: no limit.

        Returns
        -------
        self : KNNVoter
            With ``index_params`` set and ``tuning_`` a Bunch of lists
            ``params``, ``agreement``, ``recall``, ``seconds``,
            ``queries_per_s``, and ``chosen`` (the index of the setting made);
            with ``index="auto"`` also ``index`` and ``bytes`` per row and
            ``front`` (the Pareto front's rows), and :attr:`index_front_`, the
            front as a pandas DataFrame (a dict of columns without pandas).

        Examples
        --------
        >>> import numpy as np
        >>> from skknn import KNNVoter
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(2000, 16)).astype(np.float32)
        >>> y = (X[:, 0] > 0).astype(int)
        >>> knn = KNNVoter(10, index="IVF32,Flat").fit(X, y)
        >>> knn = knn.tune_index(X[:200], target_agreement=0.99)
        >>> knn.tuning_.agreement[knn.tuning_.chosen] >= 0.99
        True
        """
        from skknn._family_tuning import front_frame, tune_family
        from skknn._tuning import check_request, tune

        check_is_fitted(self)
        self._check_vote_params()
        self._check_memory_unchanged()
        check_request(self, target_agreement, max_memory_bytes)
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        check_int(self, "n_neighbors", k, low=1)
        X = self._queries(X)
        k, target = min(k, self.memory_.n_samples), float(target_agreement)
        predict = lambda nb: vote_prediction(self.vote(nb, X))  # noqa: E731
        if not self.memory_.auto:
            tuning = tune(self, X, target, k, predict)
            self.set_params(index_params=tuning.params[tuning.chosen])
            self.tuning_ = tuning
            return self
        tuning, best = tune_family(self, X, target, k, predict, max_memory_bytes)
        index, params = tuning.index[tuning.chosen], tuning.params[tuning.chosen]
        best.set_index_params(params)  # a fresh store: no reader sees it yet
        with self.memory_.editing():
            self.memory_ = best
            # BaseEstimator's, not the voter's (which hands index_params to the
            # memory): the new memory has its knobs already, set above.
            BaseEstimator.set_params(self, index=index, index_params=params or None)
        self._fitted_config_ = self._memory_config()
        self.tuning_, self.index_front_ = tuning, front_frame(tuning)
        return self
