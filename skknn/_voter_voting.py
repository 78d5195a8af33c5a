"""How a ``KNNVoter`` turns neighbour records into answers: the vote (rule,
learned scorer, re-ranker) and the prediction surface built on it.

A mixin of :class:`skknn.KNNVoter` (``skknn/voter.py``), as scikit-learn composes
``KNeighborsClassifier`` from ``KNeighborsMixin``: the methods read the voter's
parameters and its fitted ``memory_``; the class holds ``__init__``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils.validation import check_is_fitted

from skknn._docstrings import fill_doc
from skknn._hierarchy import stack_levels
from skknn._param_validation import Interval, StrOptions, check_params
from skknn._validation import check_int, dense
from skknn.memory.front import query_blocks
from skknn.memory.neighbors import Neighbors
from skknn.voting import _learned, _rules

# The parameters a vote reads. set_params may change them after fit, so every
# prediction checks them again; those that shape the memory are checked at fit
# (and compared with the fitted memory's): skknn/_memory_params.py.
VOTE_PARAMETER_CONSTRAINTS: dict = {
    "n_neighbors": [Interval(Integral, 1, None, closed="left")],
    "voting": [StrOptions({*_rules.VOTING_RULES, "learned"}), callable],
    "temperature": [Interval(Real, 0, None, closed="neither")],
    "rank_offset": [Interval(Real, 0, None, closed="neither")],
    "distance_power": [Interval(Real, 0, None, closed="left")],
    "tie_break": [StrOptions(set(_rules.TIE_RULES))],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "verbose": ["verbose"],
    "reranker": [callable, None],
}


class VotingMixin:
    """The vote over a neighbour record and the predictions made of it."""

    def _check_vote_params(self) -> None:
        """Parameters read at prediction time (they may change after fit),
        against their half of the table."""
        check_params(self, VOTE_PARAMETER_CONSTRAINTS)

    def vote(self, neighbors: Neighbors, X=None) -> _rules.Vote:
        """Vote over a neighbour record with this voter's rule (FORMULAS.md 3).

        Parameters
        ----------
        neighbors : Neighbors
            From :meth:`neighbors` (or any search of :attr:`memory_`).
        X : array-like of shape (n_queries, n_features), default=None
            The queries, for a ``reranker`` (required when one is set).

        Returns
        -------
        vote : Vote, or list of Vote
            ``weights``, ``mask``, ``scores``, ``proba``, ``winner`` (class codes)
            and ``prediction`` (labels); for multi-output labels one per level.
        """
        self._check_vote_params()
        rule = {
            "temperature": self.temperature,
            "rank_offset": self.rank_offset,
            "distance_power": self.distance_power,
            "tie_break": self.tie_break,
        }
        if neighbors.taxonomy is not None:
            if self.reranker is not None:
                raise ValueError(
                    "A reranker scores one label column; this memory holds "
                    f"{neighbors.taxonomy.n_levels} label levels. Set reranker=None "
                    "or fit one voter per level."
                )
            if self.voting == "learned":
                self._learned_state()  # refuses label levels, saying why
            return _rules.vote_levels(neighbors, self.voting, **rule)
        if self.voting == "learned":
            return self._rerank(self._learned_vote(neighbors), neighbors, X)
        vote = _rules.vote(neighbors, self.voting, **rule)
        return self._rerank(vote, neighbors, X)

    def _rerank(self, vote, neighbors: Neighbors, X):
        if self.reranker is None:
            return vote
        if X is None:
            raise ValueError("KNNVoter.vote needs the queries X to call its reranker.")
        scores = self.reranker(neighbors, X)
        return _rules.rerank(vote, neighbors, scores, self.tie_break)

    def _learned_vote(self, neighbors: Neighbors) -> _rules.Vote:
        """``voting="learned"``: rank weights, class scores from the scorer
        trained on this memory (rank sums where it had nothing to learn)."""
        weights, mask = _rules.weigh(neighbors, "rank", rank_offset=self.rank_offset)
        state = self._learned_state()
        scores = None
        if state.aggregation is not None:
            scores = state.scores(neighbors, weights, mask)
        return _rules.decide(
            weights,
            mask,
            neighbors.labels,
            neighbors.classes,
            neighbors,
            self.tie_break,
            scores=scores,
        )

    def _learned_state(self) -> _learned.LearnedState:
        """The learned scorer and rightness of the memory as it is now (kept,
        extended after additions, retrained after removals or new parameters)."""
        if self.memory_.taxonomy is not None:
            raise ValueError(
                "voting='learned' scores one label column; this memory holds "
                f"{self.memory_.taxonomy.n_levels} label levels."
            )
        self.learned_state_ = _learned.refreshed_state(
            self.memory_,
            self.__dict__.get("learned_state_"),
            n_neighbors=self.n_neighbors,
            rank_offset=self.rank_offset,
            tie_break=self.tie_break,
            batch_size=self.batch_size,
        )
        return self.learned_state_

    @fill_doc
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``p(c | x) = s_c / sum_c' s_c'`` (FORMULAS.md 3).

        %(X_voter_queries)s

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes), or list of ndarray
            %(columns_per_level)s
        """
        return self._answer_blocks(X, vote_proba)

    @fill_doc
    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba` (``-inf`` for a class no
        neighbour voted for), as sklearn classifiers offer it.

        %(X_voter_queries)s

        Returns
        -------
        log_proba : ndarray of shape (n_queries, n_classes), or list of ndarray
            %(columns_per_level)s
        """
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):  # log(0) = -inf is the answer
            if isinstance(proba, list):
                return [np.log(p) for p in proba]
            return np.log(proba)

    @fill_doc
    def predict(self, X) -> np.ndarray:
        """Predicted labels, ties broken by ``tie_break``.

        %(X_voter_queries)s

        Returns
        -------
        y : ndarray of shape (n_queries,) or (n_queries, n_levels)
            Predicted labels; one column per level for multi-output labels.
        """
        return self._answer_blocks(X, vote_prediction)

    def _answer_blocks(self, X, answer):
        """``answer(vote)`` of every query, searched and voted ``batch_size``
        queries at a time into one output.

        Only one block's neighbour record and vote are alive at once: held for
        every query they cost ~50 bytes per query-neighbour pair, 500 MB for
        200k queries at k = 50, where the output is the only thing that must
        grow with the queries. One state of the memory answers every block.
        """
        self._check_vote_params()
        check_is_fitted(self)
        check_int(self, "n_neighbors", self.n_neighbors, low=1)
        check_int(self, "batch_size", self.batch_size, low=1)
        self._check_memory_unchanged()
        X = self._queries(X, densify=False)
        store, size, out = self.memory_, self.batch_size, None
        with store.reading():
            for s in query_blocks(X.shape[0], size, self.verbose, "predict"):
                block = dense(X[s : s + size])
                nb = store.search(block, self.n_neighbors, batch_size=size)
                out = _write_rows(out, answer(self.vote(nb, block)), s, X.shape[0])
                del nb  # before the next block's search
        return out  # validate_data refuses zero queries: out is set

    @fill_doc
    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy; for multi-output labels the subset accuracy (a query
        counts as right only when every level is), as scikit-learn scores
        multi-output classifiers.

        %(X_voter_queries)s
        y : array-like of shape (n_queries,) or (n_queries, n_levels)
            True labels; one column per level for multi-output labels.
        sample_weight : array-like of shape (n_queries,), default=None
            Weights of the queries in the mean; None weighs them equally.

        Returns
        -------
        score : float
            Accuracy of :meth:`predict` on ``X`` against ``y``.
        """
        check_is_fitted(self)
        if self.n_outputs_ == 1:
            return super().score(X, y, sample_weight=sample_weight)
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y must have shape (n_queries, {self.n_outputs_}), one column per "
                f"level; got {y.shape}."
            )
        right = np.all(self.predict(X) == y, axis=1)
        return float(np.average(right, weights=sample_weight))


def vote_proba(vote):
    """The class probabilities of a vote (one array per level)."""
    return [v.proba for v in vote] if isinstance(vote, list) else vote.proba


def vote_prediction(vote):
    """The predicted labels of a vote (levels stacked as columns)."""
    if isinstance(vote, list):
        return stack_levels([v.prediction for v in vote])
    return vote.prediction


def _write_rows(out, rows, start: int, n: int):
    """Write one block's answer (an array, or one per level) at ``start`` of
    the output for ``n`` queries, allocated from the first block."""
    if isinstance(rows, list):
        if out is None:
            out = [None] * len(rows)
        return [_write_rows(o, r, start, n) for o, r in zip(out, rows)]
    if out is None:
        out = np.empty((n, *rows.shape[1:]), dtype=rows.dtype)
    out[start : start + rows.shape[0]] = rows
    return out
