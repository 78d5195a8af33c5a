"""Neighbour weights, class scores and the tie rule (FORMULAS.md section 3).

Pure functions over arrays shaped ``(n_queries, k)``, nearest neighbour first; no
estimator state lives here. A neighbour slot is *valid* when it holds a retrieved
sample that may vote; invalid slots (missing neighbours, hard-pruned samples) get
weight 0 and do not advance the rank counter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skknn.memory.neighbors import Neighbors

VOTING_RULES = ("plurality", "distance", "softmax", "rank")

# How predict breaks exact ties between classes: "nearest" is FORMULAS.md 3's
# rule; "lowest" is scikit-learn's (argmax: the lowest class index), for users
# who need KNeighborsClassifier's predictions exactly.
TIE_RULES = ("nearest", "lowest")

# Scores within this relative distance of the top score count as tied. Scores are
# float64 sums of float32 weights, so mathematically equal sums can differ in the
# last bits depending on summation order; 1e-9 is far above that noise and far
# below any real difference between two votes.
TIE_RTOL = 1e-9


def voting_mask(present: np.ndarray, excluded: np.ndarray | None) -> np.ndarray:
    """Which neighbour slots vote: present and not excluded by hard pruning.

    If every present neighbour of a query is excluded, they all vote after all
    (FORMULAS.md 5: the all-excluded fallback), so no query is left without a vote.
    """
    if excluded is None:
        return present.copy()
    mask = present & ~excluded
    orphan = ~mask.any(axis=1)
    mask[orphan] = present[orphan]
    return mask


def ranks_from_mask(mask: np.ndarray) -> np.ndarray:
    """0-based rank among voting neighbours; -1 where a slot does not vote.

    Ranks close up over excluded neighbours (FORMULAS.md 5, hard pruning).
    """
    ranks = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    ranks[~mask] = -1
    return ranks


def neighbor_weights(
    distances: np.ndarray,
    mask: np.ndarray,
    voting: str | Callable,
    *,
    temperature: float = 0.07,
    rank_offset: float = 2.0,
    distance_power: float = 1.0,
) -> np.ndarray:
    """Voting weight ``w_i`` of each neighbour (FORMULAS.md 3), 0 where not voting.

    Parameters
    ----------
    distances : ndarray of shape (n_queries, k)
        Distances, nearest first.
    mask : ndarray of bool, shape (n_queries, k)
        Slots that vote (see :func:`voting_mask`).
    voting : {"plurality", "distance", "softmax", "rank"} or callable
        The rule; a callable receives ``(distances, ranks)`` (``inf`` distance and
        rank -1 in slots that do not vote) and returns weights of the same shape.
        Infinite weights (``1 / d`` at ``d = 0``) give those neighbours the whole
        vote, as sklearn's ``weights="distance"`` does.
    temperature, rank_offset, distance_power : float
        Parameters of the softmax, rank and distance rules.

    Returns
    -------
    weights : ndarray of shape (n_queries, k), float64
        Non-negative; exponential rules are shifted by the nearest voting distance,
        a constant per query that cancels in the probabilities and keeps the
        nearest weight at 1, so small temperatures never underflow to 0/0.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if callable(voting):
        d_in = np.where(mask, distances, np.inf)
        with np.errstate(divide="ignore"):  # 1 / d at d = 0 is +inf, handled below
            weights = np.asarray(voting(d_in, ranks_from_mask(mask)), dtype=np.float64)
        if weights.shape != distances.shape:
            raise ValueError(
                "The voting callable must return weights of shape "
                f"{distances.shape}; got {weights.shape}."
            )
        weights = np.where(mask, weights, 0.0)
        # sklearn's rule for weights="distance": a query that coincides with
        # memory samples (an infinite 1 / d) is decided by those samples alone.
        exact = np.isposinf(weights)
        hit = exact.any(axis=1)
        weights[hit] = exact[hit]
        if np.isnan(weights).any() or np.any(weights < 0):
            raise ValueError("The voting callable returned negative or NaN weights.")
    elif voting == "plurality":
        weights = np.ones_like(distances)
    elif voting == "rank":
        weights = 1.0 / (np.maximum(ranks_from_mask(mask), 0) + rank_offset)
    elif voting in ("softmax", "distance"):
        nearest = np.min(np.where(mask, distances, np.inf), axis=1, keepdims=True)
        nearest[~np.isfinite(nearest)] = 0.0
        scale = 1.0 / temperature if voting == "softmax" else distance_power
        with np.errstate(invalid="ignore", over="ignore"):
            weights = np.exp(-(distances - nearest) * scale)
    else:  # validated by the estimators; a clear message for direct callers
        raise ValueError(
            f"Unknown voting {voting!r}. Valid rules are {list(VOTING_RULES)} "
            "or a callable."
        )
    return np.where(mask, weights, 0.0)


