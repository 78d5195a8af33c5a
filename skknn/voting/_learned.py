"""Learned aggregation: a small model that scores each (query, class) pair from
class-agnostic features of the retrieved neighbours (``voting="learned"``).

Rank voting weighs a neighbour by its rank alone; on hard data the right class
is often among the neighbours (hit@50 near 1) yet loses the vote. The
visual-memory paper closes part of that gap by re-ranking. Here the re-ranker
sees only what does not name a class (its vote share and order, how many of the
neighbours carry it and at which ranks, how near its nearest ones are against the
query's whole distance profile), so it is trained on the memory's own
leave-one-out neighbour records and scores classes it never saw in training:
classes added later by ``partial_fit`` need no retraining.

The model is ``StandardScaler`` + ``LogisticRegression`` from scikit-learn. Files
do not carry it: it is derived from the memory alone, so a loaded or reopened
memory trains it again at its first vote, to the same weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from skknn.memory.neighbors import Neighbors
from skknn.voting import _rules

# Rank buckets [a, b): the model learns its own weight profile over ranks.
RANK_BUCKETS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64))
# Temperatures of the kernel shares, in units of the query's own distance spread
# (d_k - d_1), so they mean the same under every metric and scale.
KERNEL_TEMPERATURES = (0.05, 0.2, 1.0)
# Where a class has fewer than three neighbours, its missing "nearest distances"
# read as beyond the farthest neighbour (relative distance 1).
_ABSENT_DISTANCE = 1.5
# Queries per block of the (block, k, k) same-class masks: bounded memory.
_BLOCK = 1024
# Leave-one-out queries the model is trained on at most (a random subset
# beyond): its few weights settle long before, and fit stays linear in n.
MAX_TRAINING_QUERIES = 20_000
N_FEATURES = 11 + len(RANK_BUCKETS) + len(KERNEL_TEMPERATURES) + 4


def pair_features(
    distances: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    right: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-agnostic features of every class among each query's neighbours.

    Parameters
    ----------
    distances : ndarray of shape (n_queries, k)
        Neighbour distances, nearest first.
    weights : ndarray of shape (n_queries, k)
        Rank-voting weights (reliabilities included), 0 where a slot does not vote.
    mask : ndarray of bool, shape (n_queries, k)
        Slots that vote.
    labels : ndarray of int, shape (n_queries, k)
        Class codes.
    right : ndarray of shape (n_queries, k)
        Whether each neighbour was itself classified right by leave-one-out
        rank voting when it entered the memory (1.0 or 0.0): neighbours from
        clean regions of the memory are worth more than those from mixed ones.

    Returns
    -------
    features : ndarray of shape (n_pairs, N_FEATURES), float64
    query : ndarray of int64, shape (n_pairs,)
        The query of each pair.
    code : ndarray of int64, shape (n_pairs,)
        The class code of each pair: each class among a query's voting
        neighbours once, in the order of its nearest neighbour.
    """
    parts = [
        _block_features(
            distances[s : s + _BLOCK],
            weights[s : s + _BLOCK],
            mask[s : s + _BLOCK],
            labels[s : s + _BLOCK],
            right[s : s + _BLOCK],
            s,
        )
        for s in range(0, len(labels), _BLOCK)
    ]
    if not parts:
        return np.empty((0, N_FEATURES)), np.empty(0, np.int64), np.empty(0, np.int64)
    return tuple(np.concatenate(p) for p in zip(*parts))


