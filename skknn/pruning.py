"""MemoryPruner: hard and soft pruning of a kNN memory by wrong-decision counts.

[VM]'s pruning (FORMULAS.md 5): query the memory with each of its own samples,
leaving the query out, and charge every retrieved neighbour whose label differs
from the query's label with one wrong decision. Samples with many wrong decisions
are excluded from voting (hard) or vote with a smaller weight (soft).

The counts are kept up to date under :meth:`MemoryPruner.partial_fit` and
:meth:`MemoryPruner.unlearn` without recounting the memory: each sample's
*radius* (the distance to its ``m``-th leave-one-out neighbour) is stored, and
only the queries whose neighbour lists an added or removed sample can enter or
leave (it lies within their radius) are searched again.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from skknn._certificates import DelegatedCertificates
from skknn._docstrings import fill_doc
from skknn._param_validation import HasMethods, Interval, StrOptions, check_params
from skknn._validation import (
    DefaultNestedMixin,
    restore_attributes_on_error,
    validate_xy,
)
from skknn.io import (
    Persistable,
    labels_to_json,
    params_from_json,
    params_to_json,
    register,
    registered,
    subtree,
)
from skknn.memory.locks import GuardedState, edits, reads
from skknn.memory.protocols import Store
from skknn.voter import KNNVoter
from skknn.voting._wrong_decisions import (
    IdPositions,
    count_wrong_decisions,
    soft_reliability,
)

__all__ = [
    "MemoryPruner",
    "count_wrong_decisions",
    "pruning_summary",
    "soft_reliability",
]

logger = logging.getLogger(__name__)

MODES = ("soft", "hard")
# What validate_data sets on a first call: restored when the call fails later.
_SEEN_FEATURES = ("n_features_in_", "feature_names_in_")
# [VM]'s numbers of leave-one-out neighbours per mode (FORMULAS.md 5).
DEFAULT_N_NEIGHBORS = {"hard": 100, "soft": 10}


@register
@fill_doc
class MemoryPruner(
    DefaultNestedMixin,
    DelegatedCertificates,
    GuardedState,
    Persistable,
    ClassifierMixin,
    BaseEstimator,
):
    """Hard or soft pruning of a kNN memory by leave-one-out wrong decisions.

    Wraps an estimator that has a memory (a :class:`~skknn.KNNVoter`, or a
    :class:`~skknn.JointKNNClassifier`, whose kNN memory ``knn_`` is pruned).
    After fitting a clone of it, every memory sample queries the memory, leaving
    itself out, and each retrieved neighbour whose label differs from the
    query's label gets one wrong decision (FORMULAS.md 5). Hard pruning excludes
    samples with ``threshold`` or more wrong decisions from voting; soft pruning
    lets every sample vote with reliability ``reliability_scale / (1 + n)``
    (1.0 for ``n = 0``). Predictions come from the pruned estimator.

    Parameters
    ----------
    estimator : KNNVoter or JointKNNClassifier, default=None
        The estimator whose memory is pruned; None means ``KNNVoter()``. A clone
        is fitted into ``estimator_``, so ``estimator__n_neighbors`` works in
        grid searches.
    mode : {"soft", "hard"}, default="soft"
        ``"hard"``: samples with ``wrong_counts_ >= threshold`` do not vote;
        ``"soft"``: samples vote with weight ``reliability_``.
    n_neighbors : int, default=None
        Leave-one-out neighbours ``m`` per query when counting; None means
        [VM]'s 100 for hard and 10 for soft pruning.
    threshold : int, default=128
        Hard pruning excludes samples with at least this many wrong decisions.
    reliability_scale : float, default=1.75
        Soft pruning's numerator (> 0): 1 wrong decision gives 0.875 by default,
        10 give 0.159.
    batch_size : int, default=4096
        Queries searched per block while counting: the memory is counted without
        an ``n x n`` matrix.
    verbose : bool, default=False
        Show a progress bar while counting.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``, its memory pruned.
    wrong_counts_ : ndarray of shape (n_samples,), dtype int64
        Wrong decisions of each memory sample, aligned with :attr:`sample_ids_`.
    reliability_ : ndarray of shape (n_samples,)
        Voting weight of each memory sample (all 1.0 in hard mode).
    pruned_ids_ : ndarray of int64
        Sample ids excluded from voting (hard mode) or voting with reliability
        below 1 (soft mode).
    sample_ids_ : ndarray of shape (n_samples,)
        Ids of the memory samples, in memory order.
    n_neighbors_ : int
        The number of leave-one-out neighbours the counts were made with.
    classes_ : ndarray of shape (n_classes,)
        Known labels, as the estimator's.
    n_features_in_ : int
        Embedding width.

    See Also
    --------
    skknn.KNNVoter : The memory and its vote.
    skknn.JointKNNClassifier : A head trained with kNN guidance.

    Notes
    -----
    Neighbours at equal distance are ordered by sample id while counting, so the
    counts do not depend on the order of the memory's rows. With exact search
    (``index="exact"`` or ``"flat"``) the counts after :meth:`partial_fit` and
    :meth:`unlearn` equal those of a fresh fit on the resulting memory. With an
    approximate index they follow what the index retrieves, and an HNSW graph
    that changes as samples are added may make them drift slightly from a refit.
    The pruner follows the memory through its public surface only: it keeps
    the memory's ``(uid, version)`` after its own edits, and a memory edited
    behind its back (another version), replaced (a
    :class:`~skknn.JointKNNClassifier` that retrains on :meth:`unlearn` builds a
    new one) or counted with another ``n_neighbors`` is counted afresh.

    Counting costs one leave-one-out search of the memory, ``m + 2`` neighbours
    per query. :meth:`partial_fit` of ``b`` samples costs a ``b``-query search,
    a distance computation between the ``b`` samples and the memory (to find
    the queries they can enter), and two searches of those queries.

    Examples
    --------
    >>> from skknn import KNNVoter, MemoryPruner
    %(mislabelled_points)s
    >>> voter = KNNVoter(2, voting="plurality", index="exact")
    >>> voter.fit(X, y).predict([[.2, .8]])  # the mislabelled sample wins the tie
    array([0])
    >>> pruner = MemoryPruner(voter, n_neighbors=2).fit(X, y)
    >>> pruner.wrong_counts_
    array([0, 0, 0, 1, 1, 2])
    >>> pruner.reliability_
    array([1.        , 1.        , 1.        , 0.875     , 0.875     ,
           0.58333333])
    >>> pruner.predict([[.2, .8]])  # it now votes with weight 0.58 < 0.875
    array([1])
    >>> pruner.pruned_ids_
    array([3, 4, 5])
    >>> pruner.unlearn([5]).wrong_counts_  # sample 2 is now the nearest other class
    array([0, 0, 2, 0, 0])
    """

    _parameter_constraints: dict = {
        # whether it has a kNN memory shows once it is fitted (_store)
        "estimator": [HasMethods(["fit"]), None],
        "mode": [StrOptions(set(MODES))],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), None],
        "threshold": [Interval(Integral, 1, None, closed="left")],
        "reliability_scale": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
    }
    _parameter_hints: dict = {
        "estimator": (
            "Pass an estimator with a kNN memory (KNNVoter, JointKNNClassifier)."
        ),
    }
    _default_nested = ("estimator", KNNVoter)

    def __init__(
        self,
        estimator=None,
        *,
        mode: str = "soft",
        n_neighbors: int | None = None,
        threshold: int = 128,
        reliability_scale: float = 1.75,
        batch_size: int = 4096,
        verbose: bool = False,
    ):
        self.estimator = estimator
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.threshold = threshold
        self.reliability_scale = reliability_scale
        self.batch_size = batch_size
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------
    def _check_params(self) -> None:
        check_params(self)

    def _m(self) -> int:
        if self.n_neighbors is not None:
            return int(self.n_neighbors)
        return DEFAULT_N_NEIGHBORS[self.mode]

    def _new_estimator(self):
        return KNNVoter() if self.estimator is None else clone(self.estimator)

    @staticmethod
    def _store(est) -> Store:
        store = getattr(est, "memory_", None)
        if not isinstance(store, Store):
            raise TypeError(
                "MemoryPruner needs an estimator with a kNN memory (KNNVoter, "
                f"JointKNNClassifier); the fitted {type(est).__name__} has none."
            )
        return store

    def _certified_voter(self):
        check_is_fitted(self)
        voter = self.estimator_
        # JOINT keeps its memory in a voter of its own
        return voter._certified_voter() if hasattr(voter, "knn_") else voter

    def _require(self, est, method: str) -> None:
        if not hasattr(est, method):
            raise TypeError(
                f"MemoryPruner.{method} needs an estimator with {method}; "
                f"{type(est).__name__} has none."
            )

    # -- fitting --------------------------------------------------------------
    @edits
    def fit(self, X, y, sample_ids=None, sample_weight=None):
        """Fit a clone of the estimator, count wrong decisions and prune.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Labels.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids of the memory samples; default ``0 .. n_samples - 1``.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the estimator: each sample's vote weight, multiplied by
            the reliability pruning gives it; zero leaves the sample out (it is
            neither stored nor counted).

        Returns
        -------
        self : MemoryPruner
            The fitted pruner.
        """
        self._check_params()
        with restore_attributes_on_error(self, _SEEN_FEATURES):
            X, y = validate_xy(self, X, y, reset=True)
            est = self._new_estimator()
            est.fit(X, y, **_ids_kwarg(sample_ids), **_weight_kwarg(sample_weight))
        self._publish_recount(est)
        return self

    @edits
    @fill_doc
    def partial_fit(self, X, y, classes=None, sample_ids=None, sample_weight=None):
        """Add samples to the memory and update every count they change.

        The new samples' own wrong decisions are counted, and so are the changes
        in the neighbour lists of memory samples that the new samples enter
        (found by their stored radii, without recounting the memory); then the
        pruning rule is applied again. The result equals a fresh :meth:`fit` on
        all samples (exact search; see Notes of the class).

        %(partial_fit_Xy)s
        classes : array-like, default=None
            Labels to know even before any of their samples arrive.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids not yet used; default: fresh ids.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the estimator (see :meth:`fit`).

        Returns
        -------
        self : MemoryPruner
            The pruner, its memory grown and its counts updated.
        """
        self._check_params()
        with restore_attributes_on_error(self, _SEEN_FEATURES):
            return self._partial_fit(X, y, classes, sample_ids, sample_weight)

    def _partial_fit(self, X, y, classes, sample_ids, sample_weight):
        first_call = not hasattr(self, "estimator_")
        X, y = validate_xy(self, X, y, reset=first_call)
        kwargs = {
            "classes": classes,
            **_ids_kwarg(sample_ids),
            **_weight_kwarg(sample_weight),
        }
        if first_call:
            est = self._new_estimator()
            self._require(est, "partial_fit")
            est.partial_fit(X, y, **kwargs)
            self._publish_recount(est)
            return self

        est = self.estimator_
        self._require(est, "partial_fit")
        store = self._store(est)
        m = self._m()
        in_sync = self._in_sync(store) and m == self.n_neighbors_
        if in_sync:
            # Queries whose lists the new samples enter: remove their old votes
            # now, while the memory still holds their old lists.
            near = store.within_radius(self._ids, self._radii, X=X)
            affected = self._ids[near]
            counts = self.wrong_counts_ - self._count(store, m, affected)[0]
        est.partial_fit(X, y, **kwargs)
        if not (in_sync and self._edited_once(est, store)):
            logger.debug("memory changed outside MemoryPruner: counting afresh")
            self._publish_recount(est)
            return self
        all_ids = store.ids()
        new_ids = all_ids[~np.isin(all_ids, self._ids)]
        ids = np.concatenate([self._ids, new_ids])
        counts = np.concatenate([counts, np.zeros(len(new_ids), np.int64)])
        radii = np.concatenate(
            [self._radii, np.full(len(new_ids), np.inf, dtype=np.float32)]
        )
        queries = np.concatenate([affected, new_ids])
        delta, query_radii = self._count(store, m, queries, ids)
        counts += delta
        radii[IdPositions(ids)(queries)] = query_radii
        logger.debug(
            "partial_fit: %d new samples, %d old queries re-searched",
            len(new_ids),
            affected.size,
        )
        self._publish(est, ids, counts, radii)
        return self

    @edits
    def unlearn(self, sample_ids, *, retrain=None, retrain_index=None):
        """Remove samples from the memory and their part in everyone's counts.

        Their own queries' wrong decisions are withdrawn, and memory samples
        whose neighbour lists held them are searched again (they now see a
        replacement neighbour). The counts equal those of a memory that never
        held the removed samples (exact search). Removing every sample is the
        estimator's call: a KNNVoter's memory is left empty (prediction says so
        until :meth:`partial_fit`), a JointKNNClassifier retraining refuses.

        Parameters
        ----------
        sample_ids : array-like of int
            Ids (as in :attr:`sample_ids_`) to remove; all must be in memory.
        retrain : bool, default=None
            Passed to the estimator's ``unlearn`` when given
            (:meth:`JointKNNClassifier.unlearn`).
        retrain_index : bool, default=None
            Passed to the estimator's ``unlearn`` when given
            (:meth:`KNNVoter.unlearn`).

        Returns
        -------
        self : MemoryPruner
            The pruner, without the removed samples.
        """
        check_is_fitted(self)
        self._check_params()
        est = self.estimator_
        self._require(est, "unlearn")
        store = self._store(est)
        removed = store.check_removable(sample_ids)
        options = {
            name: value
            for name, value in (("retrain", retrain), ("retrain_index", retrain_index))
            if value is not None
        }
        m = self._m()
        in_sync = self._in_sync(store) and m == self.n_neighbors_
        if in_sync:
            gone = np.isin(self._ids, removed)
            kept_ids = self._ids[~gone]
            near = store.within_radius(kept_ids, self._radii[~gone], ids=removed)
            affected = kept_ids[near]
            queries = np.concatenate([affected, removed])
            counts = self.wrong_counts_ - self._count(store, m, queries)[0]
        est.unlearn(removed, **options)
        if not (in_sync and self._edited_once(est, store)):
            logger.debug("memory rebuilt by the estimator: counting afresh")
            self._publish_recount(est)
            return self
        counts, radii = counts[~gone], self._radii[~gone]
        delta, query_radii = self._count(store, m, affected, kept_ids)
        counts += delta
        radii[IdPositions(kept_ids)(affected)] = query_radii
        if store.n_samples < 2:
            radii[:] = np.inf
        self._publish(est, kept_ids, counts, radii)
        return self

    # -- counting -------------------------------------------------------------
    def _count(self, store, m: int, query_ids=None, sample_ids=None):
        """Wrong decisions charged by ``query_ids`` (all if None), in the order
        of ``sample_ids`` (the pruner's own ids if None), and the queries' radii."""
        n_queries = store.n_samples if query_ids is None else len(query_ids)
        progress = None
        if self.verbose and n_queries > self.batch_size:
            from tqdm.auto import tqdm

            progress = tqdm(total=n_queries, desc="MemoryPruner", unit="query")
        try:
            return count_wrong_decisions(
                store,
                m,
                query_ids,
                sample_ids=self._ids if sample_ids is None else sample_ids,
                batch_size=self.batch_size,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.close()

    def _in_sync(self, store) -> bool:
        """The memory is in the state the pruner last left it in."""
        return (store.uid, store.version) == self._store_version

    def _edited_once(self, est, store) -> bool:
        """The estimator's edit was the one edit of the memory we counted for."""
        now = self._store(est)
        return now is store and (store.uid, store.version) == (
            self._store_version[0],
            self._store_version[1] + 1,
        )

    def _publish_recount(self, est) -> None:
        store = self._store(est)
        ids = store.ids()
        counts, radii = self._count(store, self._m(), None, ids)
        self._publish(est, ids, counts, radii)

    def _publish(self, est, ids, counts: np.ndarray, radii: np.ndarray) -> None:
        """Apply the pruning rule to the memory, then expose the fitted state."""
        store = self._store(est)
        if np.any(counts < 0):  # cannot happen with exact search: a safety net
            logger.warning("negative wrong-decision counts; counting afresh")
            ids = store.ids()
            counts, radii = self._count(store, self._m(), None, ids)
        if self.mode == "hard":
            reliability = np.ones(counts.shape[0])
            excluded = counts >= self.threshold
            pruned = excluded
        else:
            reliability = soft_reliability(counts, self.reliability_scale)
            excluded = np.zeros(counts.shape[0], dtype=bool)
            pruned = reliability < 1.0
        store.set_reliability(ids, reliability)
        store.set_excluded(ids, excluded)
        self.estimator_ = est
        self.classes_ = est.classes_
        self.n_neighbors_ = self._m()
        self.wrong_counts_ = counts
        self.reliability_ = reliability
        self.pruned_ids_ = ids[pruned].copy()
        self._ids = ids
        self._radii = radii
        self._store_version = (store.uid, store.version)

    @property
    def sample_ids_(self) -> np.ndarray:
        """Ids of the memory samples, aligned with :attr:`wrong_counts_`."""
        return self._ids.copy()

    # -- querying -------------------------------------------------------------
    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float32)

    @reads
    @fill_doc
    def predict(self, X) -> np.ndarray:
        """Labels predicted by the pruned estimator.

        %(X_queries)s

        %(returns_labels)s
        """
        X = self._checked(X)
        return self.estimator_.predict(X)

    @reads
    @fill_doc
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the pruned estimator.

        %(X_queries)s

        %(returns_proba)s
        """
        X = self._checked(X)
        return self.estimator_.predict_proba(X)

    @available_if(lambda self: _estimator_has(self, "predict_log_proba"))
    @reads
    @fill_doc
    def predict_log_proba(self, X) -> np.ndarray:
        """Log class probabilities of the pruned estimator.

        %(X_queries)s

        Returns
        -------
        log_proba : ndarray of shape (n_queries, n_classes)
            Columns follow :attr:`classes_`; ``-inf`` where a probability is 0.
        """
        X = self._checked(X)
        return self.estimator_.predict_log_proba(X)

    @available_if(lambda self: _estimator_has(self, "decision_function"))
    @reads
    @fill_doc
    def decision_function(self, X) -> np.ndarray:
        """Decision scores of the pruned estimator (when it has them).

        %(X_queries)s

        Returns
        -------
        scores : ndarray of shape (n_queries, n_classes) or (n_queries,)
            The estimator's ``decision_function`` of ``X``.
        """
        X = self._checked(X)
        return self.estimator_.decision_function(X)

    @reads
    @fill_doc
    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest memory samples by id: see :meth:`skknn.KNNVoter.kneighbors`.

        Pruned samples are still retrieved; they vote less, or not at all.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            None queries the memory with its own samples, leaving each out.
        n_neighbors : int, default=None
            Defaults to the estimator's ``n_neighbors``.
        %(return_distance)s

        %(returns_kneighbors)s
        """
        check_is_fitted(self)
        if X is not None:
            X = self._checked(X)
        return self.estimator_.kneighbors(X, n_neighbors, return_distance)

    @reads
    @fill_doc
    def score_samples(self, X, n_neighbors=None) -> np.ndarray:
        """Out-of-distribution score of the memory: see
        :meth:`KNNVoter.score_samples` (pruned samples are still retrieved).

        %(X_queries)s
        n_neighbors : int, default=None
            ``k``; defaults to the estimator's ``n_neighbors``, capped at the
            memory size.

        %(returns_scores)s
        """
        X = self._checked(X)
        return self.estimator_.score_samples(X, n_neighbors)

    @reads
    @fill_doc
    def explain(self, X):
        """Every decision with the neighbours that made it, reliabilities and
        exclusions included: see :meth:`skknn.KNNVoter.explain`.

        %(X_queries)s

        Returns
        -------
        explanation : Bunch
            The estimator's explanation; each neighbour's ``weights`` share
            includes its reliability (0 for a sample excluded from voting).
        """
        X = self._checked(X)
        return self.estimator_.explain(X)

    # -- persistence ----------------------------------------------------------
    def __skknn_reading__(self):
        """Hold the counts' and the memory's state while they are written."""
        return self._reading_with(self.estimator_)

    def __skknn_save__(self) -> tuple[dict, dict]:
        check_is_fitted(self)
        est_meta, est_arrays = self.estimator_.__skknn_save__()
        meta = {
            "estimator_class": type(self.estimator_).__name__,
            "estimator_params": params_to_json(self.estimator_),
            "estimator": est_meta,
            "classes": labels_to_json(self.classes_),
            "n_features_in": int(self.n_features_in_),
            "n_neighbors": int(self.n_neighbors_),
            "store_version": list(self._store_version),
        }
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in"] = [str(f) for f in self.feature_names_in_]
        arrays = {"estimator/" + k: v for k, v in est_arrays.items()}
        arrays.update(
            wrong_counts=self.wrong_counts_,
            reliability=self.reliability_,
            pruned_ids=self.pruned_ids_,
            sample_ids=self._ids,
            radii=self._radii,
        )
        return meta, arrays

    def __skknn_load__(self, meta: dict, arrays: dict, version: int) -> None:
        cls = registered(meta["estimator_class"])
        est = cls(**params_from_json(meta["estimator_params"]))
        est.__skknn_load__(meta["estimator"], subtree(arrays, "estimator/"), version)
        self.estimator_ = est
        self._check_params()
        self.classes_ = est.classes_
        if meta["n_features_in"] != est.n_features_in_:
            raise ValueError("n_features_in disagrees with the estimator's")
        self.n_features_in_ = meta["n_features_in"]
        if "feature_names_in" in meta:
            self.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        self.n_neighbors_ = meta["n_neighbors"]
        self.wrong_counts_ = arrays["wrong_counts"]
        self.reliability_ = arrays["reliability"]
        self.pruned_ids_ = arrays["pruned_ids"]
        self._ids = arrays["sample_ids"]
        self._radii = arrays["radii"]
        store = self._store(est)
        n = store.n_samples
        if not np.array_equal(np.sort(self._ids), np.sort(store.ids())):
            raise ValueError("the pruner's sample ids are not the memory's")
        for name in ("wrong_counts_", "reliability_", "_radii"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name.strip('_')} is not one value per sample")
        if not np.isin(self.pruned_ids_, self._ids).all():
            raise ValueError("pruned_ids are not all memory samples")
        # A file of skknn 0.1 has no version: its memory is as the pruner left it.
        saved = meta.get("store_version")
        self._store_version = (
            (store.uid, store.version) if saved is None else tuple(saved)
        )
        self._lock()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = self.estimator if self.estimator is not None else KNNVoter()
        # Counting is deterministic; only the wrapped index may not be.
        tags.non_deterministic = get_tags(inner).non_deterministic
        return tags


