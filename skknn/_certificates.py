"""``memory_digest()`` and ``edit_log()`` for every estimator with a memory.

:class:`CertifiedMemory` is the voter's part: it keeps the memory's hash-chained
edit log (``skknn/memory/digest.py``), records each edit with the digest around
it, and carries the log in pickles, model files (``skknn.json``: ``edit_log``)
and storage folders (``edit_log.jsonl`` beside ``estimator.json``).
:class:`DelegatedCertificates` gives the estimators built around a voter
(JOINT, the fine-tuner, the pruner, the transformer) the same two methods.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.utils.validation import check_is_fitted

from skknn._docstrings import fill_doc
from skknn.memory.digest import (
    LOG_FILE,
    NO_MEMORY,
    EditLog,
    checked_entries,
    read_log_file,
    record,
)


class CertifiedMemory:
    """Mixin of :class:`~skknn.KNNVoter`: its memory's digest and edit log."""

    @fill_doc
    def memory_digest(self) -> str:
        """The content digest of the memory: what it holds, nothing else.

        A homomorphic multiset hash (LtHash16 over SHAKE-128 leaves) of every
        sample's id, label, weight, stored vector bytes and raw vector, whatever
        their order, and BLAKE2b of it with the memory's pre-processing, centre
        and storage dtype: ``fit(A + B)`` then
        ``unlearn(B)`` gives the digest of ``fit(A)`` (with ``"center_l2"``,
        only when ``B`` was not part of the first fit, whose mean is the
        centre; see the user guide, "Deletion you can prove").

        %(returns_digest)s

        Examples
        --------
        >>> import numpy as np
        >>> from skknn import KNNVoter
        >>> X = np.array([[0., 1.], [1., 0.], [1., 1.]])
        >>> a = KNNVoter(n_neighbors=1, index="exact").fit(X[:2], [0, 1])
        >>> ab = KNNVoter(n_neighbors=1, index="exact").fit(X, [0, 1, 1])
        >>> ab.unlearn([2]).memory_digest() == a.memory_digest()
        True
        """
        check_is_fitted(self)
        return self._edit_log_object().digest_of(self.memory_)

    def edit_log(self) -> list[dict]:
        """The memory's edits, oldest first: an append-only, hash-chained log.

        Each entry has ``op`` (``"fit"``, ``"partial_fit"``, ``"unlearn"``,
        ``"refresh"``, ``"rollback"``, and ``"head"`` for a JOINT head's
        training), ``count`` (samples concerned), ``ids_digest`` (a hash of
        their ids), ``before`` and ``after`` (:meth:`memory_digest` around the
        edit), ``time`` (UTC, ISO 8601) and ``prev`` (the hash of the entry
        before). Saved files and storage folders carry it; edits after
        :func:`skknn.load` extend the same chain. :func:`skknn.audit` checks it.

        Returns
        -------
        entries : list of dict
            Copies; changing them changes nothing.

        Examples
        --------
        >>> from skknn import KNNVoter
        >>> knn = KNNVoter(n_neighbors=1, index="exact")
        >>> knn = knn.fit([[0., 1.], [1., 0.]], [0, 1]).unlearn([1])
        >>> [(e["op"], e["count"]) for e in knn.edit_log()]
        [('fit', 2), ('unlearn', 1)]
        >>> knn.edit_log()[-1]["after"] == knn.memory_digest()
        True
        """
        check_is_fitted(self)
        return self._edit_log_object().entries()

    # -- recording ------------------------------------------------------------------
    def _edit_log_object(self) -> EditLog:
        log = self.__dict__.get("_edit_log")
        if log is None:
            log = self._edit_log = EditLog()
        return log

    def _state_before_edit(self, replacing: bool = False) -> tuple:
        """The memory's state before an edit (``replacing``: a fit replaces
        it), for :meth:`_record_edit`. A new voter continuing another's chain
        (JOINT's refit) replaces the memory the chain last described."""
        memory = self.__dict__.get("memory_")
        return self._edit_log_object().before(memory, replacing=replacing)

    def _continue_chain(self, other) -> None:
        """Start from a copy of ``other``'s log (a voter this one replaces): a
        fit that fails leaves ``other``'s untouched."""
        self._edit_log = EditLog(other._edit_log_object().entries())

    def _record_edit(self, op: str, ids, before: tuple, **how) -> None:
        """Log the edit just made to ``memory_`` from ``before``, here and in
        the storage folder; ``how``: what :meth:`EditLog.record` takes (rows
        ``added``, lanes ``removed``, a ``fresh`` memory, one changed
        ``whole``) and fields of the entry."""
        log = self._edit_log_object()
        self._attach_log_file()
        record(log, op, ids, before, self.memory_, **how)

    def _logged_removal(self, op: str, ids, retrain_index: bool) -> None:
        """Remove ``ids`` from the memory as one logged edit ``op``: held from
        the state before to the entry (concurrent edits chain in order), the
        removed rows hashed while they are still there."""
        store = self.memory_
        log = self._edit_log_object()
        with store.editing():
            before = log.before(store)
            removed = log.removing(store, store.check_removable(ids))
            store.remove(ids, retrain_index=retrain_index)
            self._record_edit(op, ids, before, removed=removed)

    def _attach_log_file(self) -> None:
        """In a storage folder, the log is ``edit_log.jsonl`` beside
        ``estimator.json``: written in full the first time, appended after."""
        folder = getattr(self.__dict__.get("memory_"), "storage_folder", None)
        if folder is None:
            return
        path = Path(folder).parent / LOG_FILE
        log = self._edit_log_object()
        if log.file != path:
            log.attach(path)

    def _log_state(self) -> list[dict]:
        return self._edit_log_object().entries()

    def _load_log_state(self, entries) -> None:
        self._edit_log = EditLog(checked_entries(entries or []))
        self._attach_log_file()

    def _open_log_file(self, root) -> None:
        """Take the chain a reopened storage folder carries."""
        path = Path(root) / LOG_FILE
        self._edit_log = EditLog(read_log_file(path))
        self._edit_log.attached_to(path)


