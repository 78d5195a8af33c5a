"""Safe search (issue 22, items 4, 5, 9, 10): factory strings bounded before
FAISS allocates, search knobs atomic for concurrent readers and validated when
set, and HNSW deletion without a rebuild that never shows a removed sample."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from skknn import KNNVoter
from tests.conftest import HAS_FAISS

pytestmark = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")


def _data(n=600, d=16, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, rng.integers(0, classes, n)


# -- A. factory strings bounded by the data (item 4) --------------------------------
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        ("IVF100000000,Flat", "inverted lists"),
        ("IMI2x20,Flat", "inverted lists"),
        ("HNSW100000000", "HNSW's M"),
        ("HNSW1", "HNSW's M"),
        ("IVF8,PQ4x40", "PQ bits"),
        ("IVF8,PQ3", "must divide its width 16"),
        ("PCA64,IVF8,Flat", "PCA to 64"),
        ("IVF99999999999999,Flat", "not a valid faiss.index_factory"),
        ("IDMap,Flat", "not a valid faiss.index_factory"),
    ],
)
def test_absurd_factory_strings_are_refused_before_faiss_allocates(factory, match):
    X, y = _data(50)
    with pytest.raises(ValueError, match=match):
        KNNVoter(3, index=factory).fit(X, y)


def test_factory_checks_hold_for_a_loaded_memory():
    from skknn.memory.front import VectorStore

    X, y = _data(400)
    store = KNNVoter(3, index="IVF8,Flat").fit(X, y).memory_
    meta, arrays = store.state()
    # The index string of a saved memory is read as a fitted one is.
    with pytest.raises(ValueError, match="inverted lists"):
        VectorStore.from_state({**meta, "engine": "IVF100000000,Flat"}, arrays, "cpu")
    # So is a saved index unlike the one its string describes.
    with pytest.raises(ValueError, match="saved index"):
        VectorStore.from_state({**meta, "engine": "IVF4,Flat"}, arrays, "cpu")
    loaded = VectorStore.from_state(meta, arrays, "cpu")
    assert loaded.engine.index.ntotal == 400


def test_no_faiss_index_is_made_with_more_lists_than_samples():
    from skknn.memory.engines import make_engine, parse_factory

    spec = parse_factory("IVF4096,Flat")
    assert (spec.family, spec.nlist) == ("ivf", 4096)
    with pytest.raises(ValueError, match="4096 inverted lists need"):
        spec.check_data(16, 1000)
    X, y = _data(1000)
    # Too few samples to train: exact search, and no lists allocated meanwhile.
    knn = KNNVoter(3, index="IVF4096,Flat").fit(X, y)
    assert not knn.memory_.engine.ready
    engine = knn.memory_.engine
    assert engine._build_rows(16) == 39 * 4096
    assert isinstance(make_engine("HNSW32", engine.metric, "cpu", {}).spec.family, str)


# -- C. index_params validated at set_params and fit (item 9) -------------------------
@pytest.mark.parametrize(
    ("factory", "params", "match"),
    [
        ("IVF8,Flat", {"nprobe": -1}, "nprobe"),
        ("IVF8,Flat", {"nprobe": True}, "nprobe"),
        ("IVF8,Flat", {"nprobe": 2**40}, "nprobe"),
        ("IVF8,Flat", {"efSearch": 16}, "no parameter 'efSearch'"),
        ("HNSW8", {"efSearch": "a"}, "efSearch"),
        ("HNSW8", {"efSearch": 0}, "efSearch"),
        ("HNSW8", {"nprobe": 4}, "no parameter 'nprobe'"),
        ("IVF8,Flat", {"ht": 4}, "no parameter 'ht'"),
    ],
)
def test_bad_index_params_are_refused_at_fit_and_set_params(factory, params, match):
    X, y = _data(100)  # too few samples to build the IVF index: checked anyway
    with pytest.raises(ValueError, match=match):
        KNNVoter(3, index=factory, index_params=params).fit(X, y)
    X, y = _data(600)
    knn = KNNVoter(3, index=factory).fit(X, y)
    before = knn.predict(X[:20])
    with pytest.raises(ValueError, match=match):
        knn.set_params(index_params=params)
    assert knn.index_params is None
    assert knn.memory_.index_params == {}
    np.testing.assert_array_equal(knn.predict(X[:20]), before)


def test_a_search_with_other_knobs_changes_nothing():
    X, y = _data(800)
    knn = KNNVoter(5, index="IVF16,Flat", index_params={"nprobe": 1}).fit(X, y)
    store = knn.memory_
    version = store.version
    wide = store.search(X[:50], 5, index_params={"nprobe": 16})
    exact = store.search_exact(X[:50], 5)
    np.testing.assert_array_equal(wide.ids, exact.ids)
    assert store.index_params == {"nprobe": 1}
    assert store.version == version
    with pytest.raises(ValueError, match="no parameter 'efSearch'"):
        store.search(X[:5], 5, index_params={"efSearch": 16})


# -- B. knobs atomic for readers (item 5) ---------------------------------------------
@pytest.mark.parametrize(
    ("factory", "coarse", "fine"),
    [
        ("IVF32,Flat", {"nprobe": 1}, {"nprobe": 32}),
        ("HNSW4", {"efSearch": 1}, {"efSearch": 512}),
    ],
)
def test_readers_never_fail_or_mix_while_knobs_change(factory, coarse, fine):
    X, y = _data(2000, d=16, classes=8)
    Q = _data(64, d=16, seed=1)[0]
    knn = KNNVoter(5, index=factory, index_params=coarse).fit(X, y)
    answers = [knn.predict(Q)]
    knn.set_params(index_params=fine)
    answers.append(knn.predict(Q))
    exact = KNNVoter(5, index="exact").fit(X, y).predict(Q)
    # fine is exhaustive, so tune_index(target 1) can only set an equal answer.
    np.testing.assert_array_equal(answers[1], exact)
    assert not np.array_equal(answers[0], answers[1])
    stop, errors, seen, wrong, rounds = threading.Event(), [], [0], [], [0]

    def read():
        while not stop.is_set():
            try:
                got = knn.predict(Q)
            except Exception as exc:  # every failure counts
                errors.append(exc)
                continue
            seen[0] += 1
            if not any(np.array_equal(got, a) for a in answers):
                wrong.append(got)

    def write():
        while not stop.is_set():
            knn.set_params(index_params=coarse)
            knn.set_params(index_params=fine)
            knn.tune_index(Q, target_agreement=1.0)
            rounds[0] += 1

    threads = [threading.Thread(target=read) for _ in range(3)]
    threads.append(threading.Thread(target=write))
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} reader errors, first: {errors[0]!r}"
    assert not wrong, f"{len(wrong)} of {seen[0]} predictions matched no setting"
    assert seen[0] > 0
    assert rounds[0] > 0


# -- D. HNSW deletion without a rebuild (item 10) -------------------------------------
def _hnsw(X, y, ids=None):
    return KNNVoter(5, index="HNSW8", index_params={"efSearch": 512}).fit(
        X, y, sample_ids=ids
    )


def test_hnsw_unlearn_without_retrain_skips_removed_nodes():
    X, y = _data(1500)
    Q = _data(200, seed=1)[0]
    knn = _hnsw(X, y)
    gone = np.arange(0, 1500, 11)  # 9%: below the compaction share
    knn.unlearn(gone, retrain_index=False)
    engine = knn.memory_.engine
    # Not rebuilt: the graph keeps its nodes (and their bytes) until compaction.
    assert engine.index.ntotal == 1500
    keep = np.setdiff1d(np.arange(1500), gone)
    fresh = _hnsw(X[keep], y[keep], keep)
    exact = KNNVoter(5, index="exact").fit(X[keep], y[keep], sample_ids=keep)
    ids = knn.kneighbors(Q, 50, return_distance=False)
    assert not np.isin(ids, gone).any()
    np.testing.assert_array_equal(ids, fresh.kneighbors(Q, 50, return_distance=False))
    np.testing.assert_array_equal(ids, exact.kneighbors(Q, 50, return_distance=False))
    np.testing.assert_array_equal(knn.predict(Q), exact.predict(Q))
    # Leave-one-out searches the graph too.
    loo = knn.neighbors(None, 5).ids
    assert not np.isin(loo, gone).any()


def test_hnsw_removed_bytes_leave_on_compaction_and_are_never_saved():
    import faiss

    X, y = _data(1000)
    knn = _hnsw(X, y)
    row = X[7] / np.linalg.norm(X[7])  # as the store keeps it (l2)
    needle = row.astype(np.float32).tobytes()
    knn.unlearn([7], retrain_index=False)
    _, arrays = knn.memory_.state()
    assert not any(needle in np.asarray(a).tobytes() for a in arrays.values())
    assert knn.memory_.engine.index.ntotal == 1000  # still in the graph
    # A removed id added back is a new node; its old vector stays hidden.
    knn.partial_fit(X[8:9] * 3, y[8:9], sample_ids=[7])
    d, ids = knn.kneighbors(X[7:8], 3)
    assert ids[0, 0] != 7 or d[0, 0] > 1e-3
    nb = knn.kneighbors(X[8:9], 2)[1][0]
    assert set(nb) == {7, 8}
    knn.unlearn([7])  # retrain_index=True: compacted before returning
    index = knn.memory_.engine.index
    assert index.ntotal == 999
    assert needle not in faiss.serialize_index(index).tobytes()


def test_hnsw_compacts_once_a_fifth_is_dead():
    X, y = _data(1000)
    knn = _hnsw(X, y)
    knn.unlearn(np.arange(150), retrain_index=False)
    assert knn.memory_.engine.index.ntotal == 1000
    knn.unlearn(np.arange(150, 300), retrain_index=False)  # 30% dead: compact
    assert knn.memory_.engine.index.ntotal == 700
    assert knn.memory_.engine._dead is None
