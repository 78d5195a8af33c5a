"""Deletion you can prove: check a saved model against its edit log and scan
its files for the bytes of vectors that were removed.

:func:`audit` reads a model file (``est.save``) or a ``storage_path`` folder and
returns an :class:`AuditReport`: whether the hash chain of the memory's edit log
holds, whether the digest recomputed from the stored bytes is the one the log
ends on, where (file and byte offset) any removed vector survives in any form
the memory stores, and, for a model with a trained head, whether the head was
trained after the last deletion. ``skknn audit PATH --removed FILE.npy`` runs it
from the shell.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skknn._bytescan import MAX_REPORTED, Pattern, scan, scannable
from skknn.memory.digest import (
    LOG_FILE,
    chain_problems,
    checked_entries,
    entry_hash,
)

# Files under a folder beyond which the audit refuses to walk (a folder is data).
MAX_FILES = 100_000


@dataclass
class AuditReport:
    """What :func:`audit` found. ``ok`` is True only when every check passed.

    :func:`audit` fills it; each parameter is also the attribute of that name.

    Parameters
    ----------
    path : str
        The model file or folder audited.
    ok : bool, default=False
        The chain is valid, the digest matches, no removed vector's bytes were
        found, the model loaded, and no head was trained on deleted samples.
    estimator : str or None, default=None
        The class of the loaded model.
    chain_valid : bool, default=False
        Every entry is well formed and names the hash of the one before; every
        edit starts where the one before ended.
    chain_problems : list of str, default=[]
        Where the chain breaks (entry numbers from 0).
    n_entries : int, default=0
        Entries in the log.
    log_head : str or None, default=None
        The hash of the log's last entry: keep it (with the report) as the
        certificate of this state; a later ``audit(..., log_head=)`` checks
        the log still holds that entry, so nothing before it was rewritten.
    digest : str or None, default=None
        The memory's digest recomputed from the stored bytes (None if the model
        could not be loaded).
    logged_digest : str or None, default=None
        The ``after`` of the log's last entry.
    digest_matches : bool, default=False
        ``digest == logged_digest``.
    n_removed : int, default=0
        Removed vectors searched for.
    unscannable_rows : list of int, default=[]
        Removed vectors whose bytes are all zero in some form (they would
        match any padding), not searched in that form.
    byte_hits : list of dict, default=[]
        Where removed bytes were found: ``file``, ``offset``, ``row`` (of the
        removed vectors) and ``form`` (``"raw float32"``, ``"raw float16"``,
        ``"stored float32"``, ``"stored float16"``); the first 1000.
    n_byte_hits : int, default=0
        All hits, reported or not.
    files_scanned : list of str, default=[]
        Regular files read (links are never followed).
    links_skipped : list of str, default=[]
        Links found under the folder and left alone.
    bytes_scanned : int, default=0
        Their total size.
    head : dict or None, default=None
        For a model with a trained head (JOINT, the fine-tuner):
        ``trained_after_last_deletion`` (None without deletions),
        ``last_head_entry``, ``last_deletion_entry``.
    errors : list of str, default=[]
        What could not be read or checked, and why.

    Examples
    --------
    >>> from skknn import AuditReport
    >>> AuditReport(path="m.skknn").to_dict()["ok"]
    False
    """

    path: str
    ok: bool = False
    estimator: str | None = None
    chain_valid: bool = False
    chain_problems: list = field(default_factory=list)
    n_entries: int = 0
    log_head: str | None = None
    digest: str | None = None
    logged_digest: str | None = None
    digest_matches: bool = False
    n_removed: int = 0
    unscannable_rows: list = field(default_factory=list)
    byte_hits: list = field(default_factory=list)
    n_byte_hits: int = 0
    files_scanned: list = field(default_factory=list)
    links_skipped: list = field(default_factory=list)
    bytes_scanned: int = 0
    head: dict | None = None
    errors: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain JSON-able values.

        Returns
        -------
        report : dict
            Every field by its name; lists and dicts copied.

        Examples
        --------
        >>> from skknn import AuditReport
        >>> sorted(AuditReport(path="m.skknn").to_dict())[:3]
        ['byte_hits', 'bytes_scanned', 'chain_problems']
        """
        return asdict(self)

    def to_json(self, path=None, *, indent: int = 2) -> str:
        """The report as JSON, written to ``path`` if given (replaced atomically).

        Parameters
        ----------
        path : str or path-like, default=None
            Where to write it; None only returns the text.
        indent : int, default=2
            JSON indentation.

        Returns
        -------
        text : str
            The JSON, keys sorted, ending in a newline.

        Examples
        --------
        >>> import json
        >>> from skknn import AuditReport
        >>> json.loads(AuditReport(path="m.skknn").to_json())["path"]
        'm.skknn'
        """
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=True) + "\n"
        if path is not None:
            from skknn._archive import replaced

            with replaced(Path(path), "w") as fh:
                fh.write(text)
        return text

    def failures(self) -> list[str]:
        """One line per failed check, saying where.

        Returns
        -------
        lines : list of str
            Empty when :attr:`ok`.

        Examples
        --------
        >>> from skknn import AuditReport
        >>> AuditReport(path="m.skknn", errors=["load: damaged"]).failures()
        ['load: damaged']
        """
        lines = list(self.errors)
        lines += [f"chain: {p}" for p in self.chain_problems]
        if self.digest is not None and not self.digest_matches:
            lines.append(
                f"digest: the stored memory hashes to {self.digest}, the log ends "
                f"on {self.logged_digest} (a vector, label or id changed, or an "
                "edit was not logged)"
            )
        lines += [
            f"bytes: removed row {h['row']} ({h['form']}) in {h['file']} at "
            f"offset {h['offset']}"
            for h in self.byte_hits
        ]
        if self.n_byte_hits > len(self.byte_hits):
            lines.append(f"bytes: {self.n_byte_hits - len(self.byte_hits)} more hits")
        if self.head is not None and self.head["trained_after_last_deletion"] is False:
            lines.append(
                "head: trained on a memory that still held deleted samples "
                f"(last training: entry {self.head['last_head_entry']}, last "
                f"deletion: entry {self.head['last_deletion_entry']}); retrain it"
            )
        return lines


