"""The errors skknn raises for its own files and folders.

One class for everything a model file or a storage folder can get wrong, so a
caller catches one thing and learns where and what: the path and the part at
fault (an archive member, a JSON field, a folder entry). It is defined at the
lowest floor, with the archive it guards (``skknn/_archive.py``), and is the
same class here.
"""

from skknn._archive import ModelFileError

__all__ = ["ModelFileError"]
