"""The memory of a ``KNNVoter`` as its parameters shape it: their checks, the
configuration a fit freezes, a new memory (local or sharded), the storage
folder it is published in, and the fitted attributes read from it.

A mixin of :class:`skknn.KNNVoter` (``skknn/voter.py``); the constraints table
the checks start from is ``skknn/_memory_params.py``.
"""

from __future__ import annotations

import functools

import numpy as np

from skknn._device import resolve_device, resolve_engine
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS
from skknn._param_validation import check_params, check_values
from skknn.memory import folder as _storage_folder
from skknn.memory.front import VectorStore


class FittedMemoryMixin:
    """The parameters that shape the memory, checked and frozen at fit, and
    what the fitted memory holds."""

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

    def _new_memory(self, n_features: int):
        """An empty memory as the parameters describe it (local or sharded)."""
        if self.backend == "dask":
            from skknn.memory.sharded import ShardedStore

            config = shard_config(self, self.index_params)
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


def shard_config(est, index_params) -> dict:
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
