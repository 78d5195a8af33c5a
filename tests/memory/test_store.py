"""VectorStore: raw vectors and ids in, neighbour records out; edits all or nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from skknn import Neighbors, SearchEngine, Store, VectorStore
from tests.conftest import ENGINES, HAS_FAISS, stored

needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")


def unit(rng, n, d=8):
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def make(engine="exact", metric="cosine", preprocessing="l2", d=8):
    return VectorStore(d, metric=metric, preprocessing=preprocessing, engine=engine)


def test_store_and_engines_follow_the_protocols():
    store = make()
    assert isinstance(store, Store)
    assert isinstance(store.engine, SearchEngine)
    if HAS_FAISS:
        for engine in ("flat", "IVF4,Flat", "HNSW8"):
            assert isinstance(make(engine).engine, SearchEngine)


@pytest.mark.parametrize("engine", ENGINES)
def test_search_is_nearest_first_and_matches_brute_force(engine, rng):
    store = make(engine)
    X = unit(rng, 300)
    ids = store.add(X, np.arange(300) % 3)
    np.testing.assert_array_equal(ids, np.arange(300))
    Q = unit(rng, 20)
    nb = store.search(Q, 12)
    assert isinstance(nb, Neighbors)
    ref = 1 - Q @ X.T
    order = np.argsort(ref, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(nb.ids, order)
    np.testing.assert_allclose(nb.distances, np.sort(ref, axis=1)[:, :12], atol=1e-6)
    np.testing.assert_array_equal(nb.labels, order % 3)
    np.testing.assert_array_equal(nb.label_values(), order % 3)
    assert nb.reliability.shape == nb.excluded.shape == (20, 12)
    # k larger than the memory: every sample, no padding.
    assert store.search(Q, 1000).ids.shape == (20, 300)
    # Blocks do not change answers, bit for bit.
    small = store.search(Q, 12, batch_size=7)
    np.testing.assert_array_equal(small.distances, nb.distances)
    np.testing.assert_array_equal(small.ids, nb.ids)


@pytest.mark.parametrize(
    ("metric", "preprocessing"),
    [("cosine", "l2"), ("cosine", "center_l2"), ("sqeuclidean", None)],
)
def test_add_keeps_the_input_and_get_returns_raw_vectors(metric, preprocessing, rng):
    X = (rng.normal(size=(40, 8)) * 3 + 1).astype(np.float32)
    X[5] = 0.0  # a zero vector stays zero
    original = X.copy()
    store = make(metric=metric, preprocessing=preprocessing)
    ids = store.add(X[:30], np.arange(30) % 2)
    store.add(X[30:], np.arange(30, 40) % 2)
    np.testing.assert_array_equal(X, original)  # the caller's array is untouched
    data = store.get(np.r_[ids[::-1], 35])
    np.testing.assert_allclose(data.X, X[np.r_[ids[::-1], 35]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.labels, np.r_[ids[::-1], 35] % 2)
    if preprocessing == "center_l2":
        # The centre is the mean of the first add, frozen afterwards.
        np.testing.assert_allclose(store.mean, X[:30].mean(0), rtol=1e-5)
    else:
        assert store.mean is None
    vectors = stored(store).vectors
    if store.normalizes:
        norms = np.linalg.norm(vectors, axis=1)
        np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="not in memory"):
        store.get([999])


def test_growth_keeps_rows_and_reserves_headroom(rng):
    store = make()
    X = unit(rng, 100)
    store.add(X[:60], np.arange(60) % 3)
    buffer = store.backend._X
    assert buffer.shape[0] > 60  # headroom at first build
    store.add(X[60:], np.arange(60, 100) % 3)
    assert (
        store.backend._X is buffer
    )  # fitted into spare capacity: no copy of the memory
    np.testing.assert_allclose(stored(store).vectors, X, atol=1e-6)
    store.add(unit(rng, 2000), np.zeros(2000, np.int64))
    np.testing.assert_allclose(stored(store).vectors[:100], X, atol=1e-6)


def test_new_labels_reencode_with_the_add(rng):
    store = make()
    store.add(unit(rng, 4), ["b", "c", "b", "c"])
    store.add(unit(rng, 2), ["a", "a"], classes=["d"])
    np.testing.assert_array_equal(store.classes, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(stored(store).labels, list("bcbcaa"))
    nb = store.search_self(k=5)
    np.testing.assert_array_equal(
        nb.label_values(), stored(store).labels[nb.ids]
    )  # codes always index the classes of the record
    with pytest.raises(TypeError, match="one type"):
        store.add(unit(rng, 1), [3])


def test_failed_engine_build_publishes_nothing(rng, monkeypatch):
    store = make()
    store.add(unit(rng, 5), np.zeros(5, np.int64))
    before, version = stored(store), store.version

    def boom(*a, **k):
        raise RuntimeError("engine failure")

    monkeypatch.setattr(store.engine, "add", boom)
    with pytest.raises(RuntimeError):
        store.add(unit(rng, 3), np.array([-1, -1, -1]))  # a class that sorts first
    assert store.n_samples == 5
    assert store.version == version
    after = stored(store)
    for name in ("ids", "vectors", "labels"):
        np.testing.assert_array_equal(before[name], after[name])
    np.testing.assert_array_equal(store.classes, [0])


@pytest.mark.parametrize("engine", [*ENGINES, *(["IVF4,Flat"] if HAS_FAISS else [])])
def test_failed_engine_removal_restores_every_row(engine, rng, monkeypatch):
    store = make(engine, d=8)
    X = unit(rng, 200)
    store.add(X, np.arange(200) % 4, ids=np.arange(200) * 2)
    store.set_reliability([2, 4], [0.5, 0.25])
    before, version = stored(store), store.version
    Q = unit(rng, 10)
    answer = store.search(Q, 7)
    real_remove = store.engine.remove

    def boom(*a, **k):
        raise RuntimeError("engine failure")

    monkeypatch.setattr(store.engine, "remove", boom)
    with pytest.raises(RuntimeError, match="engine failure"):
        store.remove([0, 6, 8, 398])
    assert store.version == version
    after = stored(store)
    for name in ("ids", "vectors", "labels", "reliability", "excluded"):
        np.testing.assert_array_equal(before[name], after[name])
    again = store.search(Q, 7)
    np.testing.assert_array_equal(again.ids, answer.ids)
    np.testing.assert_array_equal(again.distances, answer.distances)
    monkeypatch.setattr(store.engine, "remove", real_remove)
    store.remove([0, 6, 8, 398])  # and the removal still works afterwards
    assert store.n_samples == 196


def test_remove_compacts_keeps_order_and_zeroes_the_tail(rng):
    store = make()
    X = unit(rng, 50)
    ids = np.arange(50) * 10
    store.add(X, np.zeros(50, np.int64), ids)
    rel = np.linspace(0.1, 1, 50)
    store.set_reliability(ids, rel)
    store.remove(np.array([0, 100, 490]))
    assert store.n_samples == 47
    assert not np.any(store.backend._X[47:])  # spare capacity holds no removed vector
    keep = ~np.isin(ids, [0, 100, 490])
    data = stored(store)
    np.testing.assert_array_equal(data.ids, ids[keep])
    np.testing.assert_allclose(data.vectors, X[keep], atol=1e-6)
    np.testing.assert_allclose(data.reliability, rel[keep], rtol=1e-6)
    assert store.next_ids(1)[0] == 491  # ids are never reused
    with pytest.raises(ValueError, match="not in memory"):
        store.remove([100])


def test_new_ids_are_validated_before_anything_changes(rng):
    store = make()
    store.add(unit(rng, 3), np.zeros(3, np.int64), np.array([5, 7, 9]))
    version = store.version
    for ids, err, match in [
        ([1, 7], ValueError, "already in memory"),
        ([20, 20], ValueError, "unique"),
        ([1.5, 2.5], TypeError, "integers"),
        ([1, 2, 3], ValueError, "one per sample"),
        ([-1, 4], ValueError, r"\[0, 2\*\*63 - 1\]"),
    ]:
        with pytest.raises(err, match=match):
            store.add(unit(rng, 2), [0, 0], ids)
    assert store.version == version
    assert store.n_samples == 3
    np.testing.assert_array_equal(store.add(unit(rng, 2), [0, 0], [1, 100]), [1, 100])


@pytest.mark.parametrize("engine", ENGINES)
def test_leave_one_out_by_id_in_blocks(engine, rng):
    store = make(engine)
    X = unit(rng, 200)
    ids = rng.permutation(1000)[:200]
    store.add(X, np.arange(200) % 3, ids)
    whole = store.search_self(k=5, batch_size=1000)
    parts = store.search_self(k=5, batch_size=37)
    np.testing.assert_array_equal(whole.ids, parts.ids)
    np.testing.assert_array_equal(whole.query_ids, ids)
    np.testing.assert_array_equal(whole.query_labels, np.arange(200) % 3)
    D = 1 - X @ X.T
    np.fill_diagonal(D, np.inf)
    np.testing.assert_array_equal(
        whole.ids, ids[np.argsort(D, axis=1, kind="stable")[:, :5]]
    )
    some = store.search_self(ids[[7, 3]], k=5)  # in the order asked
    np.testing.assert_array_equal(some.ids, whole.ids[[7, 3]])
    small = make(engine)
    small.add(X[:1], [0])
    with pytest.raises(ValueError, match="at least 2"):
        small.search_self(k=3)


def test_leave_one_out_drops_self_among_duplicates(rng):
    store = make()
    X = unit(rng, 4)
    store.add(np.r_[X, X[:1], X[:1]], [0, 1, 1, 1, 2, 3], ids=[10, 11, 12, 13, 14, 15])
    nb = store.search_self(k=2)
    for q, row in zip(nb.query_ids, nb.ids):
        assert q not in row
    np.testing.assert_array_equal(np.sort(nb.ids[0]), [14, 15])


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
def test_within_radius_matches_brute_force(metric, rng):
    store = make(metric=metric, preprocessing=None)
    X = rng.normal(size=(80, 8)).astype(np.float32)
    store.add(X, np.zeros(80, np.int64))
    P = rng.normal(size=(15, 8)).astype(np.float32)
    Xp, Pp = X, P
    if metric == "cosine":
        Xp = X / np.linalg.norm(X, axis=1, keepdims=True)
        Pp = P / np.linalg.norm(P, axis=1, keepdims=True)
    D = _distances(Xp, Pp, metric)
    radii = np.quantile(D.min(1), 0.5) * np.ones(80, np.float32)
    radii[3] = np.inf
    near = store.within_radius(np.arange(80), radii, X=P)
    ref = (D <= radii[:, None]).any(1)
    clear = np.abs(D.min(1) - radii) > 1e-3  # away from the test's slack
    np.testing.assert_array_equal(near[clear], ref[clear])
    assert near[3]
    assert 0 < near.sum() < 80
    # Stored points by id: the same test against rows 40..79 of the memory.
    back = store.within_radius(np.arange(40), radii[:40], ids=np.arange(40, 80))
    D_mem = _distances(Xp[:40], Xp[40:], metric)
    ref = (D_mem <= radii[:40, None]).any(1)
    clear = np.abs(D_mem.min(1) - radii[:40]) > 1e-3
    np.testing.assert_array_equal(back[clear], ref[clear])
    with pytest.raises(ValueError, match="exactly one"):
        store.within_radius([0], [1.0])


def _distances(A, B, metric):
    A, B = A.astype(np.float64), B.astype(np.float64)
    if metric == "cosine":
        return 1 - A @ B.T
    D = ((A[:, None] - B[None]) ** 2).sum(-1)
    return np.sqrt(D) if metric == "euclidean" else D


def test_every_edit_increments_the_version(rng):
    store = make()
    versions = [store.version]
    store.add(unit(rng, 10), np.zeros(10, np.int64))
    versions.append(store.version)
    store.set_reliability([1], [0.5])
    versions.append(store.version)
    store.set_excluded([2], np.array([True]))
    versions.append(store.version)
    store.remove([3])
    versions.append(store.version)
    store.search(unit(rng, 2), 3)
    store.search_self(k=2)
    versions.append(store.version)
    assert versions == [0, 1, 2, 3, 4, 4]
    other = make()
    assert other.uid != store.uid


def test_reliability_and_exclusions_are_validated(rng):
    store = make()
    store.add(unit(rng, 5), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="> 0"):
        store.set_reliability([0], [0.0])
    with pytest.raises(ValueError, match="one per id"):
        store.set_reliability([0, 1], [0.5])
    with pytest.raises(ValueError, match="bool"):
        store.set_excluded([0], [1])
    with pytest.raises(ValueError, match="not in memory"):
        store.set_excluded([99], np.array([True]))
    assert store.version == 1
    store.set_excluded([4], np.array([True]))
    nb = store.search_self(k=4)
    np.testing.assert_array_equal(nb.excluded, nb.ids == 4)


@pytest.mark.parametrize("engine", [*ENGINES, *(["IVF4,Flat"] if HAS_FAISS else [])])
def test_state_round_trip(engine, rng):
    store = make(engine, preprocessing="center_l2")
    X = rng.normal(size=(60, 8)).astype(np.float32)
    store.add(X, np.arange(60) % 4)
    store.set_excluded(np.arange(0, 60, 5), np.ones(12, bool))
    meta, arrays = store.state()
    back = VectorStore.from_state(meta, arrays, torch.device("cpu"))
    assert (back.uid, back.version) == (store.uid, store.version)
    a, b = stored(store), stored(back)
    for name in ("ids", "X", "vectors", "labels", "reliability", "excluded"):
        np.testing.assert_array_equal(a[name], b[name])
    Q = rng.normal(size=(4, 8))
    np.testing.assert_array_equal(back.search(Q, 5).ids, store.search(Q, 5).ids)
    np.testing.assert_array_equal(back.next_ids(2), store.next_ids(2))


def test_ctrl_c_during_removal_lands_after_rows_and_index_agree(monkeypatch):
    import os
    import signal

    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    store = make("IVF4,Flat", "sqeuclidean", None)
    store.add(X, np.zeros(300, np.int64))
    real_remove = store.engine.remove

    def interrupted_remove(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the index is rebuilt
        return real_remove(*args, **kwargs)

    monkeypatch.setattr(store.engine, "remove", interrupted_remove)
    # Python's own Ctrl-C handler, whatever an earlier test or library left
    # installed (a handler that swallows the interrupt would hide the hold).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.remove(np.arange(0, 300, 3), retrain_index=True)
    finally:
        signal.signal(signal.SIGINT, before)
    # The interrupt was held until both were done: nothing half-updated.
    assert store.n_samples == store.engine.index.ntotal == 200
    nb = store.search(X[:20], 5)
    assert not np.isin(nb.ids, np.arange(0, 300, 3)).any()


@pytest.mark.parametrize("before", ["default", "ignored"])
def test_a_held_ctrl_c_is_not_lost_whatever_handler_was_there(before):
    """A handler that is not a Python callable (the default action, or one a C
    library installed) still gets the held Ctrl-C as a KeyboardInterrupt; an
    ignored one stays ignored."""
    import os
    import signal

    from skknn.memory.rows import uninterrupted

    handler = signal.SIG_DFL if before == "default" else signal.SIG_IGN
    original = signal.signal(signal.SIGINT, handler)
    try:
        if before == "default":
            with pytest.raises(KeyboardInterrupt):
                with uninterrupted():
                    os.kill(os.getpid(), signal.SIGINT)
        else:
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == handler
    finally:
        signal.signal(signal.SIGINT, original)


def test_the_id_domain_is_0_to_2_63_minus_1(rng):
    store = make()
    big = np.array([2**63 + 5, 7], dtype=np.uint64)  # would wrap to a negative
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63 - 1\]"):
        store.add(unit(rng, 2), [0, 0], big)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63 - 1\]"):
        store.add(unit(rng, 2), [0, 0], np.array([2**64, 1], dtype=object))
    top = np.iinfo(np.int64).max
    store.add(unit(rng, 2), [0, 0], np.array([top, 3], dtype=np.uint64))
    assert store.version == 1
    with pytest.raises(ValueError, match="No fresh sample ids are left"):
        store.add(unit(rng, 1), [0])  # the next id would be 2**63
    np.testing.assert_array_equal(store.add(unit(rng, 1), [0], [4]), [4])
    nb = store.search(unit(rng, 3), 3)
    assert set(nb.ids.ravel()) == {3, 4, top}


@needs_faiss
def test_fewer_than_k_found_votes_with_what_was_found(rng):
    from skknn import KNNVoter

    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = np.arange(400) % 3
    knn = KNNVoter(60, index="IVF8,Flat", index_params={"nprobe": 1}).fit(X, y)
    # Empty one inverted list, keeping the centroids: queries at its centroid
    # probe nothing but that empty list.
    ivf = pytest.importorskip("faiss").extract_index_ivf(knn.memory_.engine.index)
    members = np.array(
        [ivf.invlists.get_single_id(0, i) for i in range(ivf.invlists.list_size(0))]
    )
    knn.unlearn(members, retrain_index=False)
    centroid = ivf.quantizer.reconstruct(0)[None, :]
    Q = np.r_[centroid, X[:20]]
    with pytest.warns(UserWarning, match="fewer than k=60 neighbours") as caught:
        proba = knn.predict_proba(Q)
    assert len(caught) == 1
    np.testing.assert_allclose(proba.sum(1), 1.0)
    dist, ids = knn.kneighbors(Q)
    assert (ids[0] >= 0).all()  # found none: searched exactly instead
    short = (ids < 0).any(axis=1)
    assert short.any()  # others found fewer than 60 in their one list
    assert np.isinf(dist[ids < 0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per memory
        knn.predict(Q)


def test_records_rank_their_slots_and_reading_holds_one_state(rng):
    store = make()
    store.add(unit(rng, 20), np.arange(20) % 2)
    nb = store.search(unit(rng, 3), 4)
    np.testing.assert_array_equal(nb.ranks, np.tile(np.arange(4), (3, 1)))
    assert nb.n_queries == 3
    assert nb.k == 4
    with store.reading():  # several reads, one state; an edit waits for it
        ids, data = store.ids(), store.get(store.ids())
        assert len(ids) == len(data.labels) == 20
    store.remove([0])
    assert store.n_samples == 19


def test_copies_and_pickles_never_share_the_buffers(rng):
    import copy
    import pickle

    store = make()
    X = unit(rng, 30)
    store.add(X, np.arange(30) % 3)
    state = store.__getstate__()
    twin = copy.copy(store)
    twin.remove([0, 1, 2])  # compacts the twin's buffers in place
    np.testing.assert_array_equal(state["arrays"]["sample_ids"], np.arange(30))
    np.testing.assert_array_equal(store.ids(), np.arange(30))
    np.testing.assert_allclose(stored(store).vectors, X, atol=1e-6)
    back = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(back.ids(), np.arange(30))
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.add(np.full((1, 8), np.nan, np.float32), [0])


def test_replace_vectors_equals_a_fresh_store_on_the_new_vectors(tmp_path):
    """A memory re-embedded in place (a fine-tuned encoder) answers as a store
    built from scratch on the new vectors, with the same ids, labels and weights."""
    rng = np.random.default_rng(0)
    X_old, X_new = rng.normal(size=(2, 60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    ids = rng.permutation(1000)[:60]
    store = VectorStore(6, preprocessing="center_l2", engine="exact")
    store.add(X_old, y, ids, sample_weight=np.linspace(0.5, 2, 60))
    store.set_reliability(ids[:5], np.full(5, 0.25, np.float32))
    version = store.version
    store.replace_vectors(X_new)
    fresh = VectorStore(6, preprocessing="center_l2", engine="exact")
    fresh.add(X_new, y, ids, sample_weight=np.linspace(0.5, 2, 60))
    fresh.set_reliability(ids[:5], np.full(5, 0.25, np.float32))
    assert store.version == version + 1
    np.testing.assert_allclose(store.mean, X_new.mean(axis=0), rtol=1e-5, atol=1e-6)
    Q = rng.normal(size=(10, 6))
    a, b = store.search(Q, 5), fresh.search(Q, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(a.reliability, b.reliability)
    np.testing.assert_allclose(store.get(ids).X, X_new, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one row per stored sample"):
        store.replace_vectors(X_new[:-1])
    with pytest.raises(ValueError, match="NaN"):
        store.replace_vectors(np.full_like(X_new, np.nan))
    np.testing.assert_array_equal(store.search(Q, 5).ids, a.ids)  # unchanged
    on_disk = VectorStore(6, engine="exact", storage_path=tmp_path)
    on_disk.add(X_old, y)
    with pytest.raises(ValueError, match="in RAM"):
        on_disk.replace_vectors(X_new)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("metric", "preprocessing"),
    [("cosine", "l2"), ("sqeuclidean", None), ("euclidean", None)],
)
def test_near_and_exact_ties_are_settled_by_id_like_brute_force(
    engine, metric, preprocessing
):
    """Duplicates and vectors 1 ulp apart: the engine's float32 ranking may put
    a 1-ulp-farther sample ahead of an exact tie; the store still returns the k
    nearest by (exact distance, id), as sorting every pair would."""
    for seed in range(8):
        gen = np.random.default_rng(seed)
        base = gen.normal(size=(int(gen.integers(4, 20)), 8)).astype(np.float32)
        wobble = gen.choice([0.0, 1e-7, -1e-7], size=(40, 1)).astype(np.float32)
        near = base[gen.integers(0, len(base), 40)] * (1 + wobble)
        X = np.concatenate([base, base, base, near]).astype(np.float32)
        X = X[gen.permutation(len(X))]
        ids = gen.choice(10**9, len(X), replace=False)
        store = VectorStore(
            8, metric=metric, preprocessing=preprocessing, engine=engine
        )
        store.add(X, np.zeros(len(X), dtype=int), ids)
        Q = base[gen.integers(0, len(base), 20)]
        every = np.broadcast_to(np.arange(len(X)), (len(Q), len(X))).copy()
        D = store.metric.pair_distances(
            store.backend._X[: len(X)], store.prepare(Q), every
        )
        order = np.lexsort((ids[every], D), axis=-1)
        for k in (1, 3, 5):
            np.testing.assert_array_equal(store.search(Q, k).ids, ids[order[:, :k]])


def test_neighbors_take_reorders_every_per_query_field():
    rng = np.random.default_rng(0)
    store = VectorStore(4, engine="exact")
    store.add(rng.normal(size=(30, 4)), np.arange(30) % 3)
    nb = store.search_self([5, 9, 2, 7], k=3)
    taken = nb.take([2, 0])
    for field in (
        "distances",
        "ids",
        "labels",
        "reliability",
        "excluded",
        "query_ids",
        "query_labels",
    ):
        np.testing.assert_array_equal(getattr(taken, field), getattr(nb, field)[[2, 0]])
    np.testing.assert_array_equal(taken.query_ids, [2, 5])
    assert taken.classes is nb.classes


def test_a_failure_after_the_commit_still_moves_the_front(monkeypatch, tmp_path):
    """Once an add is committed (on disk: the rows and the front's next id and
    version are in the manifest), the front takes it even if a later step
    fails: an id the folder holds is never issued again."""
    rng = np.random.default_rng(0)
    store = VectorStore(4, engine="exact", storage_path=tmp_path)
    store.add(rng.normal(size=(5, 4)), np.arange(5) % 2)

    def broken(bufs):
        raise OSError("map failed")

    monkeypatch.setattr(store.backend.storage, "published", broken)
    with pytest.raises(OSError, match="map failed"):
        store.add(rng.normal(size=(3, 4)), [0, 1, 0])
    assert store.version == 2
    assert store.next_ids(1)[0] == 8
