"""What a ``KNNVoter`` answers from its neighbour records besides a
prediction: the records themselves, sklearn's ``kneighbors`` and graph,
leave-one-out probabilities, out-of-distribution scores and explanations.

A mixin of :class:`skknn.KNNVoter` (``skknn/voter.py``), as scikit-learn's
``KNeighborsMixin`` is of ``KNeighborsClassifier``; the class holds ``__init__``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from skknn._docstrings import fill_doc
from skknn._validation import (
    check_int,
    check_option,
    check_sparse_engine,
    dense,
    validate_rows,
)
from skknn._voter_voting import vote_prediction, vote_proba
from skknn.memory.neighbors import Neighbors


class NeighborQueriesMixin:
    """Searches of the memory for queries (or for its own samples, each left
    out) and the answers made directly of their neighbour records."""

    def neighbors(self, X=None, n_neighbors=None) -> Neighbors:
        """The neighbour record of queries: what every vote is computed from.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Raw queries (never modified). None queries the memory with its own
            samples, each left out by id (FORMULAS.md 2).
        n_neighbors : int, default=None
            Defaults to ``n_neighbors``; capped at the memory size (minus one
            when leaving one out).

        Returns
        -------
        neighbors : Neighbors
            Distances, ids, labels, reliabilities and exclusions, each
            ``(n_queries, k)``.
        """
        check_is_fitted(self)
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        check_int(self, "n_neighbors", k, low=1)
        check_int(self, "batch_size", self.batch_size, low=1)
        self._check_memory_unchanged()
        options = {"batch_size": self.batch_size, "progress": self.verbose}
        if X is None:
            return self.memory_.search_self(None, k, **options)
        X = self._queries(X, densify=False)
        if not sp.issparse(X):
            return self.memory_.search(X, k, **options)
        # Densified a block at a time: a wide sparse X may not fit in RAM dense.
        size, store = self.batch_size, self.memory_
        with store.reading():
            parts = [
                store.search(dense(X[s : s + size]), k, batch_size=size)
                for s in range(0, X.shape[0], size)
            ]
        return Neighbors.concatenate(parts)

    def _queries(self, X, densify: bool = True):
        """Validated float32 queries: dense, or CSR (kept sparse unless
        ``densify``) where the engine takes sparse input."""
        check_sparse_engine(self, X, self._fitted_config_["index"])
        return validate_rows(self, X, densify=densify)

    def _queries_for_reranker(self, X):
        """Validated queries when a reranker will see them (once, not twice)."""
        if self.reranker is None:
            return X
        check_is_fitted(self)
        return self._queries(X)

    @fill_doc
    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest memory samples, as sample **ids**, nearest first.

        %(X_kneighbors)s
        n_neighbors : int, default=None
            Defaults to ``n_neighbors``; capped at the memory size (minus one
            when leaving one out).
        %(return_distance)s

        %(returns_kneighbors)s
        """
        nb = self.neighbors(X, n_neighbors)
        return (nb.distances, nb.ids) if return_distance else nb.ids

    def kneighbors_graph(self, X=None, n_neighbors=None, mode="connectivity"):
        """The k-neighbours graph, as sklearn's ``kneighbors_graph``.

        Unlike :meth:`kneighbors`, whose answers are sample ids, the graph's
        columns are memory row positions (the order of :attr:`sample_ids_`), so
        on the same data it equals sklearn's graph.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_queries, n_features), \
                default=None
            Queries. None queries the memory with its own samples, leaving each
            one out (as :meth:`kneighbors`).
        n_neighbors : int, default=None
            Defaults to ``n_neighbors``; capped at the memory size (minus one
            when leaving one out).
        mode : {"connectivity", "distance"}, default="connectivity"
            Entries of ones, or the distances under ``metric``.

        Returns
        -------
        graph : scipy.sparse.csr_matrix of shape (n_queries, n_samples_fit)
            Row ``i`` holds query ``i``'s neighbours, nearest first (fewer where
            an approximate index found fewer).

        Examples
        --------
        >>> from skknn import KNNVoter
        >>> X = [[0.], [1.], [3.]]
        >>> knn = KNNVoter(1, metric="euclidean", preprocessing=None,
        ...                index="exact").fit(X, [0, 0, 1])
        >>> knn.kneighbors_graph(mode="distance").toarray()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 2., 0.]])
        """
        from skknn.memory.graph import GRAPH_MODES, neighbors_graph

        check_option(self, "mode", mode, GRAPH_MODES)
        check_is_fitted(self)
        # One state of the memory for the search and the ids that map it.
        with self.memory_.reading():
            nb = self.neighbors(X, n_neighbors)
            ids = self.sample_ids_
        return neighbors_graph(nb.distances, nb.ids, ids, mode)

    def loo_proba(self, sample_ids=None) -> np.ndarray:
        """Leave-one-out class probabilities of the memory's own samples.

        Each sample votes among its ``n_neighbors`` nearest *other* samples
        (self dropped by id, FORMULAS.md 2): [NN]'s training-set ``p_kNN``.

        Parameters
        ----------
        sample_ids : array-like of int, default=None
            Memory samples to score, in this order; all (as in
            :attr:`sample_ids_`) if None.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), or list of ndarray
            One array per level for multi-output labels.
        """
        check_is_fitted(self)
        self._check_vote_params()
        self._check_memory_unchanged()
        nb = self.memory_.search_self(
            sample_ids, self.n_neighbors, batch_size=self.batch_size
        )
        return vote_proba(self.vote(nb))

    @fill_doc
    def score_samples(self, X, n_neighbors=None) -> np.ndarray:
        """Out-of-distribution score: minus the distance to the k-th neighbour.

        ``-d_k(x)`` (FORMULAS.md 7; Sun et al., 2022): higher means nearer to
        the memory, as scikit-learn's novelty detectors score. Where an
        approximate index found fewer than ``k`` neighbours, the farthest one
        found stands in.

        %(X_voter_queries)s
        n_neighbors : int, default=None
            ``k``; defaults to ``n_neighbors``, capped at the memory size.

        Returns
        -------
        scores : ndarray of shape (n_queries,)
            Minus each query's distance to its ``k``-th nearest neighbour.

        Examples
        --------
        >>> import numpy as np
        >>> from skknn import KNNVoter
        >>> X = [[1., 0.], [.9, .1], [0., 1.]]
        >>> knn = KNNVoter(2, index="exact").fit(X, [0, 0, 1])
        >>> knn.score_samples([[1., .05], [-1., 0.]]).round(3)
        array([-0.002, -1.994])
        """
        return -self.neighbors(X, n_neighbors).farthest().astype(np.float64)

    @fill_doc
    def explain(self, X, residual: bool = False) -> Bunch:
        """Every decision with the neighbours that made it.

        %(X_voter_queries)s
        residual : bool, default=False
            Also search the residual query ``phi(q) - phi(n1)`` (FORMULAS.md 7,
            [VM] 3.7): the pre-processed query minus its nearest neighbour,
            re-normalised under normalising pre-processing; its neighbours show
            a second concept of the query.

        Returns
        -------
        explanation : Bunch
            ``neighbor_ids``, ``neighbor_labels``, ``distances``: (n_queries, k)
            arrays; ``weights``: each neighbour's share of the vote (voting weight
            times reliability, normalised per query; 0 for excluded samples);
            ``proba`` (n_queries, n_classes); ``prediction`` (n_queries,);
            ``classes``. With ``residual``: ``residual_ids``,
            ``residual_labels``, ``residual_distances`` (n_queries, k).
            For multi-output labels the per-level votes: ``neighbor_labels``
            (and ``residual_labels``) gain a last axis of levels, ``proba`` and
            ``classes`` are lists with one entry per level and ``prediction``
            is ``(n_queries, n_levels)``; the weights are shared by every level.
        """
        self._check_vote_params()
        X = self._queries_for_reranker(X)
        nb = self.neighbors(X)
        vote = self.vote(nb, X)
        votes = vote if isinstance(vote, list) else [vote]
        weights = votes[0].weights
        total = weights.sum(axis=1, keepdims=True)
        share = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        out = Bunch(
            neighbor_ids=nb.ids,
            neighbor_labels=nb.label_values(),
            distances=nb.distances,
            weights=share,
            proba=vote_proba(vote),
            prediction=vote_prediction(vote),
            classes=self.classes_,
        )
        if residual:
            out.update(self._residual_neighbors(X, nb))
        return out

    def _residual_neighbors(self, X, nb: Neighbors) -> dict:
        store = self.memory_
        X = self._queries(X)
        Q = store.prepare(X) - store.get(nb.ids[:, 0], prepared=True).X
        if store.normalizes:
            norms = np.linalg.norm(Q, axis=1, keepdims=True)
            Q = np.divide(Q, norms, out=np.zeros_like(Q), where=norms > 0)
        found = store.search(Q, nb.k, batch_size=self.batch_size, prepared=True)
        return {
            "residual_ids": found.ids,
            "residual_labels": found.label_values(),
            "residual_distances": found.distances,
        }
