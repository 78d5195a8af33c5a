"""Safe persistence: NumPy arrays + JSON in one zip file, never a pickle.

``est.save(path)`` writes, :func:`load` reads. The file is a zip archive (stored,
not compressed) with ``skknn.json`` (format, class, parameters, scalar state) and
one ``.npy`` member per array, read back with ``allow_pickle=False``. Only skknn's
own estimator classes can be named in a file, so loading runs no foreign code.
Writes go to a temporary file in the same folder, are flushed to disk and then
renamed over the target: a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from skknn._archive import (  # noqa: F401  (re-exported: the documented names)
    FORMAT,
    VERSION,
    labels_from_json,
    labels_to_json,
    read_archive,
    subtree,
    write_archive,
)
from skknn._file_classes import (  # noqa: F401  (re-exported: the documented names)
    params_from_json,
    params_to_json,
    register,
    register_params,
    registered,
    saved_class,
)
from skknn.exceptions import ModelFileError


class Persistable:
    """Mixin: ``save(path)`` for a registered estimator."""

    def save(self, path) -> None:
        """Write the fitted estimator to ``path`` safely: NumPy arrays + JSON in
        one zip file, no pickle, replaced atomically. Read it back with
        :func:`skknn.load`. Concurrent edits wait until the file is written (the
        arrays are written from the memory itself, not copied first).

        Parameters
        ----------
        path : str or path-like
        """
        save(self, path)


# -- estimators -----------------------------------------------------------------
def save(est, path) -> None:
    """Save a fitted skknn estimator to ``path`` (see module docstring)."""
    name = type(est).__name__
    if saved_class(name) is not type(est):
        raise TypeError(f"save() supports skknn estimators; got {name}.")
    from skknn.memory.sharded import SAVING

    # A sharded memory writes its shards beside ``path`` and cleans up the files
    # of older saves only once the manifest naming the new ones is in place.
    saving = {"path": os.fspath(path), "after": []}
    token = SAVING.set(saving)
    try:
        with est.__skknn_reading__():  # one state, written from the memory itself
            state_meta, arrays = est.__skknn_save__()
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "class": name,
                "params": params_to_json(est),
                "state": state_meta,
            }
            write_archive(path, meta, arrays)
    finally:
        SAVING.reset(token)
    for done in saving["after"]:
        done()


def load(path, *, mmap: bool = False, backend: str | None = None, storage_path=None):
    """Load an estimator saved with ``est.save(path)``, or reopen the memory of
    a ``storage_path`` folder.

    A file is data, never a set of instructions: a ``storage_path`` recorded in
    it (the folder its memory was kept in when it was saved) is not used. The
    loaded memory lives in RAM unless ``storage_path`` is given here, and
    nothing outside the folder you name is created, written or deleted.

    Parameters
    ----------
    path : str or path-like
        A file written by ``save``, or a folder given as ``storage_path`` to a
        fitted ``KNNVoter``: its last committed memory is reopened (vectors
        memory-mapped, the index built afresh from them) inside the estimator
        that was last fitted there, which owns the folder from then on.
    mmap : bool, default=False
        Memory-map the file's embeddings (read-only, in place in the file)
        instead of reading them: a large memory loads in seconds and its pages
        are the OS's cache. Edits then copy the vectors into RAM (the loaded
        estimator's ``storage_path`` is None).
    backend : {"local", "dask"}, default=None
        Where a ``KNNVoter``'s memory goes (nested ones included): None keeps
        the saved ``backend``. ``"dask"`` re-creates a sharded memory's shards
        from their files on the current Dask cluster, or splits a local memory
        into shards; ``"local"`` gathers a sharded memory's files into one
        memory in this process.
    storage_path : str or path-like, default=None
        Keep the loaded memory on disk in this folder (as the ``storage_path``
        parameter of ``KNNVoter`` does), streamed from the file, never whole in
        RAM. The folder must not hold a memory already: loading never replaces
        or rolls back a folder's memory (open that with ``load(folder)``).

    Returns
    -------
    estimator : KNNVoter, JointKNNClassifier or MemoryPruner
        Fitted, on its saved device if present here, else the CPU.

    Raises
    ------
    skknn.ModelFileError
        The file or folder is damaged, crafted or not skknn's: the error names
        the path and the part at fault.

    Examples
    --------
    >>> import os, tempfile, numpy as np, skknn
    >>> knn = skknn.KNNVoter(n_neighbors=1, index="exact")
    >>> knn = knn.fit([[0., 1.], [1., 0.]], [0, 1])
    >>> path = os.path.join(tempfile.mkdtemp(), "memory.skknn")
    >>> knn.save(path)
    >>> skknn.load(path).predict([[0.1, 0.9]])
    array([0])
    """
    if os.path.isdir(path):
        from skknn.memory.folder import open_folder

        if storage_path is not None or mmap or backend not in (None, "local"):
            raise ValueError(
                f"{os.fspath(path)!r} is a storage folder: it reopens in place; "
                "storage_path, mmap and backend apply to model files."
            )
        return open_folder(path)
    from skknn.memory.sharded import LOADING

    if backend not in (None, "local", "dask"):
        raise ValueError(f"backend must be None, 'local' or 'dask'; got {backend!r}.")
    root = None if storage_path is None else _fresh_storage_root(storage_path)
    if root is not None and mmap:
        raise ValueError("mmap=True maps the file itself; it takes no storage_path.")
    meta, arrays = read_archive(path, mmap=mmap)
    name = meta.get("class")
    cls = saved_class(name)
    if cls is None:
        raise ModelFileError(path, "skknn.json: class", f"unknown class {name!r}")
    token = LOADING.set(
        {
            "folder": Path(path).resolve().parent,
            "backend": backend,
            "mmap": mmap,
            "storage_path": None if root is None else os.fspath(storage_path),
        }
    )
    try:
        est = cls(**params_from_json(meta["params"]))
        est.__skknn_load__(meta["state"], arrays, meta["version"])
    except _DAMAGE as exc:
        # Every field is checked as it is read; whatever is wrong, one error.
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            path, "skknn.json: state", f"not a valid skknn model file: {exc}"
        ) from exc
    finally:
        LOADING.reset(token)
    return est


def _fresh_storage_root(storage_path) -> Path:
    """The folder ``load(..., storage_path=)`` may put a memory in: one that
    holds no memory yet (a file never replaces a folder's memory)."""
    from skknn.memory.folder import MEMORY_NAME, POINTER, resolve_root

    root = resolve_root(storage_path)
    if os.path.lexists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"storage_path {str(root)!r} is not a folder.")
    if os.path.isdir(root):
        held = [e for e in os.listdir(root) if e == POINTER or MEMORY_NAME.match(e)]
        if held:
            raise FileExistsError(
                f"storage_path {str(root)!r} holds a memory already; loading a "
                "file never replaces or rolls back a folder's memory. Reopen "
                "that memory with skknn.load(folder), or name an empty folder."
            )
    return root


# What a damaged or hand-edited file can raise while its state is rebuilt.
_DAMAGE = (
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
)
