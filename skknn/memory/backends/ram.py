"""The in-RAM row backend: the memory's per-row arrays as numpy buffers.

Buffers grow with amortised headroom (a small add to a large memory copies
nothing); a removal compacts them in place, keeping the order, and zeroes the
vacated tail, so no spare capacity keeps a removed vector's bytes.
"""

from __future__ import annotations

import numpy as np

from skknn.memory.rows import compact_inplace, expand_inplace, grow, kept_runs


class RamRows:
    """Per-row arrays in RAM (:class:`~skknn.memory.protocols.RowStorage`).

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.memory.backends.ram import RamRows
    >>> rows = RamRows()
    >>> bufs = rows.room([np.zeros((0, 2), np.float32)], 0, 4)
    >>> bufs[0].shape, rows.folder, rows.order(4, key=0)
    ((4, 2), None, None)
    """

    folder = None

    def room(
        self, bufs: list, n: int, cap: int, *, filled: int | None = None
    ) -> list[np.ndarray]:
        """``bufs`` with capacity ``cap`` (copies when they must grow or are
        read-only maps, e.g. from joblib; otherwise the buffers themselves);
        the rows up to ``filled`` of a copy are faulted in at once
        (:func:`~skknn.memory.rows.zeroed`)."""
        if cap > bufs[0].shape[0]:
            return [grow(b, n, cap, filled) for b in bufs]
        if not all(b.flags.writeable for b in bufs):
            return [grow(b, n, b.shape[0], filled) for b in bufs]
        return bufs

    def published(self, bufs: list) -> list:
        """The buffers themselves."""
        return bufs

    def order(self, n: int, key) -> None:
        """None: rows in RAM always lie in memory order."""
        return None

    def commit(self, describe, bufs, n: int, *, removed=None) -> None:
        """Nothing to make durable."""

    def remove(self, bufs: list, gone_rows, n_old: int, steps) -> None:
        """Compact in place, order kept (a fresh 1.5 GB array costs more in page
        faults than the copy itself), and zero the vacated tail; read-only
        buffers are compacted into copies. A failure of the index puts every
        row back where it was."""
        n_new = n_old - gone_rows.size
        runs = kept_runs(gone_rows, n_old)
        in_place = all(b.flags.writeable for b in bufs)
        if in_place:
            removed = [b[gone_rows].copy() for b in bufs]
            for b in bufs:
                compact_inplace(b, runs)
                b[n_new:n_old] = 0
            new = bufs
        else:
            new = [compact_inplace(np.array(b[:n_old]), runs) for b in bufs]
        try:
            steps.edit_index(new[0][:n_new], new[2][:n_new])
        except BaseException:
            if in_place:
                for b, saved in zip(bufs, removed):
                    expand_inplace(b, runs)
                    b[gone_rows] = saved
            raise
        steps.removed(n_new, new)

    def adopt(self, X: np.ndarray, n: int) -> np.ndarray:
        """``X`` itself."""
        return X

    def check_picklable(self) -> None:
        """Rows in RAM pickle."""

    def check_replaceable(self) -> None:
        """Rows in RAM are replaced in place."""

    def destroy(self) -> None:
        """Nothing outside the process."""
