"""The row-backend contract: one suite, every backend (issue 24).

A memory answers the same whichever backend keeps its rows: in RAM
(``LocalRows`` over ``RamRows``), on disk (``LocalRows`` over ``DiskRows``,
memory-mapped segment files) or in Dask shards (``DaskRows`` over ``Shard``
actors, a ``LocalCluster`` of two processes). All three are the one front,
``MemoryFront``, over a ``RowBackend`` (``skknn/memory/protocols.py``). Each
test runs once per backend and compares with brute force or with the memory in
RAM; a new backend joins by adding its name to :data:`BACKENDS` and a branch to
:func:`make_memory`.

The lower half checks the storage protocol of rows searched in this process
(``RowStorage``) on the storages that implement it.
"""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from skknn import VectorStore
from skknn.memory.backends.disk import DiskRows
from skknn.memory.backends.ram import RamRows
from skknn.memory.base import MemoryFront
from skknn.memory.protocols import RemovalSteps, RowBackend, RowStorage
from tests.conftest import HAS_FAISS

BACKENDS = ["ram", "disk", "dask"]
INDEX = "flat" if HAS_FAISS else "exact"
D = 8


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def current(backend, request):
    """The Dask client, current during the test, for the ``"dask"`` backend."""
    if backend != "dask":
        yield None
        return
    client = request.getfixturevalue("dask_client")
    with client.as_current():
        yield client


@pytest.fixture
def make_memory(backend, tmp_path, current):
    """``make_memory()``: an empty memory of ``D`` features on ``backend``,
    searched exactly (cosine, l2)."""

    def make():
        if backend == "ram":
            return VectorStore(D, engine=INDEX)
        if backend == "disk":
            return VectorStore(D, engine=INDEX, storage_path=tmp_path)
        from skknn.memory.sharded import ShardedStore

        config = {
            "metric": "cosine",
            "preprocessing": "l2",
            "index": INDEX,
            "index_params": None,
            "device": "cpu",
            "storage_dtype": "float32",
        }
        return ShardedStore(D, config, n_shards=2)

    return make


@pytest.fixture(scope="module")
def data():
    gen = np.random.default_rng(7)
    centers = gen.normal(scale=3.0, size=(3, D))
    y = gen.integers(0, 3, 240)
    X = (centers[y] + gen.normal(size=(240, D))).astype(np.float32)
    Q = (centers[gen.integers(0, 3, 30)] + gen.normal(size=(30, D))).astype(np.float32)
    return X, np.array(["ant", "bee", "cat"])[y], Q


