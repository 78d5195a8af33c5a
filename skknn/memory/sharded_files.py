"""How a sharded memory becomes files and back: its manifest, the shards' own
files beside it, a local memory split into shards, and shards gathered into one
local memory.

Two mixins, in a file of their own as ``skknn/memory/state.py`` is for
:class:`~skknn.VectorStore`: :class:`DaskFilesMixin` of the row backend
(:class:`~skknn.memory.sharded.DaskRows`: the manifest's rows, the shards'
files, restoring lost shards) and :class:`ShardedFilesMixin` of the front
(:class:`~skknn.distributed.ShardedStore`: opening a manifest or splitting a
local memory). The saved formats (the manifest's fields and arrays, one
archive per shard) are those of skknn 0.3's files.
"""

from __future__ import annotations

import contextvars
import glob
import re
from pathlib import Path

import numpy as np
import torch

from skknn.memory.backends.dask import ROW_ARRAYS
from skknn.memory.metric import METRICS
from skknn.memory.shards import ShardLost, current_client, shard_of, worker_addresses

# Set by skknn.io.save / load around one estimator: where a sharded memory writes
# its shard files, and which backend a loaded one gets.
SAVING: contextvars.ContextVar = contextvars.ContextVar("skknn_saving", default=None)
LOADING: contextvars.ContextVar = contextvars.ContextVar("skknn_loading", default=None)

_SHARD_FILE = re.compile(r"\.[0-9a-f]{12}-v\d+\.shard\d+")


NOT_PICKLED = (
    "A sharded memory (backend='dask') is not pickled or copied: that "
    "would gather every shard's vectors into one process. Save it with "
    "est.save(path) (a manifest and one file per shard, written by the "
    "workers), or bring it into one process with "
    "skknn.distributed.to_local(est)."
)


