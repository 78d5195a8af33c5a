"""KNNTransformer: scikit-learn's KNeighborsTransformer over a memory."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted, validate_data

from skknn._certificates import DelegatedCertificates
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS, MEMORY_PARAMETER_HINTS
from skknn._param_validation import Interval, StrOptions, check_params
from skknn._validation import (
    SPARSE_INDEXES,
    check_sparse_engine,
    refuse_fitted_neighbors,
)
from skknn.memory.graph import GRAPH_MODES
from skknn.voter import KNNVoter

# The memory's parameters: checked by the shared table, handed as they are to
# the KNNVoter that fit builds.
_MEMORY_PARAMS = ("metric", "preprocessing", "index", "index_params", "device")


class KNNTransformer(
    DelegatedCertificates,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Transform ``X`` into a sparse k-neighbours graph, searched in a memory.

    The contract of scikit-learn's ``KNeighborsTransformer``, with skknn's
    memory and engines behind it (any ``index``: exact torch, FAISS flat, IVF,
    HNSW, PQ), so that estimators taking ``metric="precomputed"`` graphs
    (``Isomap``, ``TSNE``, ``SpectralClustering``, ``DBSCAN``) run on
    approximate neighbours in a ``Pipeline``.

    Parameters
    ----------
    mode : {"distance", "connectivity"}, default="distance"
        Graph entries: distances, or ones. As sklearn's, ``transform`` returns
        ``n_neighbors + 1`` neighbours per row in ``"distance"`` mode, so that
        on the fitted ``X`` each sample has ``n_neighbors`` others besides
        itself (at distance 0, an explicit entry).
    n_neighbors : int, default=5
        Neighbours per row (plus one in ``"distance"`` mode); capped at the
        memory size.
    metric : {"euclidean", "sqeuclidean", "cosine"}, default="euclidean"
        Distance between (pre-processed) rows; sklearn's default is Euclidean.
    preprocessing : {"l2", "center_l2"} or None, default=None
        As :class:`~skknn.KNNVoter`'s; None leaves rows unchanged (sklearn).
    index : str, default="auto"
        Search engine, as :class:`~skknn.KNNVoter`'s (``"exact"``, ``"flat"``,
        ``"auto"`` or a ``faiss.index_factory`` string such as ``"HNSW32"``).
    index_params : dict, default=None
        FAISS search knobs (``{"efSearch": 64}``, ``{"nprobe": 8}``).
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size : int, default=4096
        Queries searched (and, for sparse ``X``, densified) per block.

    Attributes
    ----------
    knn_ : KNNVoter
        The memory of the fitted rows (ids ``0 .. n_samples_fit_ - 1``).
    n_samples_fit_ : int
        Rows in the memory: the graph's number of columns.
    n_features_in_ : int
        Width of ``X``.
    effective_metric_ : str
        The metric of the graph's distances.

    See Also
    --------
    sklearn.neighbors.KNeighborsTransformer : The same contract, sklearn's search.
    skknn.KNNVoter.kneighbors_graph : The graph of a classifier's memory.

    Notes
    -----
    ``fit_transform(X)`` is ``fit(X).transform(X)``, as sklearn's: each row's
    nearest neighbour is itself. With ``index="exact"``, ``metric="euclidean"``
    and ``preprocessing=None`` the graph equals sklearn's (distances to float32
    precision). A scipy sparse ``X`` is accepted for ``index`` ``"exact"``,
    ``"flat"`` and ``"auto"``.

    Examples
    --------
    >>> from skknn import KNNTransformer
    >>> X = [[0.], [1.], [3.], [6.]]
    >>> graph = KNNTransformer(n_neighbors=1, index="exact").fit_transform(X)
    >>> graph.toarray()
    array([[0., 1., 0., 0.],
           [1., 0., 0., 0.],
           [0., 2., 0., 0.],
           [0., 0., 3., 0.]])
    >>> graph.nnz  # n_neighbors + 1 per row, self at distance 0 included
    8
    """

    _parameter_constraints: dict = {
        "mode": [StrOptions(set(GRAPH_MODES))],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        **{name: MEMORY_PARAMETER_CONSTRAINTS[name] for name in _MEMORY_PARAMS},
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }
    _parameter_hints: dict = MEMORY_PARAMETER_HINTS

    def __init__(
        self,
        *,
        mode: str = "distance",
        n_neighbors: int = 5,
        metric: str = "euclidean",
        preprocessing: str | None = None,
        index: str = "auto",
        index_params: dict | None = None,
        device: str = "auto",
        batch_size: int = 4096,
    ):
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.preprocessing = preprocessing
        self.index = index
        self.index_params = index_params
        self.device = device
        self.batch_size = batch_size

    def fit(self, X, y=None):
        """Store the rows of ``X`` in a memory.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Training rows.
        y : None
            Ignored.

        Returns
        -------
        self : KNNTransformer
            The fitted transformer.
        """
        self._check_params()
        refuse_fitted_neighbors(self, X)
        check_sparse_engine(self, X, self.index)
        X = validate_data(self, X, dtype=np.float32, accept_sparse="csr")
        knn = KNNVoter(
            self.n_neighbors,
            voting="plurality",
            batch_size=self.batch_size,
            **{name: getattr(self, name) for name in _MEMORY_PARAMS},
        )
        # A memory needs labels; one class stands for "a row".
        self.knn_ = knn.fit(X, np.zeros(X.shape[0], dtype=np.int64))
        return self

    def transform(self, X):
        """The k-neighbours graph of ``X`` among the fitted rows.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_queries, n_features)
            Query rows.

        Returns
        -------
        graph : scipy.sparse.csr_matrix of shape (n_queries, n_samples_fit)
            ``n_neighbors`` entries per row, one more in ``"distance"`` mode.
        """
        check_is_fitted(self)
        self._check_params()
        check_sparse_engine(self, X, self.index)
        X = validate_data(self, X, reset=False, dtype=np.float32, accept_sparse="csr")
        add_one = self.mode == "distance"  # sklearn's rule, kept exactly
        return self.knn_.kneighbors_graph(
            X, n_neighbors=self.n_neighbors + add_one, mode=self.mode
        )

    def _check_params(self) -> None:
        # The memory's own rules (a FAISS factory string, the device) are
        # checked by the KNNVoter that fit builds.
        check_params(self)

    @property
    def n_samples_fit_(self) -> int:
        return self.knn_.n_samples_fit_

    @property
    def effective_metric_(self) -> str:
        return self.knn_.effective_metric_

    @property
    def _n_features_out(self) -> int:
        return self.n_samples_fit_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.index in SPARSE_INDEXES
        tags.non_deterministic = self.index not in SPARSE_INDEXES
        tags.requires_fit = True
        return tags
