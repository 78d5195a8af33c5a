"""Search engines: the protocol's edits, the CUDA mirror's growth, GPU fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import skknn
from skknn.memory.engines import FaissIndexEngine, TorchExactEngine
from skknn.memory.metric import METRICS
from tests.conftest import HAS_FAISS


def test_device_mirror_grows_amortised_not_per_add():
    """On a device the exact engine mirrors the store; partial_fit of a small
    batch must write into spare rows, not concatenate the whole mirror. The
    "meta" device stands in for CUDA: same code path, no data."""
    engine = TorchExactEngine(METRICS["cosine"], torch.device("meta"))
    rng = np.random.default_rng(0)
    engine.build(rng.normal(size=(100, 4)).astype(np.float32), np.arange(100))
    mirror = engine._mirror
    assert mirror.shape[0] > 100
    grown = 0
    for start in range(100, 5000, 10):
        engine.add(np.ones((10, 4), np.float32), np.arange(start, start + 10))
        if engine._mirror is not mirror:
            grown += 1
            mirror = engine._mirror
    assert engine._n == 5000
    assert grown <= 10  # 490 adds, a handful of reallocations (1.5x growth)


@pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")
def test_index_that_cannot_go_to_the_gpu_warns(monkeypatch):
    import faiss

    import skknn.memory.engines as search

    monkeypatch.setattr(search, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)

    def refuse(res, device, index):
        raise RuntimeError("Error: HNSW has no GPU implementation")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    engine = FaissIndexEngine(
        METRICS["sqeuclidean"], torch.device("cuda:0"), "HNSW8", {}
    )
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with pytest.warns(skknn.DeviceWarning, match="searches on the CPU"):
        engine.build(X, np.arange(50))
    _, keys = engine.search(X, X[:3], 1)
    np.testing.assert_array_equal(keys[:, 0], [0, 1, 2])


@pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")
@pytest.mark.parametrize("factory", ["IVF16,PQ8", "PQ8", "IVF16,PQ8x4fs"])
def test_pq_codes_skip_polysemous_training_and_search_the_same(factory, monkeypatch):
    """The polysemous reordering of PQ centroids is skipped (it is most of the
    training time and skknn never filters by Hamming distance); the same
    centroids in FAISS's order answer every query alike."""
    import skknn.memory.engines as engines

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 32)).astype(np.float32)
    y = rng.integers(0, 5, 4000)
    Q = rng.normal(size=(200, 32)).astype(np.float32)
    params = dict(index=factory, metric="sqeuclidean", preprocessing=None)
    fast = skknn.KNNVoter(10, **params).fit(X, y)
    faiss = fast.memory_.engine.faiss
    index = fast.memory_.engine.index
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf if ivf is not None else index.index)
    assert getattr(inner, "do_polysemous_training", False) is False  # fs: none
    monkeypatch.setattr(engines, "_skip_polysemous_training", lambda *a: None)
    slow = skknn.KNNVoter(10, **params).fit(X, y)
    d_fast, i_fast = fast.kneighbors(Q)
    d_slow, i_slow = slow.kneighbors(Q)
    np.testing.assert_array_equal(i_fast, i_slow)
    np.testing.assert_array_equal(d_fast, d_slow)
