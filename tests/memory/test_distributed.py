"""The sharded memory on a Dask cluster (``KNNVoter(backend="dask")``).

One ``LocalCluster`` of 2 worker processes (1 thread each) serves the module;
every test holds its client as the current one (``client.as_current()``), so
outside them there is no client at all. The reference for every answer is the
local memory fitted on the same data.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import skknn
from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from tests.conftest import HAS_FAISS

distributed = pytest.importorskip("distributed")
from distributed import Client, LocalCluster  # noqa: E402

from skknn.distributed import ShardLost, predict, to_local  # noqa: E402

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not HAS_FAISS, reason="the sharded tests use FAISS flat"),
]


def _cluster(n_workers=2):
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
    )
    return cluster, Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def shared_client():
    cluster, client = _cluster()
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def client(shared_client):
    with shared_client.as_current():
        yield shared_client


@pytest.fixture(scope="module")
def data():
    gen = np.random.default_rng(0)
    centers = gen.normal(scale=2.0, size=(6, 16))
    y = gen.integers(0, 6, 1500)
    X = (centers[y] + gen.normal(size=(1500, 16))).astype(np.float32)
    Q = (centers[gen.integers(0, 6, 200)] + gen.normal(size=(200, 16))).astype(
        np.float32
    )
    labels = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])[y]
    return X, labels, Q


def _pair(n_shards, **params):
    params = {"n_neighbors": 10, "index": "flat", **params}
    return (
        KNNVoter(**params),
        KNNVoter(**params, backend="dask", n_shards=n_shards),
    )


def _same_neighbors(a, b, X=None):
    da, ia = a.kneighbors(X)
    db, ib = b.kneighbors(X)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(da, db)


# -- the same answers as the local memory ------------------------------------------
@pytest.mark.parametrize("n_shards", [2, 3])
@pytest.mark.parametrize(
    ("preprocessing", "metric", "index"),
    [
        ("l2", "cosine", "flat"),
        ("center_l2", "cosine", "flat"),
        (None, "sqeuclidean", "flat"),
        ("center_l2", "cosine", "exact"),
    ],
)
def test_sharded_answers_equal_local(
    client, data, n_shards, preprocessing, metric, index
):
    X, y, Q = data
    local, sharded = _pair(
        n_shards, preprocessing=preprocessing, metric=metric, index=index
    )
    local.fit(X, y)
    sharded.fit(X, y)
    assert sharded.memory_.n_shards == n_shards
    sizes = sharded.memory_.shard_sizes
    assert sum(sizes) == len(X)
    assert min(sizes) > len(X) / n_shards * 0.8
    _same_neighbors(local, sharded, Q)
    np.testing.assert_array_equal(local.predict_proba(Q), sharded.predict_proba(Q))
    np.testing.assert_array_equal(local.predict(Q), sharded.predict(Q))
    # Leave-one-out: each shard's rows against every shard, self dropped by id.
    _same_neighbors(local, sharded)
    np.testing.assert_array_equal(local.loo_proba(), sharded.loo_proba())
    some = local.sample_ids_[::7]
    np.testing.assert_array_equal(local.loo_proba(some), sharded.loo_proba(some))
    got, want = sharded.memory_.get(some), local.memory_.get(some)
    np.testing.assert_array_equal(got.X, want.X)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(local.sample_ids_, sharded.sample_ids_)


def test_rules_weights_float16_and_ties(client, data):
    X, y, Q = data
    # Exact duplicates: equal distances are ordered by sample id everywhere.
    Xd = np.concatenate([X[:300], X[:300], X[:300]])
    yd = np.concatenate([y[:300]] * 3)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(yd))
    for voting in ("rank", "softmax", "distance", "plurality"):
        local, sharded = _pair(3, voting=voting, storage_dtype="float16")
        local.fit(Xd, yd, sample_weight=w)
        sharded.fit(Xd, yd, sample_weight=w)
        _same_neighbors(local, sharded, Q)
        _same_neighbors(local, sharded, Xd[:50])
        _same_neighbors(local, sharded)
        np.testing.assert_array_equal(local.predict_proba(Q), sharded.predict_proba(Q))


def test_hierarchical_labels(client, data):
    X, y, Q = data
    Y = np.stack([np.where(np.isin(y, ["ant", "bee"]), "insect", "other"), y], 1)
    local, sharded = _pair(2)
    local.fit(X, Y)
    sharded.fit(X, Y)
    np.testing.assert_array_equal(local.predict(Q), sharded.predict(Q))
    for a, b in zip(local.predict_proba(Q), sharded.predict_proba(Q)):
        np.testing.assert_array_equal(a, b)
    assert [c.tolist() for c in local.classes_] == [
        c.tolist() for c in sharded.classes_
    ]


def test_new_class_and_unlearn_across_shards(client, data):
    X, y, Q = data
    local, sharded = _pair(3)
    local.fit(X[:1000], y[:1000])
    sharded.fit(X[:1000], y[:1000])
    # A class the memory has never seen, and one known only by name before.
    Xn = X[1000:1100] + 3.0
    for est in (local, sharded):
        est.partial_fit(Xn, np.full(100, "gnu"), classes=["aardvark"])
    assert sharded.classes_.tolist() == local.classes_.tolist()
    assert "gnu" in sharded.classes_
    assert "aardvark" in sharded.classes_
    np.testing.assert_array_equal(local.predict_proba(Q), sharded.predict_proba(Q))
    np.testing.assert_array_equal(local.predict(Xn), sharded.predict(Xn))
    assert (sharded.predict(Xn) == "gnu").mean() > 0.9

    gone = np.arange(0, 1100, 3)
    owners = skknn.memory.sharded.shard_of(gone, 3)
    assert len(set(owners.tolist())) == 3  # every shard holds some of them
    before = sharded.memory_.shard_sizes
    local.unlearn(gone)
    sharded.unlearn(gone)
    after = sharded.memory_.shard_sizes
    assert [b - a for b, a in zip(before, after)] == np.bincount(owners).tolist()
    # The removed vectors themselves as queries: none of them is found again.
    _, found = sharded.kneighbors(X[gone[gone < 1000]], n_neighbors=50)
    assert not np.isin(found, gone).any()
    _same_neighbors(local, sharded, Q)
    _same_neighbors(local, sharded)
    np.testing.assert_array_equal(local.sample_ids_, sharded.sample_ids_)
    with pytest.raises(ValueError, match="not in memory"):
        sharded.unlearn([gone[0]])


def test_pruning_counts_and_joint_p_knn_equal_local(client, data):
    X, y, Q = data
    noisy = y.copy()
    flip = np.random.default_rng(2).choice(len(y), 150, replace=False)
    noisy[flip] = np.roll(noisy[flip], 1)
    local, sharded = _pair(2)
    p_local = MemoryPruner(estimator=local, n_neighbors=10).fit(X, noisy)
    p_sharded = MemoryPruner(estimator=sharded, n_neighbors=10).fit(X, noisy)
    np.testing.assert_array_equal(p_local.reliability_, p_sharded.reliability_)
    # Incremental counts (within_radius on the shards) after an add and an unlearn.
    for p in (p_local, p_sharded):
        p.partial_fit(Q[:50], noisy[:50])
        p.unlearn(np.arange(0, 200, 2))
    np.testing.assert_array_equal(p_local.reliability_, p_sharded.reliability_)
    np.testing.assert_array_equal(p_local.predict_proba(Q), p_sharded.predict_proba(Q))

    j_local = JointKNNClassifier(knn=local, max_epochs=5, random_state=0)
    j_sharded = JointKNNClassifier(knn=sharded, max_epochs=5, random_state=0)
    j_local.fit(X, y)
    j_sharded.fit(X, y)
    ids = j_local.knn_.sample_ids_
    codes = np.searchsorted(j_local.classes_, y)
    rows = np.arange(len(codes))  # p_kNN: leave-one-out probability of the label
    np.testing.assert_array_equal(
        j_local.knn_.loo_proba(ids)[rows, codes],
        j_sharded.knn_.loo_proba(ids)[rows, codes],
    )
    np.testing.assert_allclose(
        j_local.predict_proba(Q), j_sharded.predict_proba(Q), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("n_shards", [2, 3, 5])
@pytest.mark.parametrize("with_ties", [False, True])
def test_leave_one_out_on_the_workers_equals_the_clients(
    client, data, n_shards, with_ties
):
    """Each shard merging its queries' lists itself gives the client's merge,
    field for field, ties at the k-th place included (duplicated vectors); a
    shard with a single sample (n_shards=5 on 9 samples) takes part too."""
    X, y, _ = data
    if with_ties:
        X, y = np.vstack([X[:300], X[:300]]), np.concatenate([y[:300], y[:300]])
    _, sharded = _pair(n_shards, preprocessing="center_l2")
    sharded.fit(X, y)
    memory = sharded.memory_
    assert memory.loo_on_workers  # the default
    on_workers = memory.search_self(k=7, batch_size=128)
    memory.loo_on_workers = False
    try:
        on_client = memory.search_self(k=7, batch_size=128)
    finally:
        memory.loo_on_workers = True
    for field in ("distances", "ids", "labels", "reliability", "excluded"):
        np.testing.assert_array_equal(
            getattr(on_workers, field), getattr(on_client, field)
        )
    np.testing.assert_array_equal(on_workers.query_ids, on_client.query_ids)
    np.testing.assert_array_equal(on_workers.query_labels, on_client.query_labels)
    tiny = KNNVoter(3, index="flat", backend="dask", n_shards=5).fit(X[:9], y[:9])
    a = tiny.memory_.search_self(k=3)
    tiny.memory_.loo_on_workers = False
    np.testing.assert_array_equal(a.ids, tiny.memory_.search_self(k=3).ids)


@pytest.mark.skipif(not HAS_FAISS, reason="needs FAISS")
def test_ivf_per_shard(client, data):
    X, y, Q = data
    # 8 lists probed in full is an exact search: equal to the local flat memory.
    local = KNNVoter(10, index="flat").fit(X, y)
    sharded = KNNVoter(
        10, index="IVF8,Flat", index_params={"nprobe": 8}, backend="dask", n_shards=2
    ).fit(X, y)
    assert sharded.engine_ == "IVF8,Flat"
    _same_neighbors(local, sharded, Q)
    sharded.set_params(index_params={"nprobe": 1})
    assert sharded.memory_.index_params == {"nprobe": 1}
    with pytest.raises(ValueError, match="efSearch"):
        sharded.set_params(index_params={"efSearch": 16})
    assert sharded.memory_.index_params == {"nprobe": 1}
    sharded.set_params(index_params={"nprobe": 8})
    sharded.unlearn(np.arange(100), retrain_index=True)
    local.unlearn(np.arange(100))
    _same_neighbors(local, sharded, Q)
    version = sharded.memory_.version
    sharded.retrain_index()  # every shard trains again on all it holds
    assert sharded.memory_.version == version + 1
    _same_neighbors(local, sharded, Q)
    info = sharded.memory_.shard_info()
    assert [i["n_samples"] for i in info] == sharded.memory_.shard_sizes
    assert len({i["pid"] for i in info}) == 2  # one worker process each
    held = sharded.memory_.vector_nbytes
    assert held >= (len(X) - 100) * X.shape[1] * 4  # float32 rows, with headroom


def test_tune_index_on_a_sharded_memory(client, data):
    X, y, Q = data
    sharded = KNNVoter(
        10, index="IVF16,Flat", backend="dask", n_shards=2, index_params={"nprobe": 1}
    ).fit(X, y)
    local_exact = KNNVoter(10, index="flat").fit(X, y)
    sharded.tune_index(Q, target_agreement=0.99)
    chosen = sharded.tuning_.params[sharded.tuning_.chosen]
    assert sharded.tuning_.agreement[sharded.tuning_.chosen] >= 0.99
    assert sharded.memory_.index_params == chosen  # every shard took the knobs
    agree = np.mean(sharded.predict(Q) == local_exact.predict(Q))
    assert agree >= 0.99
    with pytest.raises(ValueError, match="exact search"):
        KNNVoter(10, index="flat", backend="dask").fit(X, y).tune_index(Q)


# -- files -------------------------------------------------------------------------
def test_save_load_round_trips(client, data, tmp_path):
    X, y, Q = data
    local, sharded = _pair(3)
    local.fit(X, y)
    sharded.fit(X, y)
    path = tmp_path / "memory.skknn"
    sharded.save(path)
    shard_files = sorted(p.name for p in tmp_path.glob("memory.skknn.*.shard*"))
    assert len(shard_files) == 3
    back = skknn.load(path)  # re-created on the cluster
    assert back.backend == "dask"
    assert back.memory_.shard_sizes == sharded.memory_.shard_sizes
    _same_neighbors(sharded, back, Q)
    gathered = skknn.load(path, backend="local")
    assert gathered.backend == "local"
    assert gathered.n_shards is None
    _same_neighbors(local, gathered, Q)
    _same_neighbors(local, gathered)
    np.testing.assert_array_equal(
        gathered.memory_.get(local.sample_ids_).X,
        local.memory_.get(local.sample_ids_).X,
    )
    # A local file split into shards, and a sharded memory gathered in memory.
    local.save(tmp_path / "local.skknn")
    split = skknn.load(tmp_path / "local.skknn", backend="dask")
    assert split.memory_.n_shards == 2  # one per worker
    _same_neighbors(local, split, Q)
    _same_neighbors(local, to_local(sharded), Q)
    # Saved again after an unlearn: the old shard files (which held the removed
    # vectors) are deleted, and no file left holds a removed vector's bytes.
    gone = np.arange(0, 1500, 5)
    removed = sharded.memory_.get(gone, prepared=True).X
    sharded.unlearn(gone)
    sharded.save(path)
    now = sorted(p.name for p in tmp_path.glob("memory.skknn.*.shard*"))
    assert len(now) == 3
    assert not set(now) & set(shard_files)
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("memory.skknn*"))
    assert not any(row.tobytes() in blob for row in removed)
    _same_neighbors(sharded, skknn.load(path), Q)


def test_saving_one_memory_leaves_the_shard_files_of_another_alone(
    client, data, tmp_path
):
    X, y, Q = data
    backup = KNNVoter(3, index="flat", backend="dask").fit(X[:50], y[:50])
    backup.save(tmp_path / "model.bak")
    KNNVoter(3, index="flat", backend="dask").fit(X, y).save(tmp_path / "model")
    back = skknn.load(tmp_path / "model.bak")  # its shards were not "stale"
    _same_neighbors(backup, back, Q)


def test_a_joint_with_a_sharded_memory_saves_and_loads(client, data, tmp_path):
    X, y, Q = data
    joint = JointKNNClassifier(
        knn=KNNVoter(10, index="flat", backend="dask"), max_epochs=3, random_state=0
    ).fit(X, y)
    joint.save(tmp_path / "joint.skknn")
    back = skknn.load(tmp_path / "joint.skknn", backend="local")
    assert back.knn_.backend == "local"
    np.testing.assert_allclose(back.predict_proba(Q), joint.predict_proba(Q), atol=1e-7)


def test_never_pickled_or_gathered_silently(client, data):
    X, y, _ = data
    sharded = KNNVoter(5, index="flat", backend="dask").fit(X, y)
    with pytest.raises(TypeError, match=r"est.save\(path\)"):
        pickle.dumps(sharded)
    import copy

    with pytest.raises(TypeError, match="to_local"):
        copy.deepcopy(sharded)
    # Parameters stay plain values: clone and get_params work.
    params = clone(sharded).get_params()
    assert params["backend"] == "dask"
    assert params["n_shards"] is None


def test_grid_search_over_a_sharded_voter(client, data):
    X, y, _ = data
    grid = {"n_neighbors": [1, 5, 15], "voting": ["rank", "plurality"]}
    local = GridSearchCV(KNNVoter(index="flat"), grid, cv=3).fit(X, y)
    sharded = GridSearchCV(KNNVoter(index="flat", backend="dask"), grid, cv=3).fit(X, y)
    assert local.best_params_ == sharded.best_params_
    np.testing.assert_array_equal(
        local.cv_results_["mean_test_score"], sharded.cv_results_["mean_test_score"]
    )
    assert sharded.best_estimator_.memory_.n_shards == 2


def test_edits_are_checked_before_any_shard_changes(client, data):
    X, y, _ = data
    sharded = KNNVoter(5, index="flat", backend="dask", n_shards=3).fit(X, y)
    sizes, version = sharded.memory_.shard_sizes, sharded.memory_.version
    with pytest.raises(ValueError, match="already in memory"):
        sharded.partial_fit(X[:4], y[:4], sample_ids=[5000, 5001, 5002, 3])
    with pytest.raises(TypeError, match="type"):
        sharded.partial_fit(X[:4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="NaN"):
        sharded.partial_fit(np.full((2, 16), np.nan), y[:2])
    with pytest.raises(ValueError, match="unique"):
        sharded.unlearn([1, 1])
    assert sharded.memory_.shard_sizes == sizes
    assert sharded.memory_.version == version
    assert len(sharded.sample_ids_) == len(X)


def test_concurrent_predictions_during_edits(client, data):
    X, y, Q = data
    sharded = KNNVoter(10, index="flat", backend="dask").fit(X[:1000], y[:1000])
    before = sharded.predict_proba(Q)
    local_after = KNNVoter(10, index="flat").fit(X, y)
    after = local_after.predict_proba(Q)
    seen, errors = [], []

    def reader():
        try:
            for _ in range(5):
                seen.append(sharded.predict_proba(Q))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    sharded.partial_fit(X[1000:], y[1000:])
    for t in threads:
        t.join()
    assert not errors
    # Every answer is of one state: before the add or after it, never a mix.
    for p in seen:
        assert p.shape == before.shape
        assert np.array_equal(p, before) or np.array_equal(p, after)
    np.testing.assert_array_equal(sharded.predict_proba(Q), after)


# -- the replicated mode -----------------------------------------------------------
def test_replicated_predict_scatters_the_memory_once(client, data):
    import dask.array as da

    X, y, Q = data
    est = KNNVoter(10, index="flat").fit(X, y)
    dq = da.from_array(Q, chunks=(50, 16))
    lazy = predict(est, dq)
    assert lazy.shape == (len(Q),)
    # The estimator was sent to both workers before any task ran, once.
    holders = [set(v) for k, v in client.who_has().items() if "KNNVoter" in k]
    assert holders
    assert all(len(h) == 2 for h in holders)
    np.testing.assert_array_equal(lazy.compute(), est.predict(Q))
    proba = predict(est, dq, method="predict_proba").compute()
    np.testing.assert_array_equal(proba, est.predict_proba(Q))
    blocks = predict(est, [Q[:70], Q[70:]])
    np.testing.assert_array_equal(blocks, est.predict(Q))
    scores = predict(est, dq, method="score_samples").compute()
    np.testing.assert_array_equal(scores, est.score_samples(Q))
    Y = np.stack([y, np.where(np.isin(y, ["ant", "bee"]), "insect", "other")], 1)
    levels = KNNVoter(10, index="flat").fit(X, Y)
    np.testing.assert_array_equal(predict(levels, dq).compute(), levels.predict(Q))
    sharded = KNNVoter(5, index="flat", backend="dask").fit(X, y)
    with pytest.raises(ValueError, match="already sharded"):
        predict(sharded, [Q])


# -- parameters and errors ---------------------------------------------------------
def test_parameters_are_checked(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="backend"):
        KNNVoter(backend="spark").fit(X, y)
    with pytest.raises(ValueError, match="n_shards"):
        KNNVoter(n_shards=2).fit(X, y)
    with pytest.raises(ValueError, match="storage_path"):
        KNNVoter(backend="dask", storage_path="somewhere").fit(X, y)


def test_without_a_client_the_error_says_how_to_start_one(data):
    X, y, _ = data
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()  # no client is current outside the fixtures
    with pytest.raises(ValueError, match="Start one first"):
        KNNVoter(backend="dask").fit(X, y)


# -- faults ------------------------------------------------------------------------
def _until_lost(query, timeout=30.0) -> ShardLost:
    """Query until the scheduler has noticed the killed worker: the ShardLost."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            query()
        except ShardLost as exc:
            return exc
        time.sleep(0.2)
    raise AssertionError("the lost worker was never reported")