def class_scores(weights: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores ``s_c = sum_{i: y_i = c} w_i``, shape (n_queries, n_classes).

    ``weights`` already include the reliabilities ``r_i``; ``labels`` are class
    indices; slots with zero weight may hold any index >= 0.
    """
    n_queries = weights.shape[0]
    flat = (np.arange(n_queries)[:, None] * n_classes + labels).ravel()
    scores = np.bincount(flat, weights=weights.ravel(), minlength=n_queries * n_classes)
    return scores.reshape(n_queries, n_classes)


def scores_to_proba(scores: np.ndarray) -> np.ndarray:
    """Normalise class scores to probabilities; an all-zero row is an error, never
    a NaN."""
    total = scores.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(
            "All neighbour weights of a query are zero, so no class can be voted "
            "for. A custom voting callable must give some neighbour a positive weight."
        )
    return scores / total


def predict_with_ties(
    scores: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    tie_break: str = "nearest",
) -> np.ndarray:
    """Class index per query; ties go to the class of the nearest tied neighbour.

    Among classes whose score equals the top score (within :data:`TIE_RTOL`), the
    winner is the class of the nearest-ranked voting neighbour that belongs to one
    of them (FORMULAS.md 3). ``tie_break="lowest"`` is sklearn's rule instead: a
    plain argmax, the lowest class index among exactly equal scores.
    """
    if tie_break == "lowest":
        # No tolerance: sklearn compares its float64 scores exactly.
        return np.argmax(scores, axis=1)
    top = scores.max(axis=1, keepdims=True)
    tied = scores >= top * (1.0 - TIE_RTOL)
    rows = np.arange(scores.shape[0])[:, None]
    tied_slot = tied[rows, labels] & mask & (top > 0)
    has = tied_slot.any(axis=1)
    first = np.argmax(tied_slot, axis=1)
    pred = np.argmax(scores, axis=1)
    pred[has] = labels[has, first[has]]
    return pred


def align_proba_with_ties(proba: np.ndarray, pred: np.ndarray) -> None:
    """Make ``argmax(proba) == pred`` where the tie rule chose another tied class.

    Tied probabilities are equal, so argmax would pick the lowest class index while
    :func:`predict_with_ties` picks the nearest neighbour's class. The winner gets
    a relative nudge of 1e-12 (far below any meaningful probability, far above
    float64 resolution) so every sklearn tool that takes ``argmax(predict_proba)``
    agrees with ``predict``. Rows are renormalised; in place.
    """
    rows = np.flatnonzero(np.argmax(proba, axis=1) != pred)
    if rows.size:
        proba[rows, pred[rows]] = proba[rows].max(axis=1) * (1.0 + 1e-12)
        proba[rows] /= proba[rows].sum(axis=1, keepdims=True)


def accuracy_by_k(
    weights: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    y_true: np.ndarray,
    n_classes: int,
    reliability: np.ndarray | None = None,
) -> np.ndarray:
    """Accuracy at every ``k = 1..K`` from one retrieval of ``K`` neighbours.

    The scores at ``k`` are prefix sums over the ranked neighbours (FORMULAS.md 3),
    so one search serves every ``k``. ``weights`` must have been computed for the
    full ``K`` (rank and exponential weights do not depend on ``K``).
    """
    n_queries, k_max = weights.shape
    w = weights if reliability is None else weights * reliability
    scores = np.zeros((n_queries, n_classes))
    rows = np.arange(n_queries)
    acc = np.empty(k_max)
    for k in range(k_max):
        scores[rows, labels[:, k]] += w[:, k]
        pred = predict_with_ties(scores, labels[:, : k + 1], mask[:, : k + 1])
        acc[k] = np.mean(pred == y_true)
    return acc


@dataclass(frozen=True)
class Vote:
    """The outcome of voting over one :class:`~skknn.Neighbors` record.

    ``weights`` (n_queries, k): each neighbour's weight times its reliability (0
    where it does not vote); ``mask``: the slots that vote; ``scores`` and
    ``proba`` (n_queries, n_classes); ``winner``: the predicted class code per
    query (ties by the nearest tied neighbour); ``classes``: the labels the codes
    index.
    """

    weights: np.ndarray
    mask: np.ndarray
    scores: np.ndarray
    proba: np.ndarray
    winner: np.ndarray
    classes: np.ndarray

    @property
    def prediction(self) -> np.ndarray:
        return self.classes[self.winner]


def record_mask(neighbors: Neighbors) -> np.ndarray:
    """Voting mask of a record: present, not excluded (with the fallback)."""
    excluded = neighbors.excluded if neighbors.excluded.any() else None
    return voting_mask(neighbors.present, excluded)


def vote(
    neighbors: Neighbors,
    voting: str | Callable,
    *,
    temperature: float = 0.07,
    rank_offset: float = 2.0,
    distance_power: float = 1.0,
    tie_break: str = "nearest",
) -> Vote:
    """Vote over retrieved neighbours (FORMULAS.md 3 and 5).

    Weights by ``voting``, times reliabilities; hard-pruned neighbours do not
    vote and ranks close up over them; probabilities are normalised scores and
    ``argmax(proba)`` agrees with the tie rule (``tie_break``, see
    :func:`predict_with_ties`). A directionless query (a zero vector under
    normalisation) gets uniform probabilities and the first class.
    """
    weights, mask = weigh(
        neighbors,
        voting,
        temperature=temperature,
        rank_offset=rank_offset,
        distance_power=distance_power,
    )
    return decide(
        weights, mask, neighbors.labels, neighbors.classes, neighbors, tie_break
    )


def vote_levels(
    neighbors: Neighbors,
    voting: str | Callable,
    *,
    tie_break: str = "nearest",
    **params,
) -> list[Vote]:
    """One vote per level of multi-output labels, from one set of weights.

    Each level replaces the neighbours' label paths by their labels at that
    level and votes over those (FORMULAS.md 7, [VM] 3.6): weights, ranks and the
    tie rule are the same as for one label column.
    """
    weights, mask = weigh(neighbors, voting, **params)
    votes = []
    for level in range(neighbors.taxonomy.n_levels):
        at = neighbors.level(level)
        votes.append(decide(weights, mask, at.labels, at.classes, neighbors, tie_break))
    return votes


def weigh(neighbors: Neighbors, voting: str | Callable, **params):
    """Each neighbour's weight times its reliability, and the voting mask."""
    mask = record_mask(neighbors)
    weights = neighbor_weights(neighbors.distances, mask, voting, **params)
    weights = weights * neighbors.reliability
    lost = neighbors.directionless
    if lost is not None and lost.any():
        weights[lost] = 0.0  # no direction: no neighbour is nearer than another
    return weights, mask


