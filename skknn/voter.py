"""KNNVoter: classification by retrieval from an editable memory of embeddings."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from skknn._certificates import CertifiedMemory
from skknn._device import (
    device_after_unpickling,
    resolve_device,
    resolve_engine,
)
from skknn._docstrings import fill_doc
from skknn._hierarchy import stack_levels
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS, MEMORY_PARAMETER_HINTS
from skknn._param_validation import Interval, StrOptions, check_params, check_values
from skknn._validation import (
    SPARSE_INDEXES,
    check_int,
    check_option,
    check_sparse_engine,
    dense,
    drop_absent_samples,
    refuse_fitted_neighbors,
    restore_attributes_on_error,
    validate_rows,
    validate_xy,
)
from skknn.io import Persistable, labels_from_json, register, subtree
from skknn.memory import folder as _storage_folder
from skknn.memory.front import VectorStore, query_blocks
from skknn.memory.loading import saved_memory
from skknn.memory.neighbors import Neighbors
from skknn.voting import _learned, _rules

logger = logging.getLogger(__name__)

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


@register
class KNNVoter(CertifiedMemory, Persistable, ClassifierMixin, BaseEstimator):
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
    voting : {"plurality", "distance", "softmax", "rank", "learned"} or callable, \
            default="rank"
        Neighbour weights (FORMULAS.md 3): 1; ``exp(-d) ** distance_power``;
        ``exp(-d / temperature)``; ``1 / (rank + rank_offset)`` (RankVoting). A
        callable receives ``(distances, ranks)``, both ``(n_queries, k)``, and
        returns non-negative weights of that shape. ``"learned"``: a logistic
        regression scores each class among the neighbours from class-agnostic
        features (its rank votes, its ranks and distances against the query's
        distance profile, how many of its neighbours were right under
        leave-one-out), trained on the memory's own leave-one-out records at
        fit; it scores classes added later by :meth:`partial_fit` without
        retraining, and :meth:`unlearn` retrains it (see the user guide,
        "Learned aggregation"). One label column only. Note that ``"distance"`` is
        [VM]'s ``exp(-d)``, not sklearn's ``weights="distance"`` (``1 / d``);
        for the latter pass ``voting=lambda d, r: 1 / d``: an infinite weight
        (a query equal to memory samples) gives those samples the whole vote,
        as sklearn does.
    temperature : float, default=0.07
        Softmax temperature ``T`` (> 0).
    rank_offset : float, default=2.0
        RankVoting offset (> 0): weights 1/2, 1/3, 1/4, ... by default.
    distance_power : float, default=1.0
        Exponent ``p`` of the "distance" rule (>= 0).
    tie_break : {"nearest", "lowest"}, default="nearest"
        Which class :meth:`predict` gives when classes tie for the top score.
        ``"nearest"``: the class of the nearest neighbour among the tied
        classes (FORMULAS.md 3). ``"lowest"``: the lowest class index, as
        scikit-learn's ``KNeighborsClassifier`` does; with ``voting="plurality"``
        (its ``weights="uniform"``), ``metric="euclidean"``,
        ``preprocessing=None`` and an exact index, predictions then equal its
        predictions (see "Differences from KNeighborsClassifier" in the user
        guide).
    metric : {"cosine", "sqeuclidean", "euclidean"}, default="cosine"
        Distance between pre-processed embeddings. Cosine compares directions:
        vectors are L2-normalised for it whatever ``preprocessing`` says.
    preprocessing : {"l2", "center_l2"} or None, default="l2"
        ``"l2"``: unit length; ``"center_l2"``: subtract the mean of the memory
        at the first fit (frozen afterwards), then unit length; None: unchanged.
    index : str, default="auto"
        Search engine. ``"exact"``: blocked matrix product + top-k in torch
        (CUDA, or the CPU without FAISS; on the CPU with FAISS, FAISS's
        brute-force kernel, faster there). ``"flat"``: FAISS exact search (GPU
        when FAISS has GPU support and ``device`` is CUDA). Any other string
        is a ``faiss.index_factory`` description (``"IVF1024,Flat"``,
        ``"HNSW32"``, ``"IVF4096,PQ32"``).
        An IVF index is trained when the memory first holds 39 samples per
        inverted list (on a random sample of at most ``max(64 * nlist,
        65536)`` of them, then filled in blocks); until then its searches are
        exact. ``"auto"`` picks by memory size when FAISS is installed:
        ``"flat"`` below 1,000,000 samples, ``"IVF4096,PQ32"`` with
        ``{"nprobe": 32, "refine": 4, "far_quantile": 0.999}`` from then on
        (>= 99% prediction
        agreement with exact search and >= 10x its speed on the benchmark in
        ``benchmarks/RESULTS.md``), switching as the memory grows or shrinks
        past it; without FAISS, or on a CUDA device FAISS cannot use, torch's
        ``"exact"``. ``engine_`` says which engine runs now.
    index_params : dict, default=None
        FAISS search parameters by their FAISS names, e.g. ``{"nprobe": 16}``
        or ``{"efSearch": 128}``, and ``"refine"`` for an approximate index:
        retrieve ``refine * k`` candidates and keep the ``k`` nearest by exact
        distance from the stored vectors (``{"nprobe": 16, "refine": 4}``),
        and ``"far_quantile"``: a query whose k-th candidate is farther than
        this quantile of the memory's own k-th-neighbour distances (measured
        once per memory state on 512 stored samples) is searched exactly; the
        index answers such out-of-distribution queries poorly, e.g. queries
        about a region whose samples were unlearned.
        :meth:`tune_index` picks them for a target prediction agreement.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size : int, default=4096
        Queries searched per block; bounds the working memory of predictions.
    verbose : bool, default=False
        Show a progress bar over query blocks.
    reranker : callable, default=None
        Re-ranking (FORMULAS.md 7, [VM] 3.2): ``reranker(neighbors, X)`` gets
        each query's :class:`~skknn.Neighbors` record and the queries and returns
        non-negative class scores ``(n_queries, n_classes)`` (columns follow
        ``neighbors.classes``) that replace the vote. The place a stronger model
        plugs in; :class:`skknn.rerankers.ProbeReranker` re-ranks with a
        classifier over the labels present among the neighbours.
    storage_dtype : {"float32", "float16"}, default="float32"
        How the memory keeps its vectors (for exact distances, refinement,
        leave-one-out and retraining after :meth:`unlearn`). ``"float16"``
        halves their RAM; distances are still computed in float32.
    storage_path : str or path-like, default=None
        None keeps the memory in RAM. A folder keeps the vectors and per-row
        arrays in memory-mapped files there (in a sub-folder per memory); the
        RAM holds the index. Every edit is committed to the folder
        crash-safely, writing only what changed: a process killed mid-edit
        leaves the last committed memory, which ``skknn.load(storage_path)``
        reopens. The removed rows' bytes leave every file before ``unlearn``
        returns. A refit replaces the folder's memory (the old files are zeroed
        and deleted). Several estimators may fit into one folder; it opens to
        the last one fitted, and the others' edits then raise
        :class:`~skknn.StorageInUse`. A relative path is resolved at ``fit``.
        Such a memory is not pickled: :meth:`save` streams it to a file.
    backend : {"local", "dask"}, default="local"
        Where the memory lives. ``"dask"`` splits it into ``n_shards`` shards,
        each an ordinary memory (same ``index``, ``index_params``,
        ``storage_dtype``; ``device`` resolved on its worker) held by a Dask
        actor on a worker of the current ``distributed.Client``. Every search
        asks each shard for its top ``k`` and keeps the ``k`` nearest (equal
        distances by sample id, as locally): with exact engines the answers
        equal the local memory's. Samples go to shards by a hash of their id.
        :meth:`save` writes a manifest and one file per shard (on a path every
        worker can reach); ``skknn.load(path)`` re-creates the shards, or
        gathers them with ``backend="local"``. The memory is not pickled.
        See "Beyond one machine" in docs/architecture.md.
    n_shards : int, default=None
        Shards of a ``backend="dask"`` memory; None: one per worker.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,) or list of ndarray
        Known labels, sorted. Grows with :meth:`partial_fit`. For multi-output
        ``y`` (hierarchical labels), one array per level (column of ``y``).
    n_features_in_ : int
        Embedding width.
    sample_ids_ : ndarray of shape (n_samples,)
        Stable int64 ids of the memory's samples, in memory order.
    n_samples_fit_ : int
        Samples in the memory now (sklearn's name; it follows
        :meth:`partial_fit` and :meth:`unlearn`).
    effective_metric_ : str
        The distance :meth:`kneighbors` returns (``metric``), as sklearn names it.
    effective_metric_params_ : dict
        Always empty: the metrics take no parameters.
    outputs_2d_ : bool
        Whether ``y`` had several label columns (hierarchical labels).
    memory_ : VectorStore
        The memory: pre-processed embeddings, labels, ids, reliabilities; every
        search of it returns a :class:`~skknn.Neighbors` record.
    mean_ : ndarray of shape (n_features,) or None
        Centre used by ``preprocessing="center_l2"`` (held by the memory).
    engine_ : str
        The search engine ``index`` resolved to.
    device_ : torch.device
        Where searches run.
    tuning_ : Bunch
        Set by :meth:`tune_index`: the settings it measured, with their
        prediction agreement, recall and speed.
    index_front_ : pandas.DataFrame
        Set by :meth:`tune_index` with ``index="auto"``: the measured Pareto
        front of index families and knobs (agreement, queries/s, bytes).

    See Also
    --------
    sklearn.neighbors.KNeighborsClassifier : Scikit-learn's kNN, without an editable
        memory.
    skknn.JointKNNClassifier : A linear head trained with kNN guidance.
    skknn.MemoryPruner : Hard and soft pruning of the memory.

    Notes
    -----
    Ties between classes with equal top score go to the class of the nearest
    neighbour among the tied classes (FORMULAS.md 3); sklearn takes the lowest
    class index instead (``tie_break="lowest"``). With ``preprocessing=None,
    metric="euclidean", voting="plurality"``, :meth:`predict_proba` equals
    sklearn's ``KNeighborsClassifier(weights="uniform")``.

    **sklearn's conventions.** A zero ``sample_weight`` means the sample is
    absent: it is not stored and is nobody's neighbour (its label still counts
    among ``classes_``), so ``BaggingClassifier`` can pass bootstrap counts.
    ``X`` may be a scipy sparse matrix for ``index`` ``"exact"``, ``"flat"``
    or ``"auto"``: the memory stores dense rows, and queries are densified
    ``batch_size`` rows at a time. A fitted ``NearestNeighbors``, ``BallTree``
    or ``KDTree`` as ``X`` is refused: pass the embeddings it was fitted on.

    **Hierarchical labels.** ``y`` of shape ``(n_samples, n_levels)`` gives each
    sample a label at every level of a taxonomy, one column per level (coarse to
    fine, or in any order: each column is an output, as in scikit-learn's
    multi-output classifiers). One retrieval serves every level; each level
    votes with the neighbours' labels at that level (FORMULAS.md 7, [VM] 3.6),
    so a query of a fine class absent from memory can still be placed right at
    a coarser level. :meth:`predict` then returns ``(n_queries, n_levels)``,
    :meth:`predict_proba` a list with one array per level, :meth:`score` the
    subset accuracy (every level right). The memory keeps each sample's label
    path (its combination of levels) as its class: ``memory_.classes`` are path
    codes and ``memory_.taxonomy`` maps them to each level's labels. A
    ``reranker`` scores one label column and is refused with multi-output ``y``.

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

    Hierarchical labels, one column per level (coarse, fine), voted from one
    retrieval:

    >>> Y = [["animal", "cat"], ["animal", "dog"], ["plant", "fern"]]
    >>> knn = KNNVoter(2, index="exact").fit([[1., 0.], [.8, .6], [0., 1.]], Y)
    >>> knn.predict([[.9, .45]])
    array([['animal', 'dog']], dtype='<U6')
    >>> [c.tolist() for c in knn.classes_]
    [['animal', 'plant'], ['cat', 'dog', 'fern']]
    """

    _parameter_constraints: dict = {
        **VOTE_PARAMETER_CONSTRAINTS,
        **MEMORY_PARAMETER_CONSTRAINTS,
    }
    # What to pass instead, after sklearn's message (see _param_validation).
    _parameter_hints: dict = {
        **MEMORY_PARAMETER_HINTS,
        "reranker": (
            "A reranker is called as reranker(neighbors, X) and returns class "
            "scores of shape (n_queries, n_classes)."
        ),
    }

    def __init__(
        self,
        n_neighbors: int = 50,
        *,
        voting: str | Callable = "rank",
        temperature: float = 0.07,
        rank_offset: float = 2.0,
        distance_power: float = 1.0,
        tie_break: str = "nearest",
        metric: str = "cosine",
        preprocessing: str | None = "l2",
        index: str = "auto",
        index_params: dict | None = None,
        device: str = "auto",
        batch_size: int = 4096,
        verbose: bool = False,
        reranker: Callable | None = None,
        storage_dtype: str = "float32",
        storage_path=None,
        backend: str = "local",
        n_shards: int | None = None,
    ):
        self.n_neighbors = n_neighbors
        self.voting = voting
        self.temperature = temperature
        self.rank_offset = rank_offset
        self.distance_power = distance_power
        self.tie_break = tie_break
        self.metric = metric
        self.preprocessing = preprocessing
        self.index = index
        self.index_params = index_params
        self.device = device
        self.batch_size = batch_size
        self.verbose = verbose
        self.reranker = reranker
        self.storage_dtype = storage_dtype
        self.storage_path = storage_path
        self.backend = backend
        self.n_shards = n_shards

    # -- parameters -----------------------------------------------------------
    def _check_vote_params(self) -> None:
        """Parameters read at prediction time (they may change after fit),
        against their half of the table."""
        check_params(self, VOTE_PARAMETER_CONSTRAINTS)

    def _check_memory_params(self) -> None:
        """Parameters that shape the memory (fixed from the first fit on):
        their half of the table, then the rules a table cannot state."""
        check_params(self, MEMORY_PARAMETER_CONSTRAINTS)
        # Beyond the table: rules between parameters, and an empty index name
        # (FAISS parses the other strings when the memory is built).
        if self.n_shards is not None and self.backend != "dask":
            raise ValueError(
                "The 'n_shards' parameter of KNNVoter applies to "
                "backend='dask'; leave it None for backend='local'."
            )
        if self.backend == "dask" and self.storage_path is not None:
            raise ValueError(
                "backend='dask' keeps each shard in its worker's RAM; storage_path "
                "(a memory on one machine's disk) cannot be combined with it yet. "
                "Save the sharded memory with save(path) instead."
            )
        if not self.index:
            raise ValueError(
                "The 'index' parameter of KNNVoter must be 'auto', 'exact', 'flat' or "
                f"a faiss.index_factory string. Got {self.index!r} instead."
            )

    def _memory_config(self) -> dict:
        """The parameters that shaped the memory: they change only through fit."""
        return {
            "metric": self.metric,
            "preprocessing": self.preprocessing,
            "index": self.index,
            "storage_dtype": self.storage_dtype,
            "storage_path": None
            if self.storage_path is None
            else str(self.storage_path),
            "backend": self.backend,
            "n_shards": self.n_shards,
        }

    def _check_memory_unchanged(self) -> None:
        """Refuse to use a memory whose shaping parameters were changed since fit
        (queries would be pre-processed or measured unlike the stored vectors)."""
        if self._memory_config() != self._fitted_config_:
            changed = {
                name: (self._fitted_config_[name], value)
                for name, value in self._memory_config().items()
                if self._fitted_config_[name] != value
            }
            detail = ", ".join(
                f"{name}={old!r} -> {new!r}" for name, (old, new) in changed.items()
            )
            raise ValueError(
                f"KNNVoter's memory was built with other parameters ({detail}); "
                "metric, preprocessing, index and storage_dtype take effect only "
                "through fit. "
                "Call fit to rebuild the memory, or set them back."
            )
        if not self.memory_.auto and not self._index_params_agree():
            raise ValueError(
                "KNNVoter.index_params was changed without set_params; call "
                "set_params(index_params=...) so the index takes the new knobs."
            )

    def _index_params_agree(self) -> bool:
        """Whether ``index_params`` are the memory's. Compared under the
        memory's read lock, which :meth:`set_params` holds for writing while it
        changes both: a prediction running beside a ``set_params`` or a
        ``tune_index`` sees both old or both new, never one of each."""
        with self.memory_.reading():
            return dict(self.index_params or {}) == self.memory_.index_params

    def set_params(self, **params):
        """Set parameters; on a fitted voter, ``index_params`` (search knobs such
        as ``nprobe``) take effect on its index at once.

        Parameters
        ----------
        **params : dict
            Estimator parameters.

        Returns
        -------
        self : KNNVoter
            The estimator.
        """
        if "index_params" not in params or "memory_" not in self.__dict__:
            return super().set_params(**params)
        new = params.pop("index_params")
        # A fitted voter hands the knobs to its index now, so they are checked
        # now: against the table here, by the index below.
        check_values(self, {"index_params": new})
        super().set_params(**params)
        with self.memory_.editing():  # see _index_params_agree
            # The memory first: when it refuses the knobs, neither changes.
            self.memory_.set_index_params(dict(new or {}))
            super().set_params(index_params=new)
        return self

    # -- fitting --------------------------------------------------------------
    def fit(self, X, y, sample_ids=None, sample_weight=None):
        """Build the memory from ``X`` and ``y`` (replacing any previous one).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,) or (n_samples, n_levels)
            Labels; one column per level for hierarchical labels (see Notes).
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids in ``[0, 2**63 - 1]``; default ``0 .. n_samples - 1``.
        sample_weight : array-like of shape (n_samples,), default=None
            Each sample's weight in every vote it takes part in (finite, >= 0),
            multiplying its voting weight (and pruning's reliability). A zero
            weight leaves the sample out, as if absent from ``X`` (sklearn's
            convention, on which ``BaggingClassifier`` relies); its label
            still joins ``classes_``.

        Returns
        -------
        self : KNNVoter
            The fitted estimator.
        """
        # The old memory stays in place until the new one is complete.
        return self._add(
            X,
            y,
            classes=None,
            sample_ids=sample_ids,
            sample_weight=sample_weight,
            first_call=True,
        )

    def partial_fit(self, X, y, classes=None, sample_ids=None, sample_weight=None):
        """Add samples to the memory, new classes included, without retraining.

        ``classes_`` grows to the sorted union of known and new labels, so
        :meth:`predict_proba` gains columns when new labels arrive.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the new samples.
        y : array-like of shape (n_samples,) or (n_samples, n_levels)
            Labels, in the shape the first fit had (new fine labels with their
            ancestors grow each level's classes).
        classes : array-like, default=None
            Labels to know even before any of their samples arrive; for
            multi-output ``y``, one array-like per level.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique int ids in ``[0, 2**63 - 1]`` not yet used; default: fresh
            ids after the largest ever issued.
        sample_weight : array-like of shape (n_samples,), default=None
            Vote weights of the new samples (see :meth:`fit`; zero leaves a
            sample out).

        Returns
        -------
        self : KNNVoter
            The estimator, its memory grown.
        """
        first_call = not hasattr(self, "memory_")
        return self._add(
            X,
            y,
            classes=classes,
            sample_ids=sample_ids,
            sample_weight=sample_weight,
            first_call=first_call,
        )

    def partial_fit_from(self, source, *, block_size: int = 65536, classes=None):
        """Grow the memory from blocks that need not fit in RAM together.

        Each block goes through :meth:`partial_fit` and is released before the
        next is read; with ``verbose=True`` a progress bar counts them. An IVF
        index trains once the memory holds enough samples, on a bounded sample
        of them, and takes the rest in blocks (see ``index``).

        Parameters
        ----------
        source : iterable
            Blocks ``(X, y)`` or ``(X, y, sample_ids)`` (a generator works), or
            files: ``.npz`` with arrays ``X`` and ``y``, or pairs of ``.npy``
            files given as ``"X.npy,y.npy"`` or ``(X_path, y_path)``; ``.npy``
            embeddings are memory-mapped and read ``block_size`` rows at a time.
        block_size : int, default=65536
            Rows per :meth:`partial_fit` when reading ``.npy`` files.
        classes : array-like, default=None
            Labels to know before their samples arrive (as for
            :meth:`partial_fit`).

        Returns
        -------
        self : KNNVoter
            The estimator, its memory grown.

        Examples
        --------
        >>> import numpy as np
        >>> from skknn import KNNVoter
        >>> rng = np.random.default_rng(0)
        >>> blocks = ((rng.normal(size=(100, 4)), rng.integers(0, 3, 100))
        ...           for _ in range(5))
        >>> KNNVoter(index="exact").partial_fit_from(blocks).memory_.n_samples
        500
        """
        from skknn.memory.blocks import iter_blocks

        check_int(self, "block_size", block_size, low=1)
        blocks = iter_blocks(source, block_size)
        if self.verbose:
            from tqdm.auto import tqdm

            total = len(source) if hasattr(source, "__len__") else None
            blocks = tqdm(blocks, total=total, desc="partial_fit", unit="block")
        for i, block in enumerate(blocks):
            X, y, ids = block
            self.partial_fit(X, y, classes=classes if i == 0 else None, sample_ids=ids)
        return self

    def _add(self, X, y, *, classes, sample_ids, sample_weight, first_call):
        self._check_vote_params()
        self._check_memory_params()
        if not first_call:
            self._check_memory_unchanged()
            self._check_storage_owner()
        refuse_fitted_neighbors(self, X)
        check_sparse_engine(self, X, self.index)
        # validate_data sets n_features_in_ on a first call: undo it if the call
        # fails later (bad ids, labels), so a failed fit changes nothing.
        with restore_attributes_on_error(self, ("n_features_in_", "feature_names_in_")):
            X, y = validate_xy(
                self, X, y, reset=first_call, levels=True, accept_sparse="csr"
            )
            X, y, sample_ids, sample_weight, classes = drop_absent_samples(
                self, X, y, sample_ids, sample_weight, classes, first_call
            )
            # The memory keeps dense rows anyway; the centre of "center_l2" is
            # the mean of the whole first add, so it is not added in blocks.
            X = dense(X)
            if first_call:
                store = self._new_memory(X.shape[1])
            else:
                store = self.memory_
            # Held from the digest before to the one after: a concurrent edit
            # must not fall between them (the log would not chain).
            with store.editing():
                before = self._state_before_edit(replacing=first_call)
                added = store.add(
                    X, y, sample_ids, classes=classes, sample_weight=sample_weight
                )
                if not first_call:  # the added rows are hashed when asked for
                    self._record_edit("partial_fit", added, before, added=added)
        if first_call:
            old = self.__dict__.get("memory_")
            self.memory_ = store
            self.__dict__.pop("learned_state_", None)
            self._fitted_config_ = self._memory_config()
            self._publish_storage(old)
            self._record_edit("fit", added, before, added=added, fresh=True)
        if self.voting == "learned" and self.memory_.n_samples:
            self._learned_state()  # trained here, not at the first prediction
        return self

    def _new_memory(self, n_features: int):
        """An empty memory as the parameters describe it (local or sharded)."""
        if self.backend == "dask":
            from skknn.memory.sharded import ShardedStore

            config = _shard_config(self, self.index_params)
            return ShardedStore(n_features, config, n_shards=self.n_shards)
        device = resolve_device(self.device, owner=type(self).__name__)
        return VectorStore(
            n_features,
            metric=self.metric,
            preprocessing=self.preprocessing,
            engine=resolve_engine(self.index, device),
            device=device,
            index_params=self.index_params,
            storage_dtype=self.storage_dtype,
            storage_path=None
            if self.storage_path is None
            else _storage_folder.resolve_root(self.storage_path),
        )

    def _publish_storage(self, old=None) -> None:
        """Name the memory a reopening of ``storage_path`` gives, then delete
        the replaced memory's files and those of memories no live store holds."""
        if self.memory_.storage_folder is None:
            if old is not None and old.storage_folder is not None:
                old.destroy()
            return
        # The folder resolved at fit: a later os.chdir does not move it.
        folder = self.memory_.storage_folder
        root = folder.parent
        _storage_folder.publish(self, root)
        self._guard_storage(root, folder.name)
        if old is not None and old.storage_folder is not None:
            old.destroy()
        _storage_folder.purge(root, keep=folder)

    def _check_storage_owner(self) -> None:
        """Before an edit writes anything: does the folder still open to this
        memory? (The memory checks again at its commit.)"""
        guard = getattr(self.memory_, "commit_guard", None)
        if guard is not None:
            guard()

    def _guard_storage(self, root, name: str) -> None:
        """Refuse this memory's edits once the folder opens to another's."""
        self.memory_.commit_guard = functools.partial(
            _storage_folder.check_owner, root, name
        )

    # -- editing --------------------------------------------------------------
    def unlearn(self, sample_ids, retrain_index: bool = True):
        """Delete samples from the memory: they vote and appear nowhere again.

        Every sample may go: the memory is then empty (``classes_`` stay) and
        prediction raises a ValueError saying so until :meth:`partial_fit` adds
        samples.

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
            engines have nothing to retrain. An HNSW graph cannot drop nodes:
            with False its removed nodes are marked dead and every search skips
            them (asking for more candidates, so the ``k`` found are the nearest
            remaining), and their vectors' bytes leave the index at the next
            compaction (a rebuild on the remaining samples), which unlearn runs
            before returning when ``retrain_index=True``, and which also runs
            once over 20% of the graph is dead. A saved memory never holds
            them: its file gets no index, which loading rebuilds.

        Returns
        -------
        self : KNNVoter
            The estimator, without the removed samples.
        """
        check_is_fitted(self)
        self._check_storage_owner()
        self._logged_removal("unlearn", np.asarray(sample_ids), bool(retrain_index))
        # nothing derived from a removed sample survives: rightness and scorer
        # are computed again from what remains
        self.__dict__.pop("learned_state_", None)
        if self.voting == "learned" and self.memory_.n_samples:
            self._learned_state()
        return self

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

    # -- what the memory holds --------------------------------------------------
    @property
    def classes_(self) -> np.ndarray | list[np.ndarray]:
        taxonomy = self.memory_.taxonomy
        if taxonomy is None:
            return self.memory_.classes
        return list(taxonomy.classes)

    @property
    def n_outputs_(self) -> int:
        """Label columns of ``y``: 1, or the levels of hierarchical labels."""
        taxonomy = self.memory_.taxonomy
        return 1 if taxonomy is None else taxonomy.n_levels

    @property
    def sample_ids_(self) -> np.ndarray:
        return self.memory_.ids()

    # sklearn's names, for code written against KNeighborsClassifier.
    @property
    def n_samples_fit_(self) -> int:
        return int(self.memory_.n_samples)

    @property
    def effective_metric_(self) -> str:
        return self._fitted_config_["metric"]

    @property
    def effective_metric_params_(self) -> dict:
        return {}

    @property
    def outputs_2d_(self) -> bool:
        return self.memory_.taxonomy is not None

    @property
    def mean_(self) -> np.ndarray | None:
        return self.memory_.mean

    @property
    def engine_(self) -> str:
        return self.memory_.engine_name

    @property
    def device_(self):
        return self.memory_.device

    # -- querying -------------------------------------------------------------
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
        return self._answer_blocks(X, _proba)

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
        return self._answer_blocks(X, _prediction)

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
        return _proba(self.vote(nb))

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
            proba=_proba(vote),
            prediction=_prediction(vote),
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
        turns approximate keeps its ``far_quantile`` guard on every
        approximate family measured. Only a memory in RAM (no ``storage_path``,
        ``backend="local"``) can be rebuilt so.

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
        predict = lambda nb: _prediction(self.vote(nb, X))  # noqa: E731
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
            super().set_params(index=index, index_params=params or None)
        self._fitted_config_ = self._memory_config()
        self.tuning_, self.index_front_ = tuning, front_frame(tuning)
        return self

    # -- persistence ----------------------------------------------------------
    def __skknn_reading__(self):
        """Hold the memory's state while it is written to a file."""
        check_is_fitted(self)
        return self.memory_.reading()

    def __skknn_save__(self) -> tuple[dict, dict]:
        check_is_fitted(self)
        store_meta, store_arrays = self.memory_.state()
        meta = {
            "n_features_in": int(self.n_features_in_),
            "device": str(self.device_),
            "memory": store_meta,
            "fitted_config": self._fitted_config_,
            "edit_log": self._log_state(),
        }
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in"] = [str(f) for f in self.feature_names_in_]
        arrays = {"memory/" + k: v for k, v in store_arrays.items()}
        return meta, arrays

    def __skknn_load__(self, meta: dict, arrays: dict, version: int) -> None:
        from skknn.memory.sharded import LOADING

        loading = LOADING.get() or {}
        # A file's recorded storage_path is data, never a place to write: the
        # memory goes to RAM, or to the folder the caller of load() named.
        self.storage_path = loading.get("storage_path")
        if isinstance(arrays.get("memory/embeddings"), np.memmap):
            # skknn.load(mmap=True): the memory is the file's, mapped read-only
            # (edits copy it into RAM), not a storage folder's.
            self.storage_path = None
        device = device_after_unpickling(meta["device"], owner=type(self).__name__)
        sharded = bool(meta["memory"].get("sharded"))
        backend = loading.get("backend") or self.backend
        v1 = None
        if version < 2 and not (sharded or backend == "dask"):
            # skknn 0.1 kept classes, the centre and the config outside
            v1 = {
                "preprocessing": meta["fitted_config"]["preprocessing"],
                "classes": labels_from_json(meta["classes"]),
                "mean": arrays.get("mean"),
            }
        self.memory_ = saved_memory(
            meta["memory"],
            subtree(arrays, "memory/"),
            device=device,
            backend=backend,
            shard_config=_shard_config(self, meta["memory"].get("index_params")),
            n_shards=self.n_shards if self.backend == "dask" else None,
            folder=loading.get("folder"),
            storage_root=None
            if self.storage_path is None
            else _storage_folder.resolve_root(self.storage_path),
            v1=v1,
        )
        if sharded or backend == "dask":
            self.backend = backend
            if backend == "local":
                self.n_shards = None
        if meta["n_features_in"] != self.memory_.n_features:
            raise ValueError(
                f"n_features_in {meta['n_features_in']!r} disagrees with the "
                f"memory's {self.memory_.n_features} features"
            )
        self.n_features_in_ = meta["n_features_in"]
        if "feature_names_in" in meta:
            names = np.asarray(meta["feature_names_in"], dtype=object)
            if names.shape != (self.n_features_in_,):
                raise ValueError("feature_names_in disagrees with n_features_in")
            self.feature_names_in_ = names
        self._fitted_config_ = _config_from_file(
            meta["fitted_config"], self._memory_config()
        )
        if self.memory_.storage_folder is not None:
            self._publish_storage()
        # Files written before the log existed start an empty chain.
        self._load_log_state(meta.get("edit_log"))
        # A file's parameters must describe its memory, as after a fit.
        self._check_vote_params()
        self._check_memory_params()
        store = self.memory_
        built = {
            "metric": store.metric.name,
            "preprocessing": store.preprocessing,
            "storage_dtype": store.storage_dtype,
        }
        if self._memory_config() != self._fitted_config_ or any(
            self._fitted_config_[k] != v for k, v in built.items()
        ):
            raise ValueError(
                f"the parameters {self._memory_config()} do not describe the "
                f"memory ({built})"
            )

    def __skknn_adopt__(self, memory, like: KNNVoter) -> None:
        """Take ``memory`` (``like``'s, moved) as this estimator's fitted memory
        (``skknn.distributed.to_local``)."""
        self.memory_ = memory
        self._continue_chain(like)
        self.n_features_in_ = like.n_features_in_
        if hasattr(like, "feature_names_in_"):
            self.feature_names_in_ = like.feature_names_in_
        self._fitted_config_ = self._memory_config()

    def __skknn_folder_state__(self) -> dict:
        """The fitted attributes a reopened storage folder needs besides the
        memory (``skknn/_storage_folder.py``)."""
        state = {
            "n_features_in": int(self.n_features_in_),
            "fitted_config": self._fitted_config_,
            "device": str(self.device_),
        }
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in"] = [str(f) for f in self.feature_names_in_]
        return state

    def __skknn_open__(self, folder, state: dict, device=None) -> None:
        """Become the estimator of a storage folder, around its reopened memory."""
        device = device_after_unpickling(
            state["device"] if device is None else device, owner=type(self).__name__
        )
        self.memory_ = VectorStore.open(folder, device)
        self._guard_storage(self.memory_.storage_folder.parent, folder.name)
        self.n_features_in_ = int(state["n_features_in"])
        if "feature_names_in" in state:
            self.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
        self._fitted_config_ = dict(state["fitted_config"])
        # The folder is where the caller opened it, whatever path the record
        # was written under.
        self._fitted_config_["storage_path"] = self._memory_config()["storage_path"]
        self._open_log_file(self.memory_.storage_folder.parent)
        self._check_memory_unchanged()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = self.voting != "learned"
        tags.input_tags.sparse = self.index in SPARSE_INDEXES
        # Approximate indexes may miss true neighbours, differently per build.
        tags.non_deterministic = self.index not in ("auto", "exact", "flat")
        return tags


def _proba(vote):
    return [v.proba for v in vote] if isinstance(vote, list) else vote.proba


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


def _prediction(vote):
    if isinstance(vote, list):
        return stack_levels([v.prediction for v in vote])
    return vote.prediction


def _config_from_file(saved: dict, here: dict) -> dict:
    """The memory-shaping parameters a file's memory was built with; where it
    goes (RAM, a folder, the cluster) is the loading estimator's (``here``)."""
    # Files of format 1 also listed index_params, which the memory now holds.
    config = {name: saved[name] for name in ("metric", "preprocessing", "index")}
    # Files before storage_dtype existed held float32 memories.
    config["storage_dtype"] = saved.get("storage_dtype", "float32")
    for name in ("storage_path", "backend", "n_shards"):
        config[name] = here[name]
    return config


def _shard_config(est: KNNVoter, index_params) -> dict:
    """What each shard of a ``backend="dask"`` memory is made from (the device
    and engine are resolved on its worker)."""
    return {
        "metric": est.metric,
        "preprocessing": est.preprocessing,
        "index": est.index,
        "index_params": index_params,
        "device": est.device,
        "storage_dtype": est.storage_dtype,
    }
