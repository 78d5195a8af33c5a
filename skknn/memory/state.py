"""How a store becomes arrays and JSON and back: its persistence, for save and
load and for pickling, and the files of skknn 0.1 (format 1).

A mixin of :class:`~skknn.VectorStore`: everything here reads and writes the
store's own arrays, so it lives with the class, in a file of its own.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from skknn._archive import RowsInOrder
from skknn._hierarchy import Taxonomy
from skknn.memory.backends.disk import DiskRows
from skknn.memory.checks import check_state, refuse_rescaled
from skknn.memory.locks import reads
from skknn.memory.preprocessing import choose_scale, largest_abs, rescaled


class StoreStateMixin:
    """``state()`` / ``from_state()``, pickling, and format-1 files."""

    @reads
    def state(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: JSON-able scalars and the arrays, trimmed to the rows,
        in memory order (on disk, gathered so when a deletion moved rows)."""
        meta, arrays = self._state_of(
            self._buffers(), self._n, order=self._logical_rows()
        )
        for name, value in self.engine.state().items():
            arrays["engine/" + name] = value
        return meta, arrays

    def _state_of(self, bufs: list, n: int, order=None, **changes) -> tuple[dict, dict]:
        """The state the store has, or would have with ``bufs``, ``n`` rows and
        the ``changes`` (classes, taxonomy, mean, next_id, version,
        index_params) an edit is about to make; without the engine's state.
        ``order``: rows ``[0, n)`` in memory order (None: as they lie), the
        arrays are then gathered in it."""
        from skknn._archive import labels_to_json

        now = {
            "classes": self._classes,
            "taxonomy": self._taxonomy,
            "mean": self._mean,
            "next_id": self._next_id,
            "version": self._version,
            "index_params": self.index_params,
            "engine_name": self.engine_name,
            "scale": self._scale,
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
            "scale": float(now["scale"]),
        }
        if taxonomy is not None:
            meta["taxonomy"] = [labels_to_json(c) for c in taxonomy.classes]

        def rows(b):
            return np.ascontiguousarray(b[:n] if order is None else b[order])

        X, y, ids, rel, excl, sw = bufs[:6]
        arrays = {
            # moved rows: gathered block by block when written, never whole
            "embeddings": rows(X) if order is None else RowsInOrder(X, order[:n]),
            "labels": rows(y),
            "sample_ids": rows(ids),
            "reliability": rows(rel),
            "excluded": rows(excl),
            "sample_weight": rows(sw),
        }
        if now["scale"] != 1.0:  # saved pre-processed, as a shard split reads them
            arrays["embeddings"] = rescaled(arrays["embeddings"], 1.0 / now["scale"])
        if len(bufs) > 6:
            arrays["norms"] = rows(bufs[6])
        if now["mean"] is not None:
            arrays["mean"] = now["mean"]
        if taxonomy is not None:
            arrays["taxonomy_paths"] = taxonomy.paths
        return meta, arrays

    def _commit(self, bufs, n: int, *, removed=None, **changes) -> None:
        """Commit the state an edit is about to make to the row backend (a no-op
        in RAM): the per-row ``bufs`` (None: the current ones) and the
        ``changes``; with ``removed``, the deletion of those committed rows
        (``skknn/memory/backends/disk.py``)."""

        def describe():
            if self.commit_guard is not None:
                self.commit_guard()
            now = self._buffers() if bufs is None else bufs
            meta, arrays = self._state_of(now, n, **changes)
            small = {k: arrays[k] for k in ("mean", "taxonomy_paths") if k in arrays}
            return meta, small

        self._rows.commit(describe, bufs, n, removed=removed)

    @classmethod
    def from_state(
        cls,
        meta: dict,
        arrays: dict,
        device: torch.device,
        storage_path=None,
        *,
        order=None,
    ):
        """The store :meth:`state` described, its engine on ``device``; with
        ``storage_path``, its vectors streamed into a file there (never whole in
        RAM). Without the engine's state, the index is built afresh.
        ``order``: each row's sequence number, when the arrays are not in
        memory order (a folder's rows, moved by deletions): the index is built
        in memory order."""
        from skknn._archive import labels_from_json
        from skknn.memory.engines import engine_rows

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
        scale = _saved_scale(meta, X, store.normalizes)
        if meta.get("scale") is None and scale != 1.0:
            arrays = {k: v for k, v in arrays.items() if not k.startswith("engine/")}
        if scale != 1.0:
            refuse_rescaled(storage_path, store.storage_dtype)
            X = rescaled(X, scale)  # a copy: the engine searches rescaled vectors
        store._scale = scale
        if storage_path is not None:
            store._rows = DiskRows.new(storage_path, X.shape[1], X.dtype)
        X = store._rows.adopt(X, n)  # on disk, streamed into a file
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
        if order is not None and n > 1 and not np.all(order[1:n] > order[: n - 1]):
            order = np.argsort(order[:n], kind="stable")
        else:
            order = None
        if n and engine_state:
            store.engine.load_state(engine_state, store._X[:n], store._ids[:n])
        elif n:
            store.engine.build(
                *engine_rows(store.engine, store._X, store._ids, n, order)
            )
        bufs = store._buffers()
        store._commit(bufs, n)
        # on disk, every per-row array is now its file's map, with the vectors'
        # layout
        store._set_buffers(store._rows.published(bufs))
        return store

    @classmethod
    def open(cls, folder, device="cpu", *, verify_vectors: bool = True):
        """Reopen the last committed state of a store's folder (every per-row
        array memory-mapped, the index built afresh from the vectors).

        A damaged, truncated, linked or out-of-date part raises
        :class:`~skknn.ModelFileError` (``skknn/memory/segments.py``)."""
        from skknn.exceptions import ModelFileError
        from skknn.memory.checks import InvalidState

        rows, meta, arrays, n = DiskRows.open(folder, verify_vectors=verify_vectors)
        order = rows.sequence(n)
        try:
            try:
                store = cls.from_state(meta, arrays, torch.device(device), order=order)
            except (InvalidState, KeyError, TypeError) as exc:
                raise ModelFileError(
                    rows.folder / "manifest.json",
                    "manifest.json: store",
                    f"does not describe a memory ({exc})",
                ) from exc
            # Every per-row array is its file's map, all with the same capacity:
            # an add writes its rows past n in each of them (skknn/memory/segments.py).
            count = len(store._buffers())
            if count > rows.n_parts:
                raise ModelFileError(
                    rows.folder / "manifest.json",
                    "manifest.json: parts",
                    "names no norms for a memory that normalises",
                )
            store._rows = rows
            store._set_buffers(rows.published(store._buffers()))
        except BaseException:
            rows.close()
            raise
        return store

    def __getstate__(self):
        self._rows.check_picklable()
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


def _saved_scale(meta: dict, X: np.ndarray, normalizes: bool) -> float:
    """The scale of a saved state (a power of two), or, where it names none
    (older files, a shard's split of a memory), the one its data calls for;
    the index saved with an older file is then rebuilt."""
    from skknn.memory.checks import InvalidState

    scale = meta.get("scale")
    if scale is None:
        return 1.0 if normalizes else choose_scale(largest_abs(X))
    ok = (
        isinstance(scale, (int, float))
        and not isinstance(scale, bool)
        and 0 < scale < np.inf
        and np.frexp(scale)[0] == 0.5
        and (scale == 1.0 or not normalizes)
    )
    if not ok:
        raise InvalidState(
            f"scale must be a power of two (1 when normalising); got {scale!r}"
        )
    return float(scale)
