"""Numpydoc text that several public docstrings share word for word.

A docstring names a shared entry with ``%(name)s`` on a line of its own;
:func:`fill_doc` replaces the line with the entry, indented as the placeholder
is, so ``__doc__``, ``help()`` and the API reference read exactly as if the text
were written in place (as MNE's ``fill_doc`` and pandas' ``Substitution`` do).
An unknown name fails at import. Only whole placeholder lines are replaced:
other ``%`` characters in a docstring are left alone.
"""

from __future__ import annotations

import re

__all__ = ["DOCS", "fill_doc"]

DOCS: dict[str, str] = {
    # -- the row-backend protocol (memory/protocols.py) ---------------------------
    "sharded_parameters": """\
Parameters
----------
n_features : int
    Embedding width.
config : dict
    The estimator's ``metric``, ``preprocessing``, ``index``,
    ``index_params``, ``device`` and ``storage_dtype``.
n_shards : int, default=None
    One per worker of the client's cluster when None.
client : distributed.Client, default=None
    The current client when None. It is used, never stored in a file or a
    pickle.""",
    "backend_collect": """\
Parameters
----------
pending : object
    What :meth:`submit` / :meth:`submit_self` returned.
k : int
    Neighbours per query.""",
    # -- queries of the estimators (joint.py, pruning.py) -------------------------
    "X_queries": """\
Parameters
----------
X : array-like of shape (n_queries, n_features)
    Queries (raw embeddings, as given to :meth:`fit`).""",
    "partial_fit_Xy": """\
Parameters
----------
X : array-like of shape (n_samples, n_features)
    Embeddings of the new samples.
y : array-like of shape (n_samples,)
    Their labels, new classes included.""",
    "returns_labels": """\
Returns
-------
y : ndarray of shape (n_queries,)
    Predicted labels.""",
    "returns_proba": """\
Returns
-------
proba : ndarray of shape (n_queries, n_classes)
    Columns follow :attr:`classes_`.""",
    "returns_scores": """\
Returns
-------
scores : ndarray of shape (n_queries,)
    Minus each query's distance to its ``k``-th nearest neighbour.""",
    # -- KNNVoter's queries --------------------------------------------------------
    "X_voter_queries": """\
Parameters
----------
X : array-like of shape (n_queries, n_features)
    Queries (raw embeddings; the memory pre-processes them).""",
    "columns_per_level": """\
Columns follow :attr:`classes_`; for multi-output labels one array
per level.""",
    # -- kneighbors (voter.py, joint.py, pruning.py) --------------------------------
    "X_kneighbors": """\
Parameters
----------
X : array-like of shape (n_queries, n_features), default=None
    Queries. None queries the memory with its own samples, leaving each
    one out by id (FORMULAS.md 2), like sklearn's ``kneighbors()``.""",
    "return_distance": """\
return_distance : bool, default=True
    Also return the distances; False returns the ids only.""",
    "returns_kneighbors": """\
Returns
-------
distances : ndarray of shape (n_queries, k)
    Only when ``return_distance``.
ids : ndarray of shape (n_queries, k)
    Sample ids (-1 where an approximate index found fewer).""",
    # -- the head (heads/_head.py) -------------------------------------------------
    "x_raw": """\
Parameters
----------
x : torch.Tensor of shape (n_samples, n_features)
    Raw inputs.""",
    "new_rows": """\
generator : torch.Generator
    Source of the new rows' weights.
prior_pi : float, default=0.01
    Prior for the new rows' bias.""",
    # -- training the head (heads/_training.py) -----------------------------------
    "loss_settings": """\
alpha, modulation, gamma
    Loss settings, see :func:`knn_weighted_loss`.""",
    # -- FineTunedJointClassifier's queries (finetune.py) ---------------------------
    "X_images": """\
Parameters
----------
X : array-like of images or list
    Query images.""",
    # -- evaluation.py ---------------------------------------------------------------
    "X_evaluated": """\
X : array-like of shape (n_queries, n_features)
    Queries (unused when ``neighbors`` is given).""",
    "max_k": """\
max_k : int, default=100
    The largest ``k`` evaluated (capped at the memory size).""",
    # -- deletion certificates (_certificates.py, memory/digest.py) ----------------
    "returns_digest": """\
Returns
-------
digest : str
    64 hex digits.""",
    # -- the protocols (memory/protocols.py) ----------------------------------------
    "protocol_parameters": """\
Parameters
----------
*args, **kwargs
    A protocol is not instantiated: implementations take their own
    parameters.""",
    # -- examples' set-up --------------------------------------------------------------
    # A cluster in this process (distributed.py, memory/sharded.py); the example
    # closes it with ``client.close(); cluster.close()``.
    "local_cluster": """\
>>> from distributed import Client, LocalCluster
>>> cluster = LocalCluster(n_workers=2, processes=False, dashboard_address=":0")
>>> client = Client(cluster)""",
    # Six points, one mislabelled: what pruning finds (pruning.py,
    # voting/_wrong_decisions.py).
    "mislabelled_points": """\
>>> import numpy as np
>>> X = np.array([[1., 0.], [.9, .1], [.8, .2], [0., 1.], [.1, .9], [.2, .8]])
>>> y = np.array([0, 0, 0, 1, 1, 0])  # the last sample is mislabelled""",
}

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def _indented(match: re.Match) -> str:
    indent, name = match.groups()
    return "\n".join(
        indent + line if line else line for line in DOCS[name].splitlines()
    )


def fill_doc(obj):
    """Replace each ``%(name)s`` line of ``obj.__doc__`` with ``DOCS[name]``.

    Parameters
    ----------
    obj : function or class
        Its docstring is filled in place (apply this decorator first, below
        any decorator that copies the docstring).

    Returns
    -------
    obj
        The same object.
    """
    if obj.__doc__:
        obj.__doc__ = _PLACEHOLDER.sub(_indented, obj.__doc__)
    return obj