class DaskFilesMixin:
    """``state()``, ``restore()`` and ``gathered_state()`` of the rows of a
    sharded memory, and the client's half of opening them."""

    # -- files ----------------------------------------------------------------------
    def state(self, meta: dict, arrays: dict) -> tuple[dict, dict]:
        """The manifest ``(meta, arrays)``: the front's (``meta``, ``arrays``)
        with the client's rows; the shards write their own files.

        Only inside ``est.save(path)``: a sharded memory is never gathered into
        one pickle behind the user's back.

        Returns
        -------
        meta : dict
            The client's state (configuration, classes, next id, uid, version)
            and ``shards``: per shard, the name of the file it wrote beside
            ``path``, its uid, version and number of samples.
        arrays : dict
            ``sample_ids`` (insertion order) and ``key_codes`` (the class code
            of each label key); ``mean`` and ``taxonomy_paths`` where held.

        Raises
        ------
        TypeError
            Outside ``est.save(path)`` (a pickle or a copy).
        """
        saving = SAVING.get()
        if saving is None:
            raise TypeError(NOT_PICKLED)
        return self._write_shards(
            Path(saving["path"]), saving["after"], self._client_state(meta, arrays)
        )

    def _write_shards(self, path: Path, after: list, client) -> tuple[dict, dict]:
        folder = path.resolve().parent
        meta, arrays = client
        tag = f"{meta['uid'][:12]}-v{meta['version']}"
        names = [f"{path.name}.{tag}.shard{i}" for i in range(self.n_shards)]
        written = self._gather(
            [
                self._call(i, "save", str(folder / names[i]))
                for i in range(self.n_shards)
            ]
        )
        meta["shards"] = [
            {"file": names[i], **written[i]} for i in range(self.n_shards)
        ]
        # Once the manifest names these files, older saves' shards are deleted:
        # an unlearned vector must not survive in a file the manifest forgot.
        after.append(lambda: _remove_stale(folder, path.name, set(names)))
        return meta, arrays

    def _client_state(self, meta: dict, arrays: dict) -> tuple[dict, dict]:
        """What the client holds: the front's state (``meta``, ``arrays``) with
        the rows', as a manifest without its shard list."""
        meta = {
            "sharded": True,
            "n_shards": self.n_shards,
            **meta,
            "storage_dtype": self.storage_dtype,
            "index": self._config["index"],
            "index_params": self.index_params,
            "auto": self.auto,
            "engine": self.engine_name,
            "device": self._config["device"],
        }
        arrays = {
            "sample_ids": self._ids[: self._n].copy(),
            "key_codes": self._key_codes,
            **arrays,
        }
        return meta, arrays

    @classmethod
    def opened(cls, meta, arrays, client, *, files=None, states=None):
        """The rows a manifest describes, its shards started on the cluster
        from their ``files`` or ``states``."""
        _check_manifest(meta, arrays)
        self = cls.__new__(cls)
        self._restore_client_state(meta, arrays)
        client = current_client() if client is None else client
        workers = worker_addresses(client)
        self._futures = []
        for i in range(self.n_shards):
            worker = workers[i % len(workers)]
            if files is not None:
                fut = self._start_shard(client, worker, i, file=files[i])
            else:  # the rows travel to their worker once, not inside the task
                data = client.scatter([states[i]], workers=[worker])[0]
                fut = self._start_shard(client, worker, i, state=data)
            self._futures.append(fut)
        self._actors = [f.result() for f in self._futures]
        self._describe(self._each("info"))
        return self

    def _restore_client_state(self, meta: dict, arrays: dict) -> None:
        self._configure(
            meta["n_features"],
            {
                "metric": meta["metric"],
                "preprocessing": meta["preprocessing"],
                "index": meta["index"],
                "index_params": meta["index_params"],
                "device": meta["device"],
                "storage_dtype": meta["storage_dtype"],
            },
        )
        self.n_shards = meta["n_shards"]
        self._ids = arrays["sample_ids"]
        self._n = self._ids.size
        self._key_codes = arrays["key_codes"]
        self._sorted_ids = None
        self._marks = [(s["uid"], s["version"], s["n_samples"]) for s in meta["shards"]]

    def restore(self, path, uid: str) -> list[int]:
        """Re-create lost shards from the save at ``path`` of the memory
        ``uid`` (:meth:`ShardedStore.restore`); returns their numbers."""
        from skknn._archive import read_archive

        path = Path(path)
        meta, _ = read_archive(path)
        manifest = _find_manifest(meta["state"])
        if manifest is None or manifest["uid"] != uid:
            raise ValueError(f"{str(path)!r} is not a save of this memory.")
        client = current_client()
        lost = []
        for i in range(self.n_shards):
            try:
                self._gather([self._call(i, "info")])
            except ShardLost:
                lost.append(i)
        workers = worker_addresses(client)
        for i in lost:
            saved = manifest["shards"][i]
            want = self._marks[i]
            if (saved["uid"], saved["version"], saved["n_samples"]) != tuple(want):
                raise ValueError(
                    f"Shard {i} changed after the save at {str(path)!r} (it is at "
                    f"version {want[1]}, the save holds {saved['version']}): its "
                    "later edits exist nowhere. Load the whole save with "
                    "skknn.load(path) instead."
                )
            file = shard_path(path.resolve().parent, saved["file"])
            fut = self._start_shard(client, workers[i % len(workers)], i, str(file))
            self._futures[i], self._actors[i] = fut, fut.result()
        return lost

    def gathered_state(self, meta: dict, arrays: dict, device) -> tuple[dict, dict]:
        """One local store's ``(meta, arrays)`` holding every shard's rows,
        with the front's state (:meth:`ShardedStore.gathered_state`)."""
        meta, arrays = self._client_state(meta, arrays)
        shards = self._each("state")
        return local_state(
            meta, arrays, [shards[i] for i in range(self.n_shards)], device
        )


