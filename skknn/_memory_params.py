"""The parameters that shape a memory, and their constraints, in one place.

``KNNVoter`` builds its memory from them (its ``_memory_config`` is fixed from
the first fit on); ``KNNTransformer`` hands them to the ``KNNVoter`` it fits,
and ``JointKNNClassifier`` and ``TorchFeatureExtractor`` take ``device`` with
the same meaning. Each estimator's ``_parameter_constraints`` takes the entries
it accepts from here, so a rule changes once for all of them.
"""

from __future__ import annotations

import os
from numbers import Integral

import torch

from skknn._param_validation import Interval, StrOptions
from skknn.memory.checks import STORAGE_DTYPES
from skknn.memory.metric import METRICS
from skknn.memory.preprocessing import PREPROCESSING

MEMORY_PARAMETER_CONSTRAINTS: dict = {
    "metric": [StrOptions(set(METRICS))],
    "preprocessing": [StrOptions(set(PREPROCESSING)), None],
    # "auto", "exact", "flat" or any faiss.index_factory string: FAISS parses
    # the factory string at fit, which no table can do.
    "index": [str],
    # FAISS knobs by their FAISS names: checked against the index by the memory.
    "index_params": [dict, None],
    # "auto", "cpu", "cuda", "cuda:N": _device.resolve_device reads the string
    # at fit and knows whether this machine has that device.
    "device": [str, torch.device],
    "storage_dtype": [StrOptions(set(STORAGE_DTYPES))],
    "storage_path": [str, os.PathLike, None],
    "backend": [StrOptions({"local", "dask"})],
    "n_shards": [Interval(Integral, 1, None, closed="left"), None],
}

# What to pass instead, after sklearn's message (see _param_validation).
MEMORY_PARAMETER_HINTS: dict = {
    "index": (
        "Use 'auto', 'exact', 'flat' or a faiss.index_factory string such as "
        "'IVF1024,Flat' or 'HNSW32'."
    ),
    "device": "Use 'auto', 'cpu', 'cuda' or 'cuda:N'.",
}
