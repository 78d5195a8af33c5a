"""Concurrent readers and editors: no crash, no answer from half an edit.

Four reader threads query while one writer adds and removes samples (a class
that sorts first included). Every id a reader gets back must be a sample with
that label and that distance: a record mixing two states of the memory fails.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from skknn import JointKNNClassifier, KNNVoter, MemoryPruner
from skknn.memory.locks import ReadWriteLock
from tests.conftest import HAS_FAISS

SECONDS = 1.5
STRESS_ENGINES = [
    ("exact", None),
    *(
        [("flat", None), ("IVF8,Flat", {"nprobe": 8}), ("HNSW16", {"efSearch": 64})]
        if HAS_FAISS
        else []
    ),
]


def _data(rng, n=1200, d=16):
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 5, n)
    y[800::3] = -1  # added later: a class that sorts before every known one
    return X, y


def _run(reader, writer, n_readers=4):
    """Run the threads for SECONDS; re-raise the first error any of them hit."""
    stop = time.monotonic() + SECONDS
    errors, counts = [], {"reads": 0, "edits": 0}

    def loop(body, key):
        try:
            while time.monotonic() < stop:
                body()
                counts[key] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=loop, args=(reader, "reads")) for _ in range(n_readers)
    ]
    threads.append(threading.Thread(target=loop, args=(writer, "edits")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return counts


@pytest.mark.parametrize(("engine", "params"), STRESS_ENGINES)
def test_readers_never_see_half_an_edit(engine, params):
    rng = np.random.default_rng(0)
    X, y = _data(rng)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    base, extra = np.arange(800), np.arange(800, 1200)
    est = KNNVoter(10, index=engine, index_params=params)
    est.fit(X[base], y[base], sample_ids=base)
    Q = rng.normal(size=(40, 16)).astype(np.float32)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    step = iter(range(10**9))

    def read():
        nb = est.neighbors(Q)
        present = nb.ids >= 0
        ids = np.where(present, nb.ids, 0)
        expected = 1.0 - np.einsum("qd,qkd->qk", Qn, unit[ids])
        np.testing.assert_allclose(nb.distances[present], expected[present], atol=1e-5)
        np.testing.assert_array_equal(nb.label_values()[present], y[ids][present])
        proba = est.predict_proba(Q)
        assert proba.shape[1] in (5, 6)
        np.testing.assert_allclose(proba.sum(1), 1.0)

    def write():
        batch = extra[(next(step) * 40) % 400 :][:40]
        est.partial_fit(X[batch], y[batch], sample_ids=batch)
        est.unlearn(batch, retrain_index=False)

    counts = _run(read, write)
    assert counts["reads"] > 4
    assert counts["edits"] >= 1
    np.testing.assert_array_equal(np.sort(est.sample_ids_), base)


def test_joint_and_pruner_predict_while_they_learn():
    rng = np.random.default_rng(1)
    X, y = _data(rng, n=600, d=8)
    Q = X[:30]
    for est in (
        JointKNNClassifier(KNNVoter(5, index="exact"), max_epochs=2, random_state=0),
        MemoryPruner(KNNVoter(5, index="exact"), n_neighbors=4),
    ):
        est.fit(X[:400], y[:400], sample_ids=np.arange(400))
        step = iter(range(10**9))

        def read(est=est):
            proba = est.predict_proba(Q)
            assert proba.shape[1] in (5, 6)
            np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
            assert est.predict(Q).shape == (30,)

        def write(est=est, step=step):
            lo = 400 + (next(step) * 20) % 200
            batch = np.arange(lo, lo + 20)
            est.partial_fit(X[batch], y[batch], sample_ids=batch)
            if isinstance(est, JointKNNClassifier):
                est.unlearn(batch, retrain=False)
            else:
                est.unlearn(batch)

        counts = _run(read, write, n_readers=3)
        assert counts["reads"] > 3
        assert counts["edits"] >= 1


def test_the_lock_lets_readers_share_and_writers_wait():
    lock = ReadWriteLock()
    inside, most = [0], [0]
    gate = threading.Barrier(3)

    def reader():
        with lock.read():
            inside[0] += 1
            gate.wait(timeout=5)  # all three readers inside at once
            most[0] = max(most[0], inside[0])
            inside[0] -= 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 3
    with lock.write(), lock.read(), lock.write():  # re-entrant in the writer
        pass
    with lock.read(), pytest.raises(RuntimeError, match="cannot start editing"):
        with lock.write():
            pass
