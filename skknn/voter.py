"""KNNVoter: classification by retrieval from an editable memory of embeddings."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Bunch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from skknn import _voting
from skknn._device import faiss_available, faiss_gpu_count, resolve_device
from skknn._labels import check_label_kind, encode, merge_classes
from skknn._memory import Memory
from skknn._preprocessing import PREPROCESSING, fit_center, preprocess_inplace
from skknn._search import METRICS
from skknn._validation import check_float, check_int, check_option

logger = logging.getLogger(__name__)


class KNNVoter(ClassifierMixin, BaseEstimator):
    """Classify by voting among nearest neighbours in an explicit memory.

    The memory holds embeddings, labels, stable sample ids and reliability
    weights. It grows with :meth:`partial_fit` (new classes included, no
    retraining), shrinks with :meth:`unlearn` (physical deletion) and explains
    every decision by its neighbours (:meth:`explain`).

    Parameters
    ----------
    n_neighbors : int, default=50
        Number of neighbours ``k`` that vote. If the memory holds fewer samples,
        all of them vote.
    voting : {"plurality", "distance", "softmax", "rank"} or callable, default="rank"
        Neighbour weights (FORMULAS.md 3): 1; ``exp(-d) ** distance_power``;
        ``exp(-d / temperature)``; ``1 / (rank + rank_offset)`` (RankVoting). A
        callable receives ``(distances, ranks)``, both ``(n_queries, k)``, and
        returns non-negative weights of that shape.
    temperature : float, default=0.07
        Softmax temperature ``T`` (> 0).
    rank_offset : float, default=2.0
        RankVoting offset (> 0): weights 1/2, 1/3, 1/4, ... by default.
    distance_power : float, default=1.0
        Exponent ``p`` of the "distance" rule (>= 0).
    metric : {"cosine", "sqeuclidean", "euclidean"}, default="cosine"
        Distance between pre-processed embeddings. Cosine compares directions:
        vectors are L2-normalised for it whatever ``preprocessing`` says.
    preprocessing : {"l2", "center_l2"} or None, default="l2"
        ``"l2"``: unit length; ``"center_l2"``: subtract the mean of the memory
        at the first fit (frozen afterwards), then unit length; None: unchanged.
    index : str, default="auto"
        Search engine. ``"exact"``: blocked matrix product + top-k in torch (CPU
        or CUDA). ``"flat"``: FAISS exact search (GPU when FAISS has GPU support
        and ``device`` is CUDA). Any other string is a ``faiss.index_factory``
        description (``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF256,PQ16"``).
        ``"auto"`` picks ``"flat"`` when FAISS is installed, except on a CUDA
        device that FAISS cannot use, where torch's ``"exact"`` runs on the GPU.
    index_params : dict, default=None
        FAISS search parameters by their FAISS names, e.g. ``{"nprobe": 16}``
        or ``{"efSearch": 128}``.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size : int, default=4096
        Queries searched per block; bounds the working memory of predictions.
    verbose : bool, default=False
        Show a progress bar over query blocks.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Known labels, sorted. Grows with :meth:`partial_fit`.
    n_features_in_ : int
        Embedding width.
    sample_ids_ : ndarray of shape (n_samples,)
        Stable int64 ids of the memory's samples, in memory order.
    memory_ : Memory
        The memory (embeddings after pre-processing, labels, ids, reliabilities).
    mean_ : ndarray of shape (n_features,) or None
        Centre used by ``preprocessing="center_l2"``.
    engine_ : str
        The search engine ``index`` resolved to.
    device_ : torch.device
        Where searches run.

    See Also
    --------
    sklearn.neighbors.KNeighborsClassifier : kNN without an editable memory.
    skknn.JointKNNClassifier : a linear head trained with kNN guidance.
    skknn.MemoryPruner : hard and soft pruning of the memory.

    Notes
    -----
    Ties between classes with equal top score go to the class of the nearest
    neighbour among the tied classes (FORMULAS.md 3); sklearn takes the lowest
    class index instead. With ``preprocessing=None, metric="euclidean",
    voting="plurality"``, :meth:`predict_proba` equals sklearn's
    ``KNeighborsClassifier(weights="uniform")``.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> X = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> y = np.array(["cat", "cat", "dog", "dog"])
    >>> knn = KNNVoter(n_neighbors=3, index="exact").fit(X, y)
    >>> knn.predict([[.8, .2]])
    array(['cat'], dtype='<U3')
    >>> knn = knn.partial_fit([[-1., 0.]], ["fox"])  # a new class, no retraining
    >>> knn.classes_
    array(['cat', 'dog', 'fox'], dtype='<U3')
    >>> knn.unlearn([0]).sample_ids_
    array([1, 2, 3, 4])
    """

    def __init__(
        self,
        n_neighbors: int = 50,
        *,
        voting: str | Callable = "rank",
        temperature: float = 0.07,
        rank_offset: float = 2.0,
        distance_power: float = 1.0,
        metric: str = "cosine",
        preprocessing: str | None = "l2",
        index: str = "auto",
        index_params: dict | None = None,
        device: str = "auto",
        batch_size: int = 4096,
        verbose: bool = False,
    ):
        self.n_neighbors = n_neighbors
        self.voting = voting
        self.temperature = temperature
        self.rank_offset = rank_offset
        self.distance_power = distance_power
        self.metric = metric
        self.preprocessing = preprocessing
        self.index = index
        self.index_params = index_params
        self.device = device
        self.batch_size = batch_size
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------
    def _check_vote_params(self) -> None:
        """Parameters read at prediction time (they may change after fit)."""
        check_int(self, "n_neighbors", self.n_neighbors, low=1)
        if not callable(self.voting):
            check_option(self, "voting", self.voting, _voting.VOTING_RULES)
        check_float(self, "temperature", self.temperature, low=0, low_inclusive=False)
        check_float(self, "rank_offset", self.rank_offset, low=0, low_inclusive=False)
        check_float(self, "distance_power", self.distance_power, low=0)
        check_int(self, "batch_size", self.batch_size, low=1)

    def _check_memory_params(self) -> None:
        """Parameters that shape the memory (fixed from the first fit on)."""
        check_option(self, "metric", self.metric, METRICS)
        if self.preprocessing is not None:
            check_option(self, "preprocessing", self.preprocessing, PREPROCESSING)
        if not isinstance(self.index, str) or not self.index:
            raise ValueError(
                "The 'index' parameter of KNNVoter must be 'auto', 'exact', 'flat' or "
                f"a faiss.index_factory string. Got {self.index!r} instead."
            )
        if self.index_params is not None and not isinstance(self.index_params, dict):
            raise TypeError(
                "The 'index_params' parameter of KNNVoter must be a dict or None. "
                f"Got {self.index_params!r} instead."
            )

    def _resolve_engine(self, device) -> str:
        if self.index != "auto":
            return self.index
        if not faiss_available():
            return "exact"
        if device.type == "cuda" and faiss_gpu_count() == 0:
            return "exact"  # torch on the GPU beats FAISS on the CPU
        return "flat"

    def _memory_config(self) -> dict:
        return {
            "metric": self.metric,
            "preprocessing": self.preprocessing,
            "index": self.index,
            "index_params": self.index_params,
        }

    # -- fitting --------------------------------------------------------------
    def fit(self, X, y, sample_ids=None):
        """Build the memory from ``X`` and ``y`` (replacing any previous one).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Labels.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids; default ``0 .. n_samples - 1``.

        Returns
        -------
        self : KNNVoter
        """
        # The old memory stays in place until the new one is complete.
        return self._add(X, y, classes=None, sample_ids=sample_ids, first_call=True)

    def partial_fit(self, X, y, classes=None, sample_ids=None):
        """Add samples to the memory, new classes included, without retraining.

        ``classes_`` grows to the sorted union of known and new labels, so
        :meth:`predict_proba` gains columns when new labels arrive.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like, default=None
            Labels to know even before any of their samples arrive.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids not yet used; default: fresh ids after the largest
            ever issued.

        Returns
        -------
        self : KNNVoter
        """
        first_call = not hasattr(self, "memory_")
        return self._add(
            X, y, classes=classes, sample_ids=sample_ids, first_call=first_call
        )

    def _add(self, X, y, *, classes, sample_ids, first_call):
        self._check_vote_params()
        self._check_memory_params()
        if not first_call and self._memory_config() != self._fitted_config_:
            raise ValueError(
                "metric, preprocessing, index and index_params cannot change after "
                f"fit (fitted with {self._fitted_config_}); call fit to rebuild."
            )
        X, y = validate_data(self, X, y, reset=first_call, dtype=np.float32)
        check_classification_targets(y)
        old_classes = None if first_call else self.classes_
        check_label_kind(y, old_classes, type(self).__name__)
        if classes is not None:
            classes = np.asarray(classes)
            check_label_kind(classes, old_classes, type(self).__name__)
            y_all = np.concatenate([np.unique(classes), y]) if len(classes) else y
        else:
            y_all = y
        new_classes, old_to_new = merge_classes(old_classes, y_all)
        if first_call:
            device = resolve_device(self.device, owner=type(self).__name__)
            memory = Memory(
                X.shape[1],
                metric=self.metric,
                engine=self._resolve_engine(device),
                device=device,
                index_params=self.index_params,
            )
        else:
            memory = self.memory_
        if sample_ids is None:
            ids = memory.new_ids(X.shape[0])
        else:
            ids = memory.check_new_ids(sample_ids, X.shape[0])
        if first_call:
            mean = fit_center(X) if self.preprocessing == "center_l2" else None
        else:
            mean = self.mean_
        normalize = self._normalizes()

        def prepare(rows):  # runs on the memory's own copy of X, in place
            preprocess_inplace(rows, center=mean, normalize=normalize)

        memory.add(
            X, encode(new_classes, y), ids, label_map=old_to_new, prepare=prepare
        )
        # Publish the estimator's view only once the memory holds the samples.
        self.classes_ = new_classes
        if first_call:
            self.memory_ = memory
            self.mean_ = mean
            self.engine_ = memory.engine_name
            self.device_ = memory.device
            self._fitted_config_ = self._memory_config()
        return self

    def _normalizes(self) -> bool:
        return self.preprocessing is not None or self.metric == "cosine"

    # -- editing --------------------------------------------------------------
    def unlearn(self, sample_ids, retrain_index: bool = True):
        """Delete samples from the memory: they vote and appear nowhere again.

        Parameters
        ----------
        sample_ids : array-like of int
            Ids (as in :attr:`sample_ids_`) to remove; all must be in memory.
        retrain_index : bool, default=True
            For an approximate index with trained parts (the centroids of
            ``"IVF..."``, the codebooks of PQ/SQ), train a fresh index on the
            remaining samples: centroids fitted while the removed samples were
            present would still carry a trace of them. The result equals a fresh
            :meth:`fit` on what remains with the same ids. False keeps the trained
            parts and only removes the codes (faster on large memories). Exact
            engines and HNSW have nothing to retrain.

        Returns
        -------
        self : KNNVoter
        """
        check_is_fitted(self)
        self.memory_.remove(np.asarray(sample_ids), retrain_index=bool(retrain_index))
        return self

    @property
    def sample_ids_(self) -> np.ndarray:
        return self.memory_.sample_ids.copy()

    # -- querying -------------------------------------------------------------
    def _queries(self, X) -> np.ndarray:
        check_is_fitted(self)
        X_in = X
        X = validate_data(self, X, reset=False, dtype=np.float32, order="C")
        if self._normalizes():
            if X is X_in or (
                isinstance(X_in, np.ndarray) and np.may_share_memory(X, X_in)
            ):
                X = X.copy()
            preprocess_inplace(X, center=self.mean_, normalize=True)
        return X

    def _blocks(self, n: int):
        starts = range(0, n, self.batch_size)
        if self.verbose and n > self.batch_size:
            from tqdm.auto import tqdm

            return tqdm(starts, desc="KNNVoter", unit="block")
        return starts

    def _search(self, Q: np.ndarray, k: int):
        """Neighbours of pre-processed queries, in blocks of ``batch_size``."""
        k = min(k, self.memory_.n_samples)
        if k == 0:
            raise ValueError("The memory is empty: fit or partial_fit samples first.")
        dist = np.empty((Q.shape[0], k), dtype=np.float32)
        rows = np.empty((Q.shape[0], k), dtype=np.int64)
        for s in self._blocks(Q.shape[0]):
            d, r = self.memory_.search(Q[s : s + self.batch_size], k)
            dist[s : s + len(d)], rows[s : s + len(d)] = d, r
        return dist, rows

    def _vote(self, dist: np.ndarray, rows: np.ndarray):
        """Weights, class scores and the voting mask for retrieved neighbours."""
        mem = self.memory_
        present = rows >= 0
        safe = np.maximum(rows, 0)
        excluded = mem.excluded[safe] if mem.excluded.any() else None
        mask = _voting.voting_mask(present, excluded)
        weights = _voting.neighbor_weights(
            dist,
            mask,
            self.voting,
            temperature=self.temperature,
            rank_offset=self.rank_offset,
            distance_power=self.distance_power,
        )
        labels = mem.labels[safe]
        rel = mem.reliability[safe]
        weights = weights * rel
        scores = _voting.class_scores(weights, labels, len(self.classes_))
        return weights, labels, mask, scores

    def _proba_and_pred(self, X):
        self._check_vote_params()
        Q = self._queries(X)
        dist, rows = self._search(Q, self.n_neighbors)
        weights, labels, mask, scores = self._vote(dist, rows)
        proba = _voting.scores_to_proba(scores)
        pred = _voting.predict_with_ties(scores, labels, mask)
        _voting.align_proba_with_ties(proba, pred)
        return proba, pred, (dist, rows, weights, labels)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``p(c | x) = s_c / sum_c' s_c'`` (FORMULAS.md 3).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes)
            Columns follow :attr:`classes_`.
        """
        return self._proba_and_pred(X)[0]

    def predict(self, X) -> np.ndarray:
        """Predicted labels, ties broken by the nearest tied neighbour.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        y : ndarray of shape (n_queries,)
        """
        pred = self._proba_and_pred(X)[1]
        return self.classes_[pred]

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest memory samples, as sample **ids**, nearest first.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Queries. None queries the memory with its own samples, leaving each
            one out by id (FORMULAS.md 2), like sklearn's ``kneighbors()``.
        n_neighbors : int, default=None
            Defaults to ``n_neighbors``; capped at the memory size (minus one
            when leaving one out).
        return_distance : bool, default=True

        Returns
        -------
        distances : ndarray of shape (n_queries, k)
            Only when ``return_distance``.
        ids : ndarray of shape (n_queries, k)
            Sample ids (-1 where an approximate index found fewer).
        """
        check_is_fitted(self)
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        check_int(self, "n_neighbors", k, low=1)
        mem = self.memory_
        if X is None:
            blocks = list(mem.iter_loo(k, block_size=self.batch_size))
            dist = np.concatenate([b[1] for b in blocks])
            rows = np.concatenate([b[2] for b in blocks])
        else:
            dist, rows = self._search(self._queries(X), k)
        ids = np.where(rows >= 0, mem.sample_ids[np.maximum(rows, 0)], -1)
        return (dist, ids) if return_distance else ids

    def loo_proba(self, rows=None) -> np.ndarray:
        """Leave-one-out class probabilities of the memory's own samples.

        Each sample votes among its ``n_neighbors`` nearest *other* samples
        (self dropped by id, FORMULAS.md 2): [NN]'s training-set ``p_kNN``.

        Parameters
        ----------
        rows : array-like of int, default=None
            Memory rows to score (positions in :attr:`sample_ids_`); all if None.

        Returns
        -------
        proba : ndarray of shape (n_rows, n_classes)
        """
        check_is_fitted(self)
        self._check_vote_params()
        mem = self.memory_
        n = mem.n_samples if rows is None else len(rows)
        proba = np.empty((n, len(self.classes_)))
        pos = 0
        blocks = mem.iter_loo(self.n_neighbors, rows=rows, block_size=self.batch_size)
        for query_rows, dist, nb in blocks:
            scores = self._vote(dist, nb)[3]
            proba[pos : pos + len(query_rows)] = _voting.scores_to_proba(scores)
            pos += len(query_rows)
        return proba

    def explain(self, X) -> Bunch:
        """Every decision with the neighbours that made it.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        explanation : Bunch
            ``neighbor_ids``, ``neighbor_labels``, ``distances``: (n_queries, k)
            arrays; ``weights``: each neighbour's share of the vote (voting weight
            times reliability, normalised per query; 0 for excluded samples);
            ``proba`` (n_queries, n_classes); ``prediction`` (n_queries,);
            ``classes``.
        """
        proba, pred, (dist, rows, weights, labels) = self._proba_and_pred(X)
        mem = self.memory_
        share = weights / weights.sum(axis=1, keepdims=True)
        return Bunch(
            neighbor_ids=np.where(rows >= 0, mem.sample_ids[np.maximum(rows, 0)], -1),
            neighbor_labels=self.classes_[labels],
            distances=dist,
            weights=share,
            proba=proba,
            prediction=self.classes_[pred],
            classes=self.classes_,
        )

    # -- persistence ----------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted voter to ``path`` safely: NumPy arrays + JSON in one
        zip file, no pickle, replaced atomically. Read it back with
        :func:`skknn.load`."""
        from skknn import io

        io.save(self, path)

    def _save_state(self) -> tuple[dict, dict]:
        from skknn import io

        check_is_fitted(self)
        mem_meta, mem_arrays = self.memory_.state()
        meta = {
            "classes": io.labels_to_json(self.classes_),
            "n_features_in": int(self.n_features_in_),
            "device": str(self.device_),
            "memory": mem_meta,
            "fitted_config": self._fitted_config_,
        }
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in"] = [str(f) for f in self.feature_names_in_]
        arrays = {"memory/" + k: v for k, v in mem_arrays.items()}
        if self.mean_ is not None:
            arrays["mean"] = self.mean_
        return meta, arrays

    def _load_state(self, meta: dict, arrays: dict) -> None:
        from skknn import io
        from skknn._device import device_after_unpickling

        device = device_after_unpickling(meta["device"], owner=type(self).__name__)
        mem_arrays = io.subtree(arrays, "memory/")
        self.memory_ = Memory.from_state(meta["memory"], mem_arrays, device)
        self.classes_ = io.labels_from_json(meta["classes"])
        self.n_features_in_ = meta["n_features_in"]
        if "feature_names_in" in meta:
            self.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        self.mean_ = arrays.get("mean")
        self.engine_ = self.memory_.engine_name
        self.device_ = device
        self._fitted_config_ = meta["fitted_config"]

    def __setstate__(self, state):
        super().__setstate__(state)
        if "memory_" in self.__dict__:
            self.device_ = self.memory_.device  # CPU if the GPU it used is gone

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Approximate indexes may miss true neighbours, differently per build.
        tags.non_deterministic = self.index not in ("auto", "exact", "flat")
        return tags
