"""A ``storage_path`` folder: which memory in it an estimator uses, reopening it,
and deleting memories no live estimator holds.

The folder holds one sub-folder per memory (``skknn/_disk.py``) and
``estimator.json``: the class, parameters and fitted attributes of the estimator
whose memory was last published, and that memory's sub-folder. ``skknn.load``
of the folder rebuilds that estimator around the reopened memory.
"""

from __future__ import annotations

import json
from pathlib import Path

from skknn._atomic import replaced
from skknn._disk import orphans, remove_store_folder

POINTER = "estimator.json"
FORMAT = "skknn-storage"


def publish(est) -> None:
    """Record ``est`` (fitted, its memory on disk) as the folder's estimator."""
    from skknn.io import params_to_json

    root = Path(est.storage_path)
    try:
        params = params_to_json(est)
    except TypeError:  # a callable parameter: the folder cannot rebuild it
        params = None
    record = {
        "format": FORMAT,
        "version": 1,
        "class": type(est).__name__,
        "params": params,
        "state": est.__skknn_folder_state__(),
        "memory": est.memory_.storage_folder.name,
    }
    with replaced(root / POINTER, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


def purge(storage_path, keep: Path) -> None:
    """Zero and delete memories under ``storage_path`` that no live store holds
    (replaced, garbage-collected, or cut short by a crash), except ``keep``."""
    for folder in orphans(storage_path, {keep.name}):
        remove_store_folder(folder)


def open_folder(path, device: str | None = None):
    """The estimator recorded in a ``storage_path`` folder, around its memory."""
    from skknn.io import params_from_json, registered

    root = Path(path)
    pointer = root / POINTER
    if not pointer.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not a skknn storage folder (no {POINTER})."
        )
    record = json.loads(pointer.read_text())
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{str(pointer)!r} is not a skknn storage record.")
    if record.get("params") is None:
        raise ValueError(
            f"The estimator in {str(root)!r} has a callable parameter, which no "
            "file records; rebuild it in code and use "
            "skknn.VectorStore.open(folder) for its memory."
        )
    cls = registered(record["class"])
    est = cls(**params_from_json(record["params"]))
    est.__skknn_open__(root / record["memory"], record["state"], device)
    return est
