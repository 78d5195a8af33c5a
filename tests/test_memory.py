"""Memory: growth, deletion, id lookups, atomic failures, leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skknn._memory import Memory, _pair_scores
from tests.conftest import ENGINES


def unit(rng, n, d=8):
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def make(engine="exact", metric="cosine"):
    return Memory(8, metric=metric, engine=engine, device=torch.device("cpu"))


@pytest.mark.parametrize("engine", ENGINES)
def test_search_is_nearest_first_and_matches_brute_force(engine, rng):
    mem = make(engine)
    X = unit(rng, 300)
    mem.add(X, np.zeros(300, np.int64), mem.new_ids(300))
    Q = unit(rng, 20)
    dist, rows = mem.search(Q, 12)
    ref = 1 - Q @ X.T
    np.testing.assert_array_equal(rows, np.argsort(ref, axis=1, kind="stable")[:, :12])
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :12], atol=1e-6)
    # k larger than the memory: every sample, no padding.
    assert mem.search(Q, 1000)[1].shape == (20, 300)


def test_growth_keeps_rows_and_reserves_headroom(rng):
    mem = make()
    X = unit(rng, 100)
    mem.add(X[:60], np.arange(60) % 3, mem.new_ids(60))
    buffer = mem._X
    assert buffer.shape[0] > 60  # headroom at first build
    mem.add(X[60:], np.arange(60, 100) % 3, mem.new_ids(40))
    assert mem._X is buffer  # fitted into spare capacity: no copy of the memory
    np.testing.assert_array_equal(mem.embeddings, X)
    np.testing.assert_array_equal(mem.sample_ids, np.arange(100))
    mem.add(unit(rng, 2000), np.zeros(2000, np.int64), mem.new_ids(2000))
    np.testing.assert_array_equal(mem.embeddings[:100], X)  # grown by copy, intact


def test_prepare_runs_on_the_memory_copy_only(rng):
    mem = make()
    X = unit(rng, 10)
    original = X.copy()
    mem.add(X, np.zeros(10, np.int64), mem.new_ids(10), prepare=lambda r: r.__imul__(2))
    np.testing.assert_array_equal(X, original)
    np.testing.assert_allclose(mem.embeddings, 2 * original)


def test_failed_engine_build_publishes_nothing(rng, monkeypatch):
    mem = make()
    mem.add(unit(rng, 5), np.zeros(5, np.int64), mem.new_ids(5))
    before = (mem.embeddings.copy(), mem.sample_ids.copy(), mem.labels.copy())

    def boom(*a, **k):
        raise RuntimeError("engine failure")

    monkeypatch.setattr(mem.engine, "add", boom)
    with pytest.raises(RuntimeError):
        mem.add(
            unit(rng, 3), np.ones(3, np.int64), mem.new_ids(3), label_map=np.array([1])
        )
    assert mem.n_samples == 5
    for a, b in zip(before, (mem.embeddings, mem.sample_ids, mem.labels)):
        np.testing.assert_array_equal(a, b)


def test_label_map_reencodes_with_the_add(rng):
    mem = make()
    mem.add(unit(rng, 4), np.array([0, 1, 0, 1]), mem.new_ids(4))
    mem.add(unit(rng, 2), np.array([0, 0]), mem.new_ids(2), label_map=np.array([1, 2]))
    np.testing.assert_array_equal(mem.labels, [1, 2, 1, 2, 0, 0])


def test_remove_compacts_and_rows_of_follows(rng):
    mem = make()
    X = unit(rng, 50)
    ids = np.arange(50) * 10
    mem.add(X, np.zeros(50, np.int64), ids)
    mem.set_votes(reliability=np.linspace(0.1, 1, 50))
    mem.remove(np.array([0, 100, 490]))
    assert mem.n_samples == 47
    assert not np.any(mem._X[47:])  # spare capacity holds no removed vector
    keep = ~np.isin(ids, [0, 100, 490])
    np.testing.assert_array_equal(mem.embeddings, X[keep])
    np.testing.assert_allclose(mem.reliability, np.linspace(0.1, 1, 50)[keep])
    np.testing.assert_array_equal(
        mem.rows_of(np.array([10, 480, 100, -1])), [0, 46, -1, -1]
    )
    assert mem.new_ids(1)[0] == 491  # ids are never reused


def test_check_new_ids(rng):
    mem = make()
    mem.add(unit(rng, 3), np.zeros(3, np.int64), np.array([5, 7, 9]))
    with pytest.raises(ValueError, match="already in memory"):
        mem.check_new_ids(np.array([1, 7]), 2)
    with pytest.raises(ValueError, match="unique"):
        mem.check_new_ids(np.array([20, 20]), 2)
    with pytest.raises(TypeError, match="integers"):
        mem.check_new_ids(np.array([1.5, 2.5]), 2)
    with pytest.raises(ValueError, match="one per sample"):
        mem.check_new_ids(np.array([1, 2, 3]), 2)
    np.testing.assert_array_equal(mem.check_new_ids(np.array([1, 100]), 2), [1, 100])


@pytest.mark.parametrize("engine", ENGINES)
def test_leave_one_out_blocks_match_one_block(engine, rng):
    mem = make(engine)
    X = unit(rng, 200)
    mem.add(X, np.zeros(200, np.int64), mem.new_ids(200))
    whole = list(mem.iter_loo(5, block_size=1000))
    parts = list(mem.iter_loo(5, block_size=37))
    np.testing.assert_array_equal(whole[0][2], np.concatenate([p[2] for p in parts]))
    D = 1 - X @ X.T
    np.fill_diagonal(D, np.inf)
    np.testing.assert_array_equal(
        whole[0][2], np.argsort(D, axis=1, kind="stable")[:, :5]
    )
    small = make(engine)
    small.add(X[:1], np.zeros(1, np.int64), small.new_ids(1))
    with pytest.raises(ValueError, match="at least 2"):
        next(small.iter_loo(3))


def test_state_round_trip(rng):
    mem = make()
    mem.add(unit(rng, 30), np.arange(30) % 4, mem.new_ids(30))
    mem.set_votes(excluded=np.arange(30) % 5 == 0)
    meta, arrays = mem.state()
    back = Memory.from_state(meta, arrays, torch.device("cpu"))
    for name in ("embeddings", "labels", "sample_ids", "reliability", "excluded"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mem, name))
    Q = unit(rng, 4)
    np.testing.assert_array_equal(back.search(Q, 5)[1], mem.search(Q, 5)[1])


@pytest.mark.parametrize("inner_product", [True, False])
@pytest.mark.parametrize("with_faiss", [True, False])
def test_pair_scores_match_float64_and_ignore_batching(
    inner_product, with_faiss, monkeypatch
):
    if with_faiss:
        pytest.importorskip("faiss")
    else:
        import sys

        monkeypatch.setitem(sys.modules, "faiss", None)  # the NumPy fallback
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 37)).astype(np.float32)
    Q = rng.normal(size=(600, 37)).astype(np.float32)
    rows = rng.integers(0, 300, size=(600, 9))
    rows[3, 4] = -1
    got = _pair_scores(X, Q, rows, inner_product)
    x64, q64 = X.astype(np.float64)[np.maximum(rows, 0)], Q.astype(np.float64)
    if inner_product:
        ref = np.einsum("ijk,ik->ij", x64, q64)
    else:
        ref = ((x64 - q64[:, None, :]) ** 2).sum(-1)
    valid = rows >= 0
    np.testing.assert_allclose(got[valid], ref[valid], rtol=1e-5, atol=1e-4)
    # A query's values do not depend on the other queries of the call.
    for part in (slice(0, 1), slice(5, 262), slice(599, 600)):
        np.testing.assert_array_equal(
            _pair_scores(X, Q[part], rows[part], inner_product), got[part]
        )


def test_ctrl_c_during_removal_lands_after_rows_and_index_agree(monkeypatch):
    import os
    import signal

    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    mem = make("IVF4,Flat", "sqeuclidean")
    mem.add(X, np.zeros(300, np.int64), mem.new_ids(300))
    real_remove = mem.engine.remove

    def interrupted_remove(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the index is rebuilt
        return real_remove(*args, **kwargs)

    monkeypatch.setattr(mem.engine, "remove", interrupted_remove)
    with pytest.raises(KeyboardInterrupt):
        mem.remove(np.arange(0, 300, 3), retrain_index=True)
    # The interrupt was held until both were done: nothing half-updated.
    assert mem.n_samples == mem.engine.index.ntotal == 200
    _, rows = mem.search(X[:20], 5)
    assert not np.isin(mem.sample_ids[rows], np.arange(0, 300, 3)).any()