class DelegatedCertificates:
    """Mixin: ``memory_digest()`` and ``edit_log()`` of the voter an estimator
    is built around (``_certified_voter()``)."""

    def _certified_voter(self):
        """The fitted voter: ``knn_``, where JOINT, the fine-tuner and the
        transformer keep it (the pruner overrides this)."""
        check_is_fitted(self)
        return self.knn_

    @fill_doc
    def memory_digest(self) -> str:
        """The content digest of the memory (see :meth:`KNNVoter.memory_digest`).

        %(returns_digest)s

        Examples
        --------
        >>> from skknn import KNNTransformer
        >>> t = KNNTransformer(n_neighbors=1).fit([[0., 1.], [1., 0.]])
        >>> len(t.memory_digest())
        64
        """
        return self._certified_voter().memory_digest()

    def edit_log(self) -> list[dict]:
        """The memory's hash-chained edit log (see :meth:`KNNVoter.edit_log`).

        Returns
        -------
        entries : list of dict
            Oldest first, copies.

        Examples
        --------
        >>> from skknn import KNNTransformer
        >>> t = KNNTransformer(n_neighbors=1).fit([[0., 1.], [1., 0.]])
        >>> [e["op"] for e in t.edit_log()]
        ['fit']
        """
        return self._certified_voter().edit_log()


def record_head(voter, n_samples: int, ids, **extra) -> None:
    """Log that a head was trained on ``voter``'s memory as it is now (an entry
    that changes nothing: ``before == after``)."""
    now = voter._state_before_edit()
    voter._record_edit("head", ids, now, trained_on=int(n_samples), **extra)


__all__ = ["NO_MEMORY", "CertifiedMemory", "DelegatedCertificates", "record_head"]
