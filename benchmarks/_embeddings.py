"""Real embeddings at the scale of the JOINT time target: 100 classes, 512-d.

No offline data set has 100 classes of images, so this builds one from real
MNIST digits: each image is two digits side by side (28 x 56), its class the
two-digit number 00-99. Training images pair digits of the training split only,
test images digits of the test split only, so no digit is seen in both. The
images go through the frozen ImageNet EfficientNet-Lite0 (block-10 feature map at
32 x 64 input, 896-d, as the demo does at 48 x 48) and a PCA fitted on the
training embeddings keeps 512 dimensions.

Embedding 55,000 images takes about a minute on 2 cores; the result is cached in
``benchmarks/out/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).with_name("out")
IMAGE_SIZE = (32, 64)
LAYER = "_blocks.10"


def two_digit_mnist_embeddings(
    n_train: int = 50_000, n_test: int = 5_000, dim: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """``(X_train, y_train, X_test, y_test, description)``, float32 embeddings."""
    path = CACHE / f"two_digit_mnist_{n_train}_{n_test}_{dim}_{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            arrays = [f[k] for k in ("Xtr", "ytr", "Xte", "yte")]
            seconds = float(f["t"])
        return (*arrays, _describe(n_train, n_test, dim, seconds))

    from sklearn.decomposition import PCA

    from skknn.datasets import load_two_digit_mnist
    from skknn.features import TorchFeatureExtractor

    img_tr, ytr, img_te, yte = load_two_digit_mnist(n_train, n_test, seed=seed)
    extractor = TorchFeatureExtractor(
        "efficientnet-lite0",
        layer=LAYER,
        pooling="none",
        image_size=IMAGE_SIZE,
        batch_size=256,
        progress=True,
    )
    t = time.perf_counter()
    extractor.fit(img_tr[:1])
    Etr, Ete = extractor.transform(img_tr), extractor.transform(img_te)
    seconds = time.perf_counter() - t
    pca = PCA(dim, random_state=seed).fit(Etr)
    Xtr = pca.transform(Etr).astype(np.float32)
    Xte = pca.transform(Ete).astype(np.float32)
    CACHE.mkdir(exist_ok=True)
    np.savez(path, Xtr=Xtr, ytr=ytr, Xte=Xte, yte=yte, t=seconds)
    return Xtr, ytr, Xte, yte, _describe(n_train, n_test, dim, seconds)


def _describe(n_train: int, n_test: int, dim: int, seconds: float) -> str:
    return (
        f"two-digit MNIST (00-99, 100 classes): {n_train:,} train / {n_test:,} test "
        f"images of two real MNIST digits, embedded by the frozen EfficientNet-Lite0 "
        f"({LAYER} map at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {seconds:.0f} s) and "
        f"PCA to {dim}-d"
    )