def decide(
    weights: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    neighbors: Neighbors,
    tie_break: str = "nearest",
    scores: np.ndarray | None = None,
) -> Vote:
    """Scores, probabilities and winners of weighted neighbours whose class codes
    (into ``classes``) are ``labels``; a directionless query of ``neighbors``
    gets a uniform answer and the first class. ``scores`` given (a learned
    aggregation's) replace the weighted sums."""
    if scores is None:
        scores = class_scores(weights, labels, len(classes))
    lost = neighbors.directionless
    if lost is not None and lost.any():
        scores[lost] = 1.0
    proba = scores_to_proba(scores)
    winner = predict_with_ties(scores, labels, mask, tie_break)
    if lost is not None and lost.any():
        winner[lost] = 0
    align_proba_with_ties(proba, winner)
    return Vote(weights, mask, scores, proba, winner, classes)


def rerank(
    vote: Vote, neighbors: Neighbors, scores, tie_break: str = "nearest"
) -> Vote:
    """The vote with class scores from a reranker instead (FORMULAS.md 7)."""
    scores = np.asarray(scores, dtype=np.float64)
    shape = (neighbors.n_queries, len(neighbors.classes))
    if scores.shape != shape:
        raise ValueError(
            f"The reranker must return scores of shape {shape}; got {scores.shape}."
        )
    if not np.all(np.isfinite(scores)) or np.any(scores < 0):
        raise ValueError("The reranker returned negative, NaN or infinite scores.")
    proba = scores_to_proba(scores)
    winner = predict_with_ties(scores, neighbors.labels, vote.mask, tie_break)
    align_proba_with_ties(proba, winner)
    return Vote(vote.weights, vote.mask, scores, proba, winner, vote.classes)
