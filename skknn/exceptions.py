"""The errors skknn raises for its own files and folders.

One class for everything a model file or a storage folder can get wrong, so a
caller catches one thing and learns where and what: the path and the part at
fault (an archive member, a JSON field, a folder entry).
"""

from __future__ import annotations

import os


class ModelFileError(ValueError):
    """A model file or storage folder that skknn refuses to read or write.

    Raised for damaged, hostile, swapped or out-of-date files and folders, for
    links and recorded paths that leave the folder, and for members or headers
    that claim more than the file can hold. A subclass of ``ValueError``, so code
    that caught ``ValueError`` keeps working.

    Parameters
    ----------
    path : str or path-like
        The file or folder at fault.
    part : str
        The part of it at fault: an archive member (``"arrays/memory/labels.npy"``),
        a field (``"estimator.json: memory"``), a folder entry.
    reason : str
        What is wrong, in words.

    Attributes
    ----------
    path : str
        The file or folder at fault.
    part : str
        The part of it at fault.

    Examples
    --------
    >>> import os, tempfile, skknn
    >>> path = os.path.join(tempfile.mkdtemp(), "not-a-model.skknn")
    >>> with open(path, "w") as fh:
    ...     _ = fh.write("hello")
    >>> try:
    ...     skknn.load(path)
    ... except skknn.ModelFileError as exc:
    ...     print(exc.part)
    zip archive
    """

    def __init__(self, path, part: str, reason: str):
        self.path = os.fspath(path) if path is not None else None
        self.part = part
        self.reason = reason
        super().__init__(f"{self.path!r}, {part}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.part, self.reason)
