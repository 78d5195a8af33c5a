"""skknn on a Dask cluster: what a sharded memory needs besides the estimator.

Two ways to use a cluster, for two different limits:

- **The memory does not fit one machine**: ``KNNVoter(backend="dask")`` keeps
  it in shards on the workers (``skknn/memory/sharded.py``); every estimator method
  works as before.
- **The memory fits, the queries do not** (a stream, a large dask array):
  :func:`predict` scatters the fitted estimator to every worker once and
  predicts the query blocks where they are (the replicated mode).

:func:`to_local` brings a sharded memory into this process. :class:`ShardLost`
is raised, with no partial answer, when a shard's worker is gone.

Each function below has a runnable example on a ``LocalCluster``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from skknn._docstrings import fill_doc
from skknn.memory.sharded import ShardedStore, ShardLost, current_client

__all__ = ["ShardLost", "ShardedStore", "predict", "to_local"]


@fill_doc
def to_local(estimator):
    """A copy of a ``backend="dask"`` KNNVoter whose memory is gathered into
    this process (``backend="local"``): same ids, vectors, labels, weights and
    exclusions, the index built here. The sharded original is untouched.

    Parameters
    ----------
    estimator : KNNVoter
        Fitted with ``backend="dask"``.

    Returns
    -------
    local : KNNVoter
        Fitted, with ``backend="local"`` and ``n_shards=None``, its memory a
        :class:`~skknn.VectorStore` on the estimator's device.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.distributed import to_local
    %(local_cluster)s
    >>> X = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> knn = KNNVoter(1, index="flat", backend="dask").fit(X, [0, 0, 1, 1])
    >>> local = to_local(knn)
    >>> local.backend, type(local.memory_).__name__, local.memory_.ids()
    ('local', 'VectorStore', array([0, 1, 2, 3]))
    >>> local.predict([[.8, .2], [.2, .8]])
    array([0, 1])
    >>> client.close(); cluster.close()
    """
    from skknn._device import resolve_device
    from skknn.memory.front import VectorStore
    from skknn.voter import KNNVoter

    if not isinstance(estimator, KNNVoter):
        raise TypeError(
            "to_local takes a KNNVoter; for a JointKNNClassifier or MemoryPruner "
            "with a sharded memory, save it and skknn.load(path, backend='local')."
        )
    store = estimator.memory_
    if not getattr(store, "sharded", False):
        raise ValueError("This KNNVoter's memory is already local.")
    device = resolve_device(estimator.device, owner="KNNVoter")
    with store.reading():
        meta, arrays = store.gathered_state(device)
    local = clone(estimator).set_params(backend="local", n_shards=None)
    local.__skknn_adopt__(VectorStore.from_state(meta, arrays, device), estimator)
    return local


def _apply(block, estimator, method):
    return getattr(estimator, method)(block)


@fill_doc
def predict(estimator, X, *, method: str = "predict", client=None):
    """Predict query blocks on every worker, the memory scattered once.

    For a memory that fits one machine and a query stream that does not: the
    fitted estimator (its memory included) is sent to each worker once
    (``client.scatter(broadcast=True)``) and every task refers to that copy.

    Parameters
    ----------
    estimator : fitted estimator with a local memory
        A KNNVoter, JointKNNClassifier or MemoryPruner (``backend="local"``).
    X : dask.array.Array or sequence of array-like
        Queries: a dask array (rows in chunks), or blocks.
    method : {"predict", "predict_proba", "score_samples"}, default="predict"
        The estimator's method applied to each block.
    client : distributed.Client, default=None
        The current client when None.

    Returns
    -------
    out : dask.array.Array or ndarray
        A dask array (lazy, one block per chunk of ``X``) for a dask array;
        else the blocks' results, concatenated.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from skknn import KNNVoter
    >>> from skknn.distributed import predict
    %(local_cluster)s
    >>> X = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> knn = KNNVoter(1, index="flat").fit(X, [0, 0, 1, 1])
    >>> predict(knn, [X[:2], X[2:]])
    array([0, 0, 1, 1])
    >>> predict(knn, da.from_array(X, chunks=(2, 2))).compute()
    array([0, 0, 1, 1])
    >>> client.close(); cluster.close()
    """
    if method not in ("predict", "predict_proba", "score_samples"):
        raise ValueError(
            "method must be 'predict', 'predict_proba' or 'score_samples'; got "
            f"{method!r}."
        )
    memory = _memory_of(estimator)
    if getattr(memory, "sharded", False):
        raise ValueError(
            "This estimator's memory is already sharded on the cluster: call its "
            f"{method} directly. The replicated mode is for local memories."
        )
    client = current_client() if client is None else client
    [remote] = client.scatter([estimator], broadcast=True, hash=False)
    if _is_dask_array(X):
        return _predict_dask_array(estimator, remote, X, method)
    futures = client.map(_apply, list(X), estimator=remote, method=method, pure=False)
    results = client.gather(futures)
    return np.concatenate(results) if results else np.empty(0)


def _predict_dask_array(estimator, remote, X, method):
    if X.ndim != 2:
        raise ValueError(f"X must be 2-d; got a dask array of shape {X.shape}.")
    X = X.rechunk({1: -1})
    classes = estimator.classes_ if method != "score_samples" else None
    levels = isinstance(classes, list)  # multi-output labels: one array per level
    if method == "predict_proba" and levels:
        raise ValueError(
            "predict_proba of multi-output labels gives one array per level; "
            "pass blocks instead of a dask array."
        )
    if method == "predict_proba" or (method == "predict" and levels):
        # One column per class, or per level of predicted labels.
        shape = {"chunks": (X.chunks[0], (len(classes),))}
        dtype = np.float64 if method == "predict_proba" else object
    else:
        shape = {"drop_axis": 1}
        dtype = classes.dtype if method == "predict" else np.float64
    return X.map_blocks(_apply, remote, method, dtype=dtype, **shape)


def _is_dask_array(X) -> bool:
    try:
        import dask.array as da
    except ImportError:
        return False
    return isinstance(X, da.Array)


def _memory_of(estimator):
    for name in ("memory_", "knn_", "estimator_"):
        inner = getattr(estimator, name, None)
        if inner is None:
            continue
        if name == "memory_":
            return inner
        return _memory_of(inner)
    raise ValueError("predict needs a fitted estimator (call fit first).")