def audit(path, removed=None, *, log_head: str | None = None) -> AuditReport:
    """Verify a saved model's edit log and digest, and scan its files for
    removed vectors.

    Parameters
    ----------
    path : str or path-like
        A model file written by ``est.save`` (loaded memory-mapped, read-only)
        or a ``storage_path`` folder (reopened as :func:`skknn.load` does; no
        live estimator may hold it). Every regular file under it is scanned;
        links are never followed.
    removed : array-like of shape (n_removed, n_features) or path-like, default=None
        The raw vectors that were deleted (as given to ``fit``), or a ``.npy``
        file of them (read without pickles, its shape checked first). Each is
        searched for as raw float32 and float16 bytes and as the memory stores
        it (pre-processed, in float32 and float16). None scans nothing.
    log_head : str, default=None
        :attr:`AuditReport.log_head` of an earlier audit: the chain must
        still hold that entry. Without it, the last entry's own fields
        (``op``, ``count``, ``ids_digest``, ``time``) are checked by nothing
        after them; a chain rewritten from the start, hashes and all, is
        only caught this way (the log has no secret key).

    Returns
    -------
    report : AuditReport
        ``report.ok`` is True only when every check passed;
        ``report.failures()`` says what failed and where.

    Examples
    --------
    >>> import os, tempfile, numpy as np, skknn
    >>> X = np.array([[0., 1.], [1., 0.], [1., .5]])
    >>> knn = skknn.KNNVoter(n_neighbors=1, index="exact").fit(X, [0, 1, 1])
    >>> path = os.path.join(tempfile.mkdtemp(), "memory.skknn")
    >>> knn.unlearn([2]).save(path)
    >>> skknn.audit(path, removed=X[2:]).ok
    True
    >>> skknn.audit(path, removed=X[:1]).failures()[0]
    'bytes: removed row 0 (... float32) in ...memory.skknn at offset ...'
    """
    root = Path(os.fspath(path))
    report = AuditReport(path=str(root))
    try:
        info = os.lstat(root)
    except OSError as exc:
        report.errors.append(f"path: {exc}")
        return report
    if stat.S_ISLNK(info.st_mode):
        report.errors.append(f"path: {root} is a link; the audit follows none")
        return report
    is_folder = stat.S_ISDIR(info.st_mode)
    est = _load(root, is_folder, report)
    entries = _log_of(root, is_folder, est, report)
    if entries is not None:
        report.n_entries = len(entries)
        report.chain_problems = chain_problems(entries) if entries else []
        if not entries:
            report.chain_problems = ["the model carries no edit log"]
        report.chain_valid = not report.chain_problems
        if entries and isinstance(entries[-1], dict):
            report.logged_digest = entries[-1].get("after")
        report.head = _head_status(est, entries)
        hashes = [entry_hash(e) for e in entries if isinstance(e, dict)]
        report.log_head = hashes[-1] if hashes else None
        if log_head is not None and log_head not in hashes:
            report.chain_problems.append(
                f"the certified entry {log_head} is not in the log (the log "
                "was rewritten or cut back)"
            )
            report.chain_valid = False
    if est is not None:
        report.estimator = type(est).__name__
        report.digest = est.memory_digest()
        report.digest_matches = report.digest == report.logged_digest
    if removed is not None:
        _scan_removed(root, is_folder, est, removed, report)
    report.ok = (
        not report.errors
        and report.chain_valid
        and report.digest_matches
        and report.n_byte_hits == 0
        and not (report.head and report.head["trained_after_last_deletion"] is False)
    )
    return report


