"""How a store becomes arrays and JSON and back: its persistence, for save and
load and for pickling, and the files of skknn 0.1 (format 1).

A mixin of :class:`~skknn.VectorStore`: everything here reads and writes the
store's own arrays, so it lives with the class, in a file of its own.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from skknn._hierarchy import Taxonomy
from skknn._locks import reads
from skknn._store_checks import check_state


class StoreStateMixin:
    """``state()`` / ``from_state()``, pickling, and format-1 files."""

    @reads
    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: JSON-able scalars and the arrays, trimmed to the rows."""
        from skknn.io import labels_to_json

        meta = {
            "n_features": self.n_features,
            "metric": self.metric.name,
            "preprocessing": self.preprocessing,
            "engine": self.engine_name,
            "storage_dtype": self.storage_dtype,
            "index_params": self.index_params,
            "next_id": int(self._next_id),
            "uid": self.uid,
            "version": int(self._version),
            "classes": None if self._classes is None else labels_to_json(self.classes),
        }
        if self._taxonomy is not None:
            meta["taxonomy"] = [labels_to_json(c) for c in self._taxonomy.classes]
        n = self._n
        arrays = {
            "embeddings": np.ascontiguousarray(self._X[:n]),
            "labels": np.ascontiguousarray(self._y[:n]),
            "sample_ids": np.ascontiguousarray(self._ids[:n]),
            "reliability": np.ascontiguousarray(self._rel[:n]),
            "excluded": np.ascontiguousarray(self._excl[:n]),
            "sample_weight": np.ascontiguousarray(self._sw[:n]),
        }
        if self._norm is not None:
            arrays["norms"] = np.ascontiguousarray(self._norm[:n])
        if self._mean is not None:
            arrays["mean"] = self._mean
        if self._taxonomy is not None:
            arrays["taxonomy_paths"] = self._taxonomy.paths
        for name, value in self.engine.state().items():
            arrays["engine/" + name] = value
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict, device: torch.device):
        """The store :meth:`state` described, its engine on ``device``."""
        from skknn.io import labels_from_json

        check_state(meta, arrays)
        store = cls(
            meta["n_features"],
            metric=meta["metric"],
            preprocessing=meta["preprocessing"],
            engine=meta["engine"],
            device=device,
            index_params=meta.get("index_params"),
            storage_dtype=meta.get("storage_dtype", "float32"),
        )
        X = arrays["embeddings"]
        n = X.shape[0]
        store._X, store._y, store._ids = X, arrays["labels"], arrays["sample_ids"]
        store._rel, store._excl = arrays["reliability"], arrays["excluded"]
        # Files of format 1 had no sample weights.
        store._sw = arrays.get("sample_weight", np.ones(n, dtype=np.float32))
        if store._norm is not None:
            store._norm = arrays.get("norms", np.full(n, np.nan, dtype=np.float32))
        store._mean = arrays.get("mean")
        store._n = n
        store._next_id = int(meta["next_id"])
        store.uid = meta["uid"]
        store._version = int(meta["version"])
        if meta.get("classes") is not None:
            store._classes = labels_from_json(meta["classes"])
        if meta.get("taxonomy") is not None:
            store._taxonomy = Taxonomy(
                tuple(labels_from_json(c) for c in meta["taxonomy"]),
                arrays["taxonomy_paths"],
            )
        engine_state = {
            k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("engine/")
        }
        if n:
            store.engine.load_state(engine_state, store._X[:n], store._ids[:n])
        return store

    def __getstate__(self):
        # Copies, taken under the lock: pickle writes them after it is released,
        # and an edit compacts the buffers in place (and a copy.copy must not
        # share them).
        with self._reading():
            meta, arrays = self.state()
            arrays = {name: np.array(value) for name, value in arrays.items()}
        return {"meta": meta, "arrays": arrays, "device": str(self.device)}

    def __setstate__(self, state):
        from skknn._device import device_after_unpickling

        device = device_after_unpickling(state["device"], owner="VectorStore")
        other = type(self).from_state(state["meta"], state["arrays"], device)
        self.__dict__.update(other.__dict__)

    @classmethod
    def from_v1_state(
        cls,
        meta: dict,
        arrays: dict,
        *,
        preprocessing: str | None,
        classes: np.ndarray,
        mean: np.ndarray | None,
        device: torch.device,
        raw: np.ndarray | None = None,
    ):
        """A store from a memory saved by skknn 0.1 (file format 1).

        That format kept the classes, the centre and the pre-processing beside the
        memory, and no vector lengths: ``raw`` (JOINT's saved training inputs,
        aligned with the rows) restores them; without it :meth:`VectorStore.get`
        refuses to invent raw vectors.
        """
        from skknn.io import labels_to_json

        n = arrays["embeddings"].shape[0]
        state = {
            **meta,
            "preprocessing": preprocessing,
            "uid": uuid.uuid4().hex,
            "version": 0,
            "classes": labels_to_json(classes),
        }
        arrays = dict(arrays)
        if mean is not None:
            arrays["mean"] = mean
        normalizes = preprocessing is not None or meta["metric"] == "cosine"
        if normalizes and raw is not None:
            centred = raw - mean if mean is not None else raw
            arrays["norms"] = np.sqrt(np.einsum("ij,ij->i", centred, centred)).astype(
                np.float32
            )
        elif normalizes:
            arrays["norms"] = np.full(n, np.nan, dtype=np.float32)
        return cls.from_state(state, arrays, device)