def test_a_lost_worker_names_its_shard_and_a_save_restores_it(data, tmp_path):
    X, y, Q = data
    cluster, client = _cluster()
    try:
        with client.as_current():
            sharded = KNNVoter(10, index="flat", backend="dask").fit(X, y)
            want = sharded.predict_proba(Q)
            path = tmp_path / "memory.skknn"
            sharded.save(path)
            sizes = sharded.memory_.shard_sizes
            pid = sharded.memory_.shard_info()[1]["pid"]
            os.kill(pid, signal.SIGKILL)
            lost = _until_lost(lambda: sharded.predict_proba(Q))
            assert "Shard(s) 1 of 2" in str(lost)
            # An add reaching the lost shard is taken back from the live one.
            ids, version = sharded.sample_ids_, sharded.memory_.version
            with pytest.raises(ShardLost):
                sharded.partial_fit(Q[:20], y[:20])
            np.testing.assert_array_equal(sharded.sample_ids_, ids)
            assert sharded.memory_.version == version
            client.wait_for_workers(2, timeout=60)  # the nanny starts a new one
            assert sharded.memory_.restore(path) == [1]
            # Shard 0 holds what it held before the add (asked of it, not the client).
            assert [i["n_samples"] for i in sharded.memory_.shard_info()] == sizes
            np.testing.assert_array_equal(sharded.predict_proba(Q), want)
            # A shard edited after the save cannot be restored from it.
            sharded.partial_fit(Q[:20], y[:20])
            edited = [
                int(s)
                for s in np.unique(
                    skknn.memory.sharded.shard_of(sharded.sample_ids_[-20:], 2)
                )
            ]
            pid = sharded.memory_.shard_info()[edited[0]]["pid"]
            os.kill(pid, signal.SIGKILL)
            _until_lost(lambda: sharded.predict(Q))
            client.wait_for_workers(2, timeout=60)
            with pytest.raises(ValueError, match="changed after the save"):
                sharded.memory_.restore(path)
    finally:
        client.close()
        cluster.close()


@pytest.mark.requires_cuda
def test_local_cuda_cluster_one_shard_per_gpu(data):
    dask_cuda = pytest.importorskip("dask_cuda")
    X, y, Q = data
    cluster = dask_cuda.LocalCUDACluster()
    client = Client(cluster, set_as_default=False)
    try:
        with client.as_current():
            sharded = KNNVoter(10, index="flat", backend="dask").fit(X, y)
            assert sharded.device_.type == "cuda"
            local = KNNVoter(10, index="flat", device="cpu").fit(X, y)
            np.testing.assert_array_equal(
                local.kneighbors(Q)[1], sharded.kneighbors(Q)[1]
            )
    finally:
        client.close()
        cluster.close()