def _block_features(D, W, mask, L, R, offset: int):
    b, k = L.shape
    D = np.where(mask, np.asarray(D, np.float64), np.nan)
    W = np.asarray(W, np.float64)
    same = (L[:, :, None] == L[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    # a class's first voting slot stands for the class
    first = mask & ~np.tril(same, -1).any(axis=2)
    total = np.maximum(W.sum(axis=1, keepdims=True), 1e-300)
    vote = (same * W[:, None, :]).sum(axis=2) / total
    d1 = np.nanmin(np.where(mask.any(1, keepdims=True), D, 0.0), axis=1, keepdims=True)
    dk = np.nanmax(np.where(mask.any(1, keepdims=True), D, 0.0), axis=1, keepdims=True)
    spread = np.maximum(dk - d1, 1e-12)
    rel = (D - d1) / spread  # nan where not voting
    n_valid = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    ranks = np.cumsum(mask, axis=1) - 1  # ranks close up over non-voting slots
    count = same.sum(axis=2)

    WR = W * np.asarray(R, np.float64)
    vote_right = (same * WR[:, None, :]).sum(axis=2) / total
    count_right = (same * (R * mask)[:, None, :]).sum(axis=2) / n_valid
    cols = [vote, count / n_valid, ranks / k, vote_right, count_right]
    top = np.where(first, vote, -np.inf)
    order = np.argsort(np.argsort(-top, axis=1, kind="stable"), axis=1)
    best = top.max(axis=1, keepdims=True)
    second = np.sort(top, axis=1)[:, -2:-1]
    second = np.where(np.isfinite(second), second, 0.0)
    cols += [vote - best, vote - second, order / k]
    rank_of = np.where(mask, ranks, -1)
    for lo, hi in RANK_BUCKETS:
        inside = (rank_of >= lo) & (rank_of < hi)
        cols.append((same & inside[:, None, :]).sum(axis=2) / (hi - lo))
    rel_same = np.where(same, rel[:, None, :], np.inf)
    if k < 3:  # fewer neighbours than nearest distances: the rest are absent
        rel_same = np.pad(
            rel_same, ((0, 0), (0, 0), (0, 3 - k)), constant_values=np.inf
        )
    nearest = np.sort(rel_same, axis=2)[:, :, :3]
    nearest = np.where(np.isfinite(nearest), nearest, _ABSENT_DISTANCE)
    cols += [nearest[:, :, 0], nearest[:, :, 1], nearest[:, :, 2]]
    for t in KERNEL_TEMPERATURES:
        kern = np.where(mask, np.exp(-np.nan_to_num(rel, nan=0.0) / t), 0.0)
        norm = np.maximum(kern.sum(axis=1, keepdims=True), 1e-300)
        cols.append((same * kern[:, None, :]).sum(axis=2) / norm)
    d10 = np.where(mask & (rank_of < 10), D, -np.inf).max(axis=1, keepdims=True)
    d10 = np.where(np.isfinite(d10), d10, d1)
    profile = [d1, d10, dk, (d10 - d1) / spread]
    cols += [np.broadcast_to(p, (b, k)) for p in profile]
    F = np.stack(cols, axis=2)
    q, j = np.nonzero(first)
    return F[q, j], q.astype(np.int64) + offset, L[q, j].astype(np.int64)


class LearnedAggregation:
    """The fitted scorer of ``voting="learned"``: ``P(class is right | features)``.

    Parameters
    ----------
    C : float, default=10.0
        Inverse regularisation of the logistic regression.

    Attributes
    ----------
    mean_, scale_ : ndarray of shape (N_FEATURES,)
        The feature scaler's statistics.
    coef_ : ndarray of shape (N_FEATURES,)
    intercept_ : float

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.voting._learned import LearnedAggregation
    >>> rng = np.random.default_rng(0)
    >>> D = np.sort(rng.random((200, 5)), axis=1)
    >>> L = rng.integers(0, 3, (200, 5))
    >>> W = 1.0 / (np.arange(5) + 2.0) * np.ones((200, 1))
    >>> M = np.ones((200, 5), bool)
    >>> R = rng.integers(0, 2, (200, 5))
    >>> agg = LearnedAggregation().fit(D, W, M, L, R, truth=L[:, 0])
    >>> agg.scores(D, W, M, L, R, n_classes=3).shape
    (200, 3)
    """

    def __init__(self, C: float = 10.0):
        self.C = C

    def fit(self, distances, weights, mask, labels, right, truth) -> LearnedAggregation:
        """Train on neighbour records whose true class codes are ``truth``.

        Raises ``ValueError`` when the pairs are all right or all wrong (nothing
        to learn from): the caller falls back to rank voting.
        """
        F, q, code = pair_features(distances, weights, mask, labels, right)
        target = code == np.asarray(truth)[q]
        if target.all() or not target.any():
            raise ValueError(
                "Every class among the neighbours was right (or every one wrong) "
                "in the training records: there is nothing to learn from."
            )
        scaler = StandardScaler().fit(F)
        model = LogisticRegression(C=self.C, max_iter=5000)
        model.fit(scaler.transform(F), target)
        self.mean_ = scaler.mean_
        self.scale_ = scaler.scale_
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        return self

    def scores(
        self, distances, weights, mask, labels, right, n_classes: int
    ) -> np.ndarray:
        """``(n_queries, n_classes)`` scores: each present class's probability of
        being right, 0 for classes with no voting neighbour."""
        F, q, code = pair_features(distances, weights, mask, labels, right)
        z = ((F - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        out = np.zeros((len(labels), n_classes))
        # the logistic function without overflow; > 0 for every present class
        out[q, code] = np.exp(-np.logaddexp(0.0, -z))
        return out


@dataclass(frozen=True)
class LearnedState:
    """What ``voting="learned"`` derives from one version of a memory.

    Derived from the memory alone (its leave-one-out records), so a memory
    edited or reopened anywhere yields the same state again.

    Attributes
    ----------
    version : int
        The memory's version this state describes.
    ids : ndarray of int64
        The memory's sample ids, sorted.
    right : ndarray of float32
        For each id, 1.0 where the sample's leave-one-out rank vote was right.
    aggregation : LearnedAggregation or None
        The scorer; None where the records held nothing to learn from (voting
        then falls back to rank voting).
    params : tuple
        ``(n_neighbors, rank_offset, tie_break)`` it was computed with.
    """

    version: int
    ids: np.ndarray
    right: np.ndarray
    aggregation: LearnedAggregation | None
    params: tuple = ()

    def right_of(self, ids: np.ndarray) -> np.ndarray:
        """Rightness of the samples ``ids`` (any shape); 0 for unknown ids."""
        ids = np.asarray(ids)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, max(len(self.ids) - 1, 0))
        if not len(self.ids):
            return np.zeros(ids.shape, np.float32)
        return np.where(self.ids[pos] == ids, self.right[pos], 0.0).astype(np.float32)

    def scores(self, neighbors: Neighbors, weights, mask) -> np.ndarray:
        """Class scores of a neighbour record (rank-vote ``weights`` and
        ``mask`` from :func:`~skknn.voting._rules.weigh`)."""
        right = self.right_of(neighbors.ids) * mask
        return self.aggregation.scores(
            neighbors.distances,
            weights,
            mask,
            neighbors.labels,
            right,
            len(neighbors.classes),
        )


def refreshed_state(
    memory,
    state: LearnedState | None,
    *,
    n_neighbors: int,
    rank_offset: float,
    tie_break: str,
    batch_size: int,
) -> LearnedState:
    """The learned state of ``memory`` now, from ``state`` where it still holds.

    Samples only added since ``state`` get their rightness and the scorer is
    kept (it is class-agnostic: it scores classes it never saw). Any removal
    retrains from scratch: nothing derived from an unlearned sample survives.
    """
    params = (int(n_neighbors), float(rank_offset), str(tie_break))
    if state is not None and state.params != params:
        state = None  # the rightness depends on them
    if state is not None and state.version == memory.version:
        return state  # every prediction asks: nothing computed on this path
    ids = np.sort(memory.ids())
    kept = state is not None and bool(np.isin(state.ids, ids).all())
    if kept:
        new = ids[~np.isin(ids, state.ids)]
        right = _rightness(
            memory,
            new,
            k=n_neighbors,
            rank_offset=rank_offset,
            tie_break=tie_break,
            batch_size=batch_size,
        )
        all_ids = np.concatenate([state.ids, new])
        order = np.argsort(all_ids, kind="stable")
        rights = np.concatenate([state.right, right])[order]
        state = LearnedState(
            memory.version, all_ids[order], rights, state.aggregation, params
        )
        if state.aggregation is not None:
            return state
    if len(ids) < 2:
        return _rank_only(
            LearnedState(
                memory.version, ids, np.zeros(len(ids), np.float32), None, params
            ),
            "The memory holds fewer than two samples.",
        )
    search = dict(k=n_neighbors, rank_offset=rank_offset, tie_break=tie_break)
    if len(ids) <= MAX_TRAINING_QUERIES:  # one leave-one-out pass serves both
        nb = memory.search_self(ids, n_neighbors, batch_size=batch_size)
        right = _right_of_record(nb, rank_offset, tie_break)
    else:
        right = _rightness(memory, ids, batch_size=batch_size, **search)
        rng = np.random.default_rng(0)
        train = np.sort(rng.choice(ids, MAX_TRAINING_QUERIES, replace=False))
        nb = memory.search_self(train, n_neighbors, batch_size=batch_size)
    partial = LearnedState(memory.version, ids, right, None, params)
    weights, mask = _rules.weigh(nb, "rank", rank_offset=rank_offset)
    try:
        agg = LearnedAggregation().fit(
            nb.distances,
            weights,
            mask,
            nb.labels,
            partial.right_of(nb.ids) * mask,
            nb.query_labels,
        )
    except ValueError as exc:
        return _rank_only(partial, str(exc))
    return LearnedState(memory.version, ids, right, agg, params)


def _rank_only(state: LearnedState, why: str) -> LearnedState:
    warnings.warn(
        f"voting='learned' votes by rank until the memory changes: {why}",
        UserWarning,
        stacklevel=4,
    )
    return state


def _rightness(memory, ids, *, k: int, rank_offset, tie_break: str, batch_size):
    """1.0 where a sample's leave-one-out rank vote names its own class."""
    out = np.zeros(len(ids), np.float32)
    block = max(batch_size, 4096)
    for s in range(0, len(ids), block):
        nb = memory.search_self(ids[s : s + block], k, batch_size=batch_size)
        out[s : s + block] = _right_of_record(nb, rank_offset, tie_break)
    return out


def _right_of_record(nb: Neighbors, rank_offset: float, tie_break: str) -> np.ndarray:
    winner = _rules.vote(
        nb, "rank", rank_offset=rank_offset, tie_break=tie_break
    ).winner
    return (winner == nb.query_labels).astype(np.float32)
