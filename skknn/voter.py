"""KNNVoter: classification by retrieval from an editable memory of embeddings."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from skknn._certificates import CertifiedMemory
from skknn._device import device_after_unpickling
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS, MEMORY_PARAMETER_HINTS
from skknn._validation import (
    SPARSE_INDEXES,
    check_int,
    check_sparse_engine,
    dense,
    drop_absent_samples,
    refuse_fitted_neighbors,
    restore_attributes_on_error,
    validate_xy,
)
from skknn._voter_memory import FittedMemoryMixin
from skknn._voter_memory import shard_config as _shard_config
from skknn._voter_queries import NeighborQueriesMixin
from skknn._voter_tuning import IndexTuningMixin
from skknn._voter_voting import VOTE_PARAMETER_CONSTRAINTS, VotingMixin
from skknn.io import Persistable, labels_from_json, register, subtree
from skknn.memory import folder as _storage_folder
from skknn.memory.front import VectorStore
from skknn.memory.loading import saved_memory

logger = logging.getLogger(__name__)


@register
class KNNVoter(
    CertifiedMemory,
    NeighborQueriesMixin,
    VotingMixin,
    IndexTuningMixin,
    FittedMemoryMixin,
    Persistable,
    ClassifierMixin,
    BaseEstimator,
):
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