def brute_force(X, ids, Q, k):
    """Ids and cosine distances of the k nearest, ties by id."""
    A = X / np.linalg.norm(X, axis=1, keepdims=True)
    B = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    dist = (1.0 - B.astype(np.float64) @ A.T.astype(np.float64)).astype(np.float32)
    order = np.lexsort((np.broadcast_to(ids, dist.shape), dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, 1), ids[order]


# -- the memory, whatever holds its rows --------------------------------------------
def test_add_issues_ids_in_order_and_get_returns_the_rows(make_memory, data):
    X, labels, _ = data
    mem = make_memory()
    ids = mem.add(X[:100], labels[:100])
    more = mem.add(X[100:], labels[100:])
    np.testing.assert_array_equal(ids, np.arange(100))
    np.testing.assert_array_equal(more, np.arange(100, 240))
    np.testing.assert_array_equal(mem.ids(), np.arange(240))
    assert mem.n_samples == 240
    np.testing.assert_array_equal(mem.classes, ["ant", "bee", "cat"])
    got = mem.get([5, 200, 17])
    np.testing.assert_allclose(got.X, X[[5, 200, 17]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.labels, labels[[5, 200, 17]])


def test_search_one_block_gives_the_exact_neighbours_ties_by_id(make_memory, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    dup = mem.add(X[:3], labels[:3])  # exact duplicates: ties settled by id
    nb = mem.search(np.vstack([Q, X[:3]]), k=7)
    ref_d, ref_ids = brute_force(
        np.vstack([X, X[:3]]), np.arange(243), np.vstack([Q, X[:3]]), 7
    )
    np.testing.assert_array_equal(nb.ids, ref_ids)
    np.testing.assert_allclose(nb.distances, ref_d, atol=1e-5)
    assert set(dup) <= set(nb.ids[-3:].ravel())


def test_every_backend_is_the_one_front_over_a_row_backend(make_memory, data):
    X, labels, Q = data
    mem = make_memory()
    assert isinstance(mem, MemoryFront)
    assert isinstance(mem.backend, RowBackend)
    assert not isinstance(mem.backend, MemoryFront)
    # Every public method and property of the front is the front's own: a
    # memory's kind only chooses its backend and how it is opened.
    from skknn.memory.view import StoreView

    public = [
        n for c in (MemoryFront, StoreView) for n in vars(c) if not n.startswith("_")
    ]
    assert {"add", "remove", "get", "search", "state", "engine"} <= set(public)
    for name in public:
        assert getattr(type(mem), name) is getattr(MemoryFront, name), name
    mem.add(X, labels)
    exact = mem.search_exact(Q, 4, batch_size=7)  # several blocks, in flight
    np.testing.assert_array_equal(exact.ids, brute_force(X, np.arange(240), Q, 4)[1])
    with pytest.raises(TypeError, match="index_params"):
        mem.search_exact(Q, 4, index_params={})


def test_the_front_needs_no_subclass_over_a_backend(data):
    """A fourth backend needs only its RowBackend: the front is a class of its
    own, made over any backend, and answers as VectorStore does."""
    from skknn.memory.local import LocalRows
    from skknn.memory.metric import METRICS

    X, labels, Q = data
    rows = LocalRows(D, metric=METRICS["euclidean"], normalizes=True, engine=INDEX)
    bare = MemoryFront(rows, preprocessing="center_l2")
    assert bare.metric.name == "euclidean"  # the backend's
    with pytest.raises(ValueError, match="backend"):  # front and rows must agree
        MemoryFront(LocalRows(D, metric=METRICS["euclidean"], normalizes=False))
    with pytest.raises(ValueError, match="preprocessing"):
        MemoryFront(rows, preprocessing="l3")
    store = VectorStore(D, metric="euclidean", preprocessing="center_l2", engine=INDEX)
    for mem in (bare, store):
        mem.add(X[:200], labels[:200])
        mem.remove([3, 50])
        mem.set_excluded([7], [True])
    a, b = bare.search(Q, k=5), store.search(Q, k=5)
    for field in ("ids", "distances", "labels", "reliability", "excluded"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_allclose(bare.mean, store.mean)
    np.testing.assert_array_equal(bare.search_self(k=3).ids, store.search_self(k=3).ids)
    assert bare.version == store.version == 3  # add, remove, exclusion
    bare.destroy()  # an edit like any other: front and backend stay in step
    assert bare.n_samples == 0
    assert bare.version == rows.version == 4


def test_the_backend_searches_one_block_exactly_ties_by_id(make_memory, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    mem.add(X[:3], labels[:3])  # duplicates: equal distances, settled by id
    rows = mem.backend
    block = mem.prepare(np.vstack([Q, X[:3]]))
    hits = rows.collect(rows.submit(rows.in_store_units(block, "Q"), 5, False, None), 5)
    ref_d, ref_ids = brute_force(
        np.vstack([X, X[:3]]), np.arange(243), np.vstack([Q, X[:3]]), 5
    )
    np.testing.assert_array_equal(hits.ids, ref_ids)
    np.testing.assert_allclose(hits.distances, ref_d, atol=1e-5)
    # codes index the front's classes; handles found by id give the same rows
    np.testing.assert_array_equal(
        mem.classes[hits.codes], np.append(labels, labels[:3])[ref_ids]
    )
    handles, known = rows.locate(ref_ids[0])
    assert known.all()
    np.testing.assert_array_equal(rows.fetch(handles, True).codes, hits.codes[0])


def test_one_search_with_its_own_knobs(make_memory, backend, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    if backend == "dask":  # each shard keeps its own knobs
        with pytest.raises(ValueError, match="set_index_params"):
            mem.search(Q, 3, index_params={})
        return
    np.testing.assert_array_equal(
        mem.search(Q, 3, index_params={}).ids, mem.search(Q, 3).ids
    )


def test_remove_ids_all_or_nothing(make_memory, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    version = mem.version
    with pytest.raises(ValueError, match="not in memory"):
        mem.remove([3, 10_000])
    assert mem.version == version
    assert mem.n_samples == 240
    gone = np.arange(0, 240, 3)
    mem.remove(gone)
    assert mem.version > version
    kept = np.setdiff1d(np.arange(240), gone)
    np.testing.assert_array_equal(mem.ids(), kept)
    nb = mem.search(Q, k=5)
    assert not np.isin(nb.ids, gone).any()
    np.testing.assert_array_equal(nb.ids, brute_force(X[kept], kept, Q, 5)[1])
    with pytest.raises(ValueError, match="not in memory"):
        mem.get([0])
    again = mem.add(X[:2], labels[:2])  # ids are never issued twice
    assert again.min() >= 240


def test_leave_one_out_never_returns_the_query(make_memory, data):
    X, labels, _ = data
    mem = make_memory()
    mem.add(X, labels)
    nb = mem.search_self(k=4)
    np.testing.assert_array_equal(nb.query_ids, np.arange(240))
    assert not (nb.ids == nb.query_ids[:, None]).any()
    reference = VectorStore(D, engine="exact")
    reference.add(X, labels)
    np.testing.assert_array_equal(nb.ids, reference.search_self(k=4).ids)


def test_reliabilities_and_exclusions_reach_the_record(make_memory, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    first = mem.search(Q[:1], k=3).ids[0]
    mem.set_reliability(first[:1], [0.25])
    mem.set_excluded(first[1:2], [True])
    nb = mem.search(Q[:1], k=3)
    np.testing.assert_array_equal(nb.ids[0], first)
    np.testing.assert_allclose(nb.reliability[0], [0.25, 1.0, 1.0])
    np.testing.assert_array_equal(nb.excluded[0], [False, True, False])


def test_the_state_survives_commit_and_open(make_memory, backend, data):
    X, labels, Q = data
    mem = make_memory()
    mem.add(X, labels)
    mem.remove(np.arange(0, 240, 5))
    before = mem.search(Q, k=6)
    if backend == "ram":
        again = pickle.loads(pickle.dumps(mem))
    elif backend == "disk":
        folder = mem.storage_folder
        del mem
        gc.collect()  # lets go of the folder's lock
        again = VectorStore.open(folder)
    else:
        again = VectorStore.from_state(*mem.gathered_state("cpu"), device="cpu")
    after = again.search(Q, k=6)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.distances, before.distances, atol=1e-6)
    np.testing.assert_array_equal(after.label_values(), before.label_values())


# -- the narrow protocol ---------------------------------------------------------
@pytest.fixture(params=["ram", "disk"])
def rows(request, tmp_path):
    if request.param == "ram":
        return RamRows()
    return DiskRows.new(tmp_path, 2, np.float32)


def _bufs(n):
    return [
        np.arange(2 * n, dtype=np.float32).reshape(n, 2),
        np.zeros(n, np.int64),
        np.arange(n, dtype=np.int64),
        np.ones(n, np.float32),
        np.zeros(n, bool),
        np.ones(n, np.float32),
    ]


def _committed(rows, n):
    """A backend holding rows 0..n-1 (vector i = [2i, 2i + 1], id i), committed."""
    bufs = rows.room([b[:0] for b in _bufs(0)], 0, n)
    for b, src in zip(bufs, _bufs(n)):
        b[:n] = src
    rows.commit(lambda: ({"n_features": 2}, {}), bufs, n)
    return rows.published(bufs)


def test_the_storages_follow_the_protocol(rows):
    assert isinstance(rows, RowStorage)
    bufs = _committed(rows, 6)
    assert len(bufs) == 6
    assert bufs[0].shape[0] >= 6
    np.testing.assert_array_equal(bufs[2][:6], np.arange(6))
    assert rows.order(6, key=0) is None  # nothing moved yet
    grown = rows.room(bufs, 6, 50)
    assert grown[0].shape[0] >= 50
    np.testing.assert_array_equal(grown[0][:6], _bufs(6)[0])


def test_a_removal_hands_the_kept_rows_to_the_index_in_memory_order(rows):
    bufs = _committed(rows, 8)
    seen, state = [], {}

    def commit(new, n, removed=None):
        rows.commit(lambda: ({"n_features": 2}, {}), new, n, removed=removed)

    def removed(n, new=None):
        state["n"], state["bufs"] = n, new

    steps = RemovalSteps(
        engine=None,
        by_rows=False,
        key=1,
        edit_index=lambda X, ids: seen.append(np.array(ids)),
        restore_index=lambda: None,
        commit=commit,
        removed=removed,
    )
    rows.remove(bufs, np.array([1, 4]), 8, steps)
    assert state["n"] == 6
    np.testing.assert_array_equal(seen[0], [0, 2, 3, 5, 6, 7])
    now = state["bufs"] if state["bufs"] is not None else bufs
    order = rows.order(6, key=2)
    order = np.arange(6) if order is None else order
    np.testing.assert_array_equal(now[2][order], [0, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(now[0][order][:, 0], [0, 4, 6, 10, 12, 14])


def test_a_failed_index_edit_changes_no_row(rows):
    bufs = _committed(rows, 5)
    before = [np.array(b[:5]) for b in bufs]

    def refuse(X, ids):
        raise RuntimeError("the index refused")

    steps = RemovalSteps(
        engine=None,
        by_rows=False,
        key=1,
        edit_index=refuse,
        restore_index=lambda: None,
        commit=lambda *a, **k: pytest.fail("committed after a failure"),
        removed=lambda *a, **k: pytest.fail("removed after a failure"),
    )
    with pytest.raises(RuntimeError, match="refused"):
        rows.remove(bufs, np.array([0, 3]), 5, steps)
    for b, old in zip(bufs, before):
        np.testing.assert_array_equal(b[:5], old)


def test_destroy_empties_the_memory_or_refuses(make_memory, backend, data):
    X, labels, _ = data
    mem = make_memory()
    mem.add(X[:20], labels[:20])
    version = mem.version
    if backend == "dask":  # nothing to destroy: refused, nothing changed
        with pytest.raises(ValueError, match="no files to destroy"):
            mem.destroy()
        assert (mem.version, mem.n_samples) == (version, 20)
        return
    folder = mem.storage_folder
    mem.destroy()
    assert (mem.version, mem.n_samples) == (version + 1, 0)
    assert folder is None or not folder.exists()