class ShardedFilesMixin:
    """``from_manifest()`` / ``from_local_state()`` of a sharded memory's front."""

    @classmethod
    def from_manifest(cls, meta: dict, arrays: dict, folder: Path, client=None):
        """Re-create the shards of a saved sharded memory on the current cluster.

        Parameters
        ----------
        meta : dict
            The manifest :meth:`state` wrote; its ``shards`` name the files.
        arrays : dict
            The manifest's arrays (``sample_ids``, ``key_codes``, ...).
        folder : path-like
            The folder holding the shard files; each shard's worker reads its
            file there.
        client : distributed.Client, default=None
            The current client when None.

        Returns
        -------
        store : ShardedStore
            One shard per file, each checked against the manifest (files from
            different saves raise ValueError).
        """
        files = [str(shard_path(Path(folder), s["file"])) for s in meta["shards"]]
        self = cls._opened(meta, arrays, client, files=files)
        for i, shard in enumerate(meta["shards"]):
            got = self.backend.mark(i)
            want = (shard["uid"], shard["version"], shard["n_samples"])
            if tuple(got) != want:
                raise ValueError(
                    f"shard file {shard['file']!r} holds shard state {got}, but the "
                    f"manifest names {want}: the files are from different saves"
                )
        return self

    @classmethod
    def from_local_state(cls, meta, arrays, config: dict, n_shards=None, client=None):
        """Split a local store's state into shards on the current cluster (rows
        routed by id as :meth:`add` routes them, vectors sent as stored).

        Parameters
        ----------
        meta : dict
            A local store's state (:meth:`VectorStore.state`), its scalars.
        arrays : dict
            That state's arrays.
        config : dict
            As the class takes it; its ``index``, ``index_params`` and
            ``device`` make each shard's engine (the rest comes from ``meta``).
        n_shards : int, default=None
            One per worker of the client's cluster when None.
        client : distributed.Client, default=None
            The current client when None.

        Returns
        -------
        store : ShardedStore
            The same samples, ids, uid and version, in ``n_shards`` shards.
        """
        from skknn.memory.backends.dask import split_state

        client = current_client() if client is None else client
        if n_shards is None:
            n_shards = len(worker_addresses(client))
        ids = arrays["sample_ids"]
        taxonomy = meta.get("taxonomy")
        n_codes = (
            arrays["taxonomy_paths"].shape[0]
            if taxonomy is not None
            else len(meta["classes"]["values"])
            if meta.get("classes")
            else 0
        )
        manifest = {
            **{
                k: meta[k]
                for k in (
                    "n_features",
                    "metric",
                    "preprocessing",
                    "next_id",
                    "uid",
                    "version",
                    "classes",
                )
            },
            "storage_dtype": meta.get("storage_dtype", "float32"),
            "index": config["index"],
            "index_params": config["index_params"] or {},
            "device": config["device"],
            "n_shards": int(n_shards),
            "shards": [],
        }
        if taxonomy is not None:
            manifest["taxonomy"] = taxonomy
        client_arrays = {"sample_ids": ids, "key_codes": np.arange(n_codes)}
        for name in ("mean", "taxonomy_paths"):
            if name in arrays:
                client_arrays[name] = arrays[name]
        states = split_state(meta, arrays, int(n_shards), shard_of(ids, n_shards))
        manifest["shards"] = [
            {"uid": m["uid"], "version": 0, "n_samples": int(a["sample_ids"].size)}
            for m, a in states
        ]
        return cls._opened(manifest, client_arrays, client, states=states)

    @classmethod
    def _opened(cls, meta, arrays, client, *, files=None, states=None):
        self = cls.__new__(cls)
        _check_manifest(meta, arrays)
        self._restore_front(meta, arrays)  # refused before any actor starts
        rows = cls._rows_type.opened(meta, arrays, client, files=files, states=states)
        self._front(
            meta["n_features"], METRICS[meta["metric"]], meta["preprocessing"], rows
        )
        self._restore_front(meta, arrays)
        return self


def shard_path(folder: Path, name: str) -> Path:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"shard file name {name!r} is not a plain file name")
    return folder / name


