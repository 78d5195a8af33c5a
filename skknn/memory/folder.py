"""A ``storage_path`` folder: which memory in it an estimator uses, reopening it,
and deleting memories no live estimator holds.

The folder holds one sub-folder per memory (``skknn/memory/segments.py``), named by a
32-digit hex id, and ``estimator.json``: the class, parameters and fitted
attributes of the estimator whose memory was last published, and that memory's
sub-folder. ``skknn.load`` of the folder rebuilds that estimator around the
reopened memory.

Everything read here is data, never an instruction: the record names a memory
by its plain sub-folder name only (never a path), nothing is followed through a
link, and the purge deletes only sub-folders that hold nothing but skknn's own
files. One folder has one owner: a memory whose estimator was superseded by a
later fit (or load) into the same folder refuses further edits
(:func:`check_owner`), so it never diverges silently from what the folder opens.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

from skknn._archive import replaced
from skknn._file_classes import params_from_json, params_to_json, registered
from skknn.exceptions import ModelFileError
from skknn.memory.segments import LOCK, StorageInUse, remove_store_folder

POINTER = "estimator.json"
FORMAT = "skknn-storage"
# A memory's sub-folder: uuid4().hex.
MEMORY_NAME = re.compile(r"^[0-9a-f]{32}$")
MAX_RECORD_BYTES = 16 << 20
# The files a memory's sub-folder holds (skknn/memory/segments.py), temporaries
# included; and those that mark a committed memory.
_OWN = re.compile(
    r"^(\.lock|state\.npz|manifest\.json|vectors-\d+\.bin"
    r"|[A-Za-z0-9_]+-\d+\.(bin|npy)|\.[A-Za-z0-9_.-]+\.[A-Za-z0-9_]+\.tmp)$"
)
_COMMITTED = {"state.npz", "manifest.json"}
# A sub-folder with a lock but no committed state is a fit in progress (or one
# cut short): left alone until it is this old.
_UNCOMMITTED_GRACE_S = 600.0


def resolve_root(storage_path) -> Path:
    """The absolute folder a ``storage_path`` names, resolved once at fit so a
    later ``os.chdir`` cannot move the memory."""
    return Path(os.path.abspath(os.fspath(storage_path)))


def publish(est, root: Path) -> None:
    """Record ``est`` (fitted, its memory on disk in ``root``) as the folder's
    estimator."""
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
    _refuse_link(root / POINTER, POINTER)
    with replaced(root / POINTER, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


def published_memory(root: Path) -> str | None:
    """The sub-folder name the folder's record names; None without a record."""
    pointer = root / POINTER
    if not os.path.lexists(pointer):
        return None
    return _read_record(root)["memory"]


def check_owner(root: Path, memory_name: str) -> None:
    """Refuse an edit of a memory the folder no longer opens to.

    A later fit or load into the same ``storage_path`` published its own memory;
    edits of this one would be lost at the next reopening, so they stop here,
    before anything changes.
    """
    try:
        current = published_memory(root)
    except ModelFileError:
        current = None
    if current is not None and current != memory_name:
        raise StorageInUse(
            f"The storage folder {str(root)!r} now opens to another memory "
            f"({current}), published by a later fit or load into it; this "
            f"estimator's memory ({memory_name}) would not be reopened, so its "
            "edits are refused. Fit this estimator again to make its memory the "
            "folder's, save it to a file (est.save), or give each estimator its "
            "own storage_path."
        )


def purge(root: Path, keep: Path) -> None:
    """Zero and delete memories under ``root`` that no live store holds
    (replaced, garbage-collected, or cut short by a crash), except ``keep``.

    Only real sub-folders named as skknn names memories, holding only skknn's
    own regular files, whose lock can be taken: nothing is followed through a
    link and nothing foreign is deleted.
    """
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.name == keep.name or not MEMORY_NAME.match(entry.name):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        if not _only_own_files(folder):
            continue
        if not _unlocked(folder):  # a live store holds it
            continue
        remove_store_folder(folder)


def _only_own_files(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a store's own regular files, with a
    committed state (or is an abandoned, uncommitted one)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    names = set()
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or not _OWN.match(entry.name):
            return False
        names.add(entry.name)
    if names & _COMMITTED:
        return True
    try:
        age = time.time() - os.lstat(folder).st_mtime
    except OSError:
        return False
    return age > _UNCOMMITTED_GRACE_S


def _unlocked(folder: Path) -> bool:
    """Whether no live store holds ``folder``'s lock (taken and let go at once)."""
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def open_folder(path, device: str | None = None):
    """The estimator recorded in a ``storage_path`` folder, around its memory."""
    root = resolve_root(path)
    record = _read_record(root)
    if record.get("params") is None:
        raise ModelFileError(
            root,
            f"{POINTER}: params",
            "the estimator has a callable parameter, which no file records; "
            "rebuild it in code and use skknn.VectorStore.open(folder) for its "
            "memory",
        )
    memory = root / record["memory"]
    info = _lstat(memory)
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise ModelFileError(
            root,
            f"{POINTER}: memory",
            f"names {record['memory']!r}, which is not a memory folder here",
        )
    try:
        cls = registered(record["class"])
        params = params_from_json(record["params"])
        params["storage_path"] = os.fspath(path)
        est = cls(**params)
        est.__skknn_open__(memory, record["state"], device)
    except ModelFileError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise ModelFileError(
            root, POINTER, f"does not describe an estimator ({exc!r})"
        ) from exc
    return est


def _read_record(root: Path) -> dict:
    """The folder's record, checked field by field before anything uses it."""
    pointer = root / POINTER
    info = _lstat(pointer)
    if info is None:
        raise ModelFileError(root, POINTER, "missing: not a skknn storage folder")
    _refuse_link(pointer, POINTER)
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(root, POINTER, "is not a regular file")
    if info.st_size > MAX_RECORD_BYTES:
        raise ModelFileError(root, POINTER, f"{info.st_size} bytes; too large")
    try:
        fd = os.open(pointer, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            record = json.loads(fh.read(MAX_RECORD_BYTES + 1))
    except (OSError, ValueError) as exc:
        raise ModelFileError(root, POINTER, f"unreadable ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(root, POINTER, "not a skknn storage record")
    for field, kind in (("class", str), ("memory", str), ("state", dict)):
        if not isinstance(record.get(field), kind):
            raise ModelFileError(
                root, f"{POINTER}: {field}", f"must be a {kind.__name__}"
            )
    if not MEMORY_NAME.match(record["memory"]):
        raise ModelFileError(
            root,
            f"{POINTER}: memory",
            f"{record['memory']!r} is not a memory name (a path leaving the "
            "folder, or a name skknn never writes)",
        )
    if record.get("params") is not None and not isinstance(record["params"], dict):
        raise ModelFileError(root, f"{POINTER}: params", "must be an object")
    return record


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_link(path: Path, part: str) -> None:
    info = _lstat(path)
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise ModelFileError(path.parent, part, "is a link; skknn follows none")
