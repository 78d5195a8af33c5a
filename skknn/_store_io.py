"""How a store becomes arrays and JSON and back: its persistence, for save and
load and for pickling, and the files of skknn 0.1 (format 1).

A mixin of :class:`~skknn.VectorStore`: everything here reads and writes the
store's own arrays, so it lives with the class, in a file of its own.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from skknn._disk import DiskVectors
from skknn._hierarchy import Taxonomy
from skknn._locks import reads
from skknn._store_checks import check_state


class StoreStateMixin:
    """``state()`` / ``from_state()``, pickling, and format-1 files."""

    @reads
    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: JSON-able scalars and the arrays, trimmed to the rows."""
        meta, arrays = self._state_of(self._buffers(), self._n)
        for name, value in self.engine.state().items():
            arrays["engine/" + name] = value
        return meta, arrays

    def _state_of(self, bufs: list, n: int, **changes) -> tuple[dict, dict]:
        """The state the store has, or would have with ``bufs``, ``n`` rows and
        the ``changes`` (classes, taxonomy, mean, next_id, version,
        index_params) an edit is about to make; without the engine's state."""
        from skknn._archive import labels_to_json

        now = {
            "classes": self._classes,
            "taxonomy": self._taxonomy,
            "mean": self._mean,
            "next_id": self._next_id,
            "version": self._version,
            "index_params": self.index_params,
            "engine_name": self.engine_name,
        }
        now.update(changes)
        classes, taxonomy = now["classes"], now["taxonomy"]
        meta = {
            "n_features": self.n_features,
            "metric": self.metric.name,
            "preprocessing": self.preprocessing,
            "engine": now["engine_name"],
            "auto": self.auto,
            "storage_dtype": self.storage_dtype,
            "index_params": now["index_params"],
            "next_id": int(now["next_id"]),
            "uid": self.uid,
            "version": int(now["version"]),
            "classes": None if classes is None else labels_to_json(classes),
        }
        if taxonomy is not None:
            meta["taxonomy"] = [labels_to_json(c) for c in taxonomy.classes]
        X, y, ids, rel, excl, sw = bufs[:6]
        arrays = {
            "embeddings": np.ascontiguousarray(X[:n]),
            "labels": np.ascontiguousarray(y[:n]),
            "sample_ids": np.ascontiguousarray(ids[:n]),
            "reliability": np.ascontiguousarray(rel[:n]),
            "excluded": np.ascontiguousarray(excl[:n]),
            "sample_weight": np.ascontiguousarray(sw[:n]),
        }
        if len(bufs) > 6:
            arrays["norms"] = np.ascontiguousarray(bufs[6][:n])
        if now["mean"] is not None:
            arrays["mean"] = now["mean"]
        if taxonomy is not None:
            arrays["taxonomy_paths"] = taxonomy.paths
        return meta, arrays

    def _commit(self, bufs: list, n: int, gen: int | None = None, **changes) -> None:
        """On disk, commit the state an edit is about to make (nothing in RAM)."""
        if self._disk is None:
            return
        meta, arrays = self._state_of(bufs, n, **changes)
        del arrays["embeddings"]  # they are the generation file's rows
        self._disk.commit(meta, arrays, self._disk.gen if gen is None else gen, n)

    @classmethod
    def from_state(
        cls, meta: dict, arrays: dict, device: torch.device, storage_path=None
    ):
        """The store :meth:`state` described, its engine on ``device``; with
        ``storage_path``, its vectors streamed into a file there (never whole in
        RAM). Without the engine's state, the index is built afresh."""
        from skknn._archive import labels_from_json

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
        if storage_path is not None:
            store._disk = DiskVectors.new(storage_path, X.shape[1], X.dtype)
            store._disk.gen, rows = store._disk.write_generation(X, [(0, n)], n)
            X = rows[:n]
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
        store.auto = bool(meta.get("auto", False))
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
        if n and engine_state:
            store.engine.load_state(engine_state, store._X[:n], store._ids[:n])
        elif n:
            store.engine.build(store._X[:n], store._ids[:n])
        if store._disk is not None:
            store._commit(store._buffers(), n)
        return store

    @classmethod
    def open(cls, folder, device="cpu"):
        """Reopen the last committed state of a store's folder (its vectors
        memory-mapped, the index built afresh from them)."""
        disk, meta, arrays, rows, n = DiskVectors.open(folder)
        arrays["embeddings"] = rows[:n]
        try:
            store = cls.from_state(meta, arrays, torch.device(device))
        except BaseException:
            disk._release()
            raise
        store._X, store._disk = rows, disk
        return store

    def __getstate__(self):
        if self._disk is not None:
            raise TypeError(
                "A memory kept on disk (storage_path) is not pickled: the pickle "
                "would copy every vector through RAM, and two copies would share "
                "one folder. Save it with est.save(path) (streamed from the file) "
                "and read it with skknn.load(path, mmap=True), or reopen its "
                "folder with skknn.load(storage_path)."
            )
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
        from skknn._archive import labels_to_json

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
