"""How a :class:`~skknn.VectorStore` comes back from arrays and JSON: for load,
for unpickling, from a folder on disk, and from the files of skknn 0.1 (format 1).

The state itself is written by :meth:`MemoryFront.state
<skknn.memory.base.MemoryFront.state>` (the front's part, then
:meth:`LocalRows.state <skknn.memory.local.LocalRows.state>`, the rows').
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from skknn.memory.backends.disk import DiskRows
from skknn.memory.checks import check_state
from skknn.memory.local import LocalRows


class StoreStateMixin:
    """``from_state()`` / ``open()``, pickling, and format-1 files of a
    :class:`~skknn.VectorStore`: its front's state and its rows
    (:meth:`LocalRows.from_state <skknn.memory.local.LocalRows.from_state>`)."""

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

        check_state(meta, arrays)
        rows = LocalRows.from_state(meta, arrays, device, storage_path, order=order)
        store = cls.__new__(cls)
        store._front(meta["n_features"], rows.metric, meta["preprocessing"], rows)
        store._restore_front(meta, arrays)
        rows.settle(store._front_state())
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
            store.backend.adopt_storage(rows)
        except BaseException:
            rows.close()
            raise
        return store

    def __getstate__(self):
        self.backend.check_picklable()
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