def _estimator_has(pruner, attr: str) -> bool:
    est = getattr(pruner, "estimator_", None)
    if est is None:
        est = pruner.estimator if pruner.estimator is not None else KNNVoter()
    return hasattr(est, attr)


def _ids_kwarg(sample_ids) -> dict:
    # Only passed when given, so estimators without sample ids work too.
    return {} if sample_ids is None else {"sample_ids": sample_ids}


def _weight_kwarg(sample_weight) -> dict:
    return {} if sample_weight is None else {"sample_weight": sample_weight}


@fill_doc
def pruning_summary(
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    estimator=None,
    modes=("hard", "soft"),
    **params,
) -> dict[str, float]:
    """Test accuracy without pruning and with each pruning mode.

    A one-call comparison for demos and reports: the estimator is fitted as is
    (``"none"``) and inside a :class:`MemoryPruner` per mode.

    Parameters
    ----------
    X_train, y_train : array-like
        The memory.
    X_test, y_test : array-like
        Queries and their true labels.
    estimator : KNNVoter or JointKNNClassifier, default=None
        None means ``KNNVoter()``.
    modes : iterable of {"hard", "soft"}, default=("hard", "soft")
    **params
        Further :class:`MemoryPruner` parameters (``n_neighbors``,
        ``threshold``, ``reliability_scale``, ...).

    Returns
    -------
    accuracy : dict of str to float
        ``{"none": ..., "hard": ..., "soft": ...}``.

    Examples
    --------
    >>> from skknn import KNNVoter
    >>> from skknn.pruning import pruning_summary
    %(mislabelled_points)s
    >>> voter = KNNVoter(2, voting="plurality", index="exact")
    >>> pruning_summary(X, y, [[.2, .8]], [1], estimator=voter, n_neighbors=2,
    ...                 threshold=2)
    {'none': 0.0, 'hard': 1.0, 'soft': 1.0}
    """
    base = KNNVoter() if estimator is None else clone(estimator)
    out = {"none": float(base.fit(X_train, y_train).score(X_test, y_test))}
    for mode in modes:
        pruner = MemoryPruner(estimator, mode=mode, **params)
        out[mode] = float(pruner.fit(X_train, y_train).score(X_test, y_test))
    return out