def _remove_stale(folder: Path, stem: str, keep: set) -> None:
    for f in folder.glob(f"{glob.escape(stem)}.*.shard*"):
        name = f.name
        if name not in keep and _SHARD_FILE.fullmatch(name[len(stem) :]):
            f.unlink(missing_ok=True)


def _find_manifest(state: dict):
    """The sharded memory's manifest in an estimator's saved state (nested
    voters included), or None."""
    if not isinstance(state, dict):
        return None
    if state.get("memory", {}).get("sharded"):
        return state["memory"]
    for value in state.values():
        if isinstance(value, dict):
            found = _find_manifest(value)
            if found is not None:
                return found
    return None


def _check_manifest(meta: dict, arrays: dict) -> None:
    need = (
        "n_shards",
        "shards",
        "n_features",
        "metric",
        "preprocessing",
        "storage_dtype",
        "index",
        "index_params",
        "device",
        "next_id",
        "uid",
        "version",
        "classes",
    )
    missing = [k for k in need if k not in meta]
    if missing:
        raise ValueError(f"the shard manifest lacks {missing}")
    if len(meta["shards"]) != meta["n_shards"]:
        raise ValueError("the manifest lists a different number of shard files")
    if "sample_ids" not in arrays or "key_codes" not in arrays:
        raise ValueError("the manifest lacks its sample ids or label keys")
    total = sum(int(s["n_samples"]) for s in meta["shards"])
    if total != arrays["sample_ids"].shape[0]:
        raise ValueError(
            f"the shards hold {total} samples but the manifest lists "
            f"{arrays['sample_ids'].shape[0]} ids"
        )


def local_state(meta: dict, arrays: dict, shards: list, device) -> tuple[dict, dict]:
    """One local store's ``(meta, arrays)`` from a manifest and its shards'
    states: rows in the memory's insertion order, label keys turned into class
    codes, the index chosen for ``device`` (rebuilt when the store is made)."""
    from skknn._archive import labels_from_json
    from skknn._device import resolve_engine
    from skknn.memory.engines import auto_engine

    ids = np.concatenate([s[1]["sample_ids"] for s in shards])
    want = arrays["sample_ids"]
    sorter = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, want, sorter=sorter)
    pos = sorter[np.minimum(pos, max(ids.size - 1, 0))]
    if ids.size != want.size or not np.array_equal(ids[pos], want):
        raise ValueError("the shards do not hold exactly the manifest's sample ids")
    keys = np.concatenate(
        [
            labels_from_json(s[0]["classes"]).astype(np.int64)[s[1]["labels"]]
            if s[0].get("classes") is not None
            else s[1]["labels"]
            for s in shards
        ]
    )
    key_codes = arrays["key_codes"]
    if keys.size and (keys.min() < 0 or keys.max() >= key_codes.size):
        raise ValueError("a shard holds a label key the manifest does not know")
    out = {
        name: np.concatenate([s[1][name] for s in shards])[pos] for name in ROW_ARRAYS
    }
    if all("norms" in s[1] for s in shards):
        out["norms"] = np.concatenate([s[1]["norms"] for s in shards])[pos]
    out["labels"] = key_codes[keys][pos]
    for name in ("mean", "taxonomy_paths"):
        if name in arrays:
            out[name] = arrays[name]
    engine = resolve_engine(meta["index"], torch.device(device))
    auto = engine == "auto"
    index_params = meta["index_params"]
    if auto:
        engine, index_params = auto_engine(want.size)
    local = {
        "n_features": meta["n_features"],
        "metric": meta["metric"],
        "preprocessing": meta["preprocessing"],
        "engine": engine,
        "auto": auto,
        "storage_dtype": meta["storage_dtype"],
        "index_params": index_params,
        "next_id": meta["next_id"],
        "uid": meta["uid"],
        "version": meta["version"],
        "classes": meta["classes"],
    }
    if "taxonomy" in meta:
        local["taxonomy"] = meta["taxonomy"]
    return local, out
