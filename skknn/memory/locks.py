"""A readers-writer lock: many concurrent readers, or one writer.

The memory is read by many threads at once (``predict``, ``kneighbors``,
``explain``) and edited by one at a time (``partial_fit``, ``unlearn``,
pruning). Readers share the lock; an edit holds it alone and publishes its
result before it lets go, so no reader ever sees half an edit. A waiting writer
stops new readers from entering, so a steady stream of predictions cannot
starve an edit. Both sides are re-entrant within one thread (an edit may read;
a read may call other reads), but a read cannot be upgraded to an edit.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sklearn.utils.validation import check_is_fitted


class ReadWriteLock:
    """Many readers or one writer, writer-preferring, re-entrant per thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._waiting_writers = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared (re-entrant; inside this thread's own write too)."""
        depth = self._depth()
        if depth or self._writer == threading.get_ident():
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone (re-entrant within the writing thread)."""
        me = threading.get_ident()
        if self._writer == me:
            yield
            return
        if self._depth():
            raise RuntimeError(
                "A thread that is reading the memory cannot start editing it: "
                "finish the read first."
            )
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


class GuardedState:
    """Mixin for estimators whose fitted state spans several objects (a memory
    and a head, a memory and its counts): edits hold :meth:`_editing`, reads
    :meth:`_reading`, so a prediction never mixes an old head with a new memory.

    The lock is made at the first fit (and anew on unpickling or loading), so
    ``predict`` leaves ``__dict__`` as it found it; it is never pickled.
    """

    def _lock(self) -> ReadWriteLock:
        # dict.setdefault is atomic: two first fits racing get one lock.
        return self.__dict__.setdefault("_state_lock", ReadWriteLock())

    def _editing(self):
        return self._lock().write()

    def _reading(self):
        return self._lock().read()

    @contextmanager
    def _reading_with(self, inner):
        """This state's read lock, then ``inner``'s hold for a file write (the
        order every edit takes them in, so the two never deadlock)."""
        check_is_fitted(self)
        with self._reading(), inner.__skknn_reading__():
            yield

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_state_lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock()


def reads(method):
    """Decorator: run a :class:`GuardedState` method under the shared lock."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._reading():
            return method(self, *args, **kwargs)

    return locked


def edits(method):
    """Decorator: run a :class:`GuardedState` method under the exclusive lock;
    readers see the state before the edit or after it, never half of it."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._editing():
            return method(self, *args, **kwargs)

    return locked
