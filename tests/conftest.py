"""Shared fixtures and markers for the skknn test-suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skknn._device import faiss_available, faiss_gpu_count

HAS_CUDA = torch.cuda.is_available()
HAS_FAISS = faiss_available()

# The engines every equivalence test runs through; FAISS ones only when installed.
ENGINES = ["exact"] + (["flat"] if HAS_FAISS else [])


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_fgpu = pytest.mark.skip(reason="needs FAISS with GPU support and a GPU")
    for item in items:
        if "requires_cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "requires_faiss_gpu" in item.keywords and faiss_gpu_count() == 0:
            item.add_marker(skip_fgpu)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def blobs():
    """Three well-separated Gaussian classes, 60 samples each, 8 features."""
    gen = np.random.default_rng(42)
    centers = gen.normal(scale=4.0, size=(3, 8))
    y = np.repeat(np.arange(3), 60)
    X = centers[y] + gen.normal(size=(180, 8))
    perm = gen.permutation(180)
    return X[perm].astype(np.float32), y[perm]


@pytest.fixture(scope="session")
def digits():
    """sklearn's 8x8 digits (real, offline), split 1,200 memory / rest queries."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    gen = np.random.default_rng(0)
    perm = gen.permutation(len(y))
    X, y = X[perm].astype(np.float32), y[perm]
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture
def images():
    """Five 32x32 RGB uint8 images (tiny-cnn's input size: no resizing)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


def stored(store):
    """What a store holds, oldest first, through its public surface only: ids,
    raw vectors ``X``, pre-processed ``vectors`` (as searched), labels,
    reliabilities and exclusions."""
    ids = store.ids()
    data = store.get(ids)
    data.vectors = store.prepare(data.X)
    data.ids = ids
    return data


@pytest.fixture(scope="module")
def dask_client():
    """A two-worker LocalCluster of processes for the backend-parametrized
    tests (the "dask" backend), one per test module."""
    distributed = pytest.importorskip("distributed")
    if not HAS_FAISS:
        pytest.skip("the sharded memory's tests use FAISS flat")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()