def _load(root: Path, is_folder: bool, report: AuditReport):
    from skknn.io import load
    from skknn.memory.segments import StorageInUse

    try:
        return load(root) if is_folder else load(root, mmap=True)
    except (OSError, ValueError, TypeError, KeyError, StorageInUse) as exc:
        report.errors.append(f"load: {exc}")
        return None


def _log_of(root: Path, is_folder: bool, est, report: AuditReport):
    """The log as stored: the folder's ``edit_log.jsonl``, or the file's
    (through the loaded estimator; straight from the archive if it failed)."""
    from skknn.memory.digest import read_log_file

    try:
        if is_folder:
            return read_log_file(root / LOG_FILE)
        if est is not None:
            return est.edit_log()
        from skknn._archive import read_archive

        meta, _ = read_archive(root, mmap=True)
        found = _find_log(meta.get("state"), depth=4)
        return None if found is None else checked_entries(found)
    except (OSError, ValueError) as exc:
        report.errors.append(f"log: {exc}")
        return None


def _find_log(state, depth: int):
    """The ``edit_log`` of a file's state, nested estimators included."""
    if not isinstance(state, dict) or depth < 0:
        return None
    if "edit_log" in state:
        return state["edit_log"]
    for value in state.values():
        found = _find_log(value, depth - 1)
        if found is not None:
            return found
    return None


def _has_head(est) -> bool:
    inner = getattr(est, "estimator_", None)
    return hasattr(est, "head_") or (inner is not None and hasattr(inner, "head_"))


def _head_status(est, entries) -> dict | None:
    """For a model with a trained head: was it trained after the last deletion?"""
    if est is None or not _has_head(est):
        return None
    ops = [e.get("op") if isinstance(e, dict) else None for e in entries]
    heads = [i for i, op in enumerate(ops) if op == "head"]
    deletions = [i for i, op in enumerate(ops) if op == "unlearn"]
    last_head = heads[-1] if heads else None
    last_deletion = deletions[-1] if deletions else None
    if last_deletion is None:
        after = None
    else:
        after = last_head is not None and last_head > last_deletion
    return {
        "trained_after_last_deletion": after,
        "last_head_entry": last_head,
        "last_deletion_entry": last_deletion,
    }


def _removed_rows(removed, n_features: int | None) -> np.ndarray:
    """The removed vectors as float32 rows, a ``.npy`` file checked before it
    is read (no pickles, a 2-D float array of the memory's width)."""
    if isinstance(removed, (str, os.PathLike)):
        arr = np.load(os.fspath(removed), mmap_mode="r", allow_pickle=False)
    else:
        arr = np.asarray(removed)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ValueError(
            f"removed must be a 2-D array of numbers; got shape {arr.shape}, "
            f"dtype {arr.dtype}."
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"removed has {arr.shape[1]} features, but the memory has {n_features}."
        )
    rows = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ValueError("removed holds NaN or infinite values.")
    return rows


def _patterns(rows: np.ndarray, memory, report: AuditReport) -> list[Pattern]:
    forms = {"raw": rows}
    if memory is not None:
        forms["stored"] = memory.prepare(rows)
    patterns, seen, unscannable = [], set(), set()
    for name, values in forms.items():
        for dtype in ("float32", "float16"):
            with np.errstate(over="ignore"):
                cast = values.astype(np.dtype(dtype).newbyteorder("<"))
            for i, row in enumerate(cast):
                data = row.tobytes()
                if not scannable(data):
                    unscannable.add(i)
                elif data not in seen:
                    seen.add(data)
                    patterns.append(Pattern(data, i, f"{name} {dtype}"))
    report.unscannable_rows = sorted(unscannable)
    return patterns


def _scan_removed(root, is_folder, est, removed, report: AuditReport) -> None:
    memory = None if est is None else _memory_of(est)
    try:
        rows = _removed_rows(removed, None if memory is None else memory.n_features)
    except (OSError, ValueError) as exc:
        report.errors.append(f"removed: {exc}")
        return
    report.n_removed = rows.shape[0]
    files = _files(root, is_folder, report)
    if files is None:
        return
    hits, total = scan(files, _patterns(rows, memory, report))
    report.files_scanned = [str(f) for f in files]
    report.bytes_scanned = int(total)
    report.n_byte_hits = len(hits)
    report.byte_hits = hits[:MAX_REPORTED]


def _memory_of(est):
    return (
        est._certified_voter().memory_
        if hasattr(est, "_certified_voter")
        else (est.memory_)
    )


def _files(root: Path, is_folder: bool, report: AuditReport) -> list[Path] | None:
    """Every regular file of the model, links noted and never followed."""
    if not is_folder:
        return [root]
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                report.links_skipped.append(str(path))
            elif stat.S_ISREG(mode):
                files.append(path)
        if len(files) > MAX_FILES:
            report.errors.append(
                f"files: more than {MAX_FILES} files under {root}; not scanned"
            )
            return None
    return files
