"""Deletion certificates hashed lazily: fit and partial_fit hash nothing, and
the log's ``before`` / ``after`` are still those of the memory at each edit
(``EditLog`` in ``skknn/memory/digest.py``), on every backend, across saves."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skknn
from skknn import KNNVoter
from skknn.memory import digest
from skknn.memory.digest import NO_MEMORY, chain_problems, memory_digest
from tests.conftest import HAS_FAISS

INDEX = "flat" if HAS_FAISS else "exact"
D = 8


@pytest.fixture(params=["ram", "disk", "dask"])
def make_voter(request, tmp_path):
    """``make_voter(**params)``: a fresh KNNVoter on the backend (disk: a new
    storage folder each time)."""
    backend = request.param
    client = request.getfixturevalue("dask_client") if backend == "dask" else None
    count = iter(range(1000))

    def make(**params):
        if backend == "dask":
            return KNNVoter(index=INDEX, backend="dask", n_shards=2, **params)
        path = None if backend == "ram" else tmp_path / f"s{next(count)}"
        return KNNVoter(index=INDEX, storage_path=path, **params)

    make.backend = backend
    if client is None:
        yield make
    else:
        with client.as_current():
            yield make


def _data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, D)) * 2).astype(np.float32)
    y = rng.choice(["ant", "bee", "cat"], n)
    return X, y, np.arange(100, 100 + n)


def _steps(X, y, ids):
    """Edits that remove rows added by still pending edits (the fit's, the
    first partial_fit's), a reliability change between logged edits, and rows
    removed right after they were added."""
    return [
        ("fit", slice(0, 40)),
        ("partial_fit", slice(40, 55)),
        ("unlearn", ids[[0, 3, 7, 11]]),  # rows of the fit
        ("partial_fit", slice(55, 70)),
        ("unlearn", ids[[41, 44, 50]]),  # rows of the first partial_fit
        ("reliability", ids[[20, 21, 22]]),  # not logged, not in the digest
        ("unlearn", ids[[1, 56, 60]]),  # the fit's and the last partial_fit's
        ("partial_fit", slice(70, 80)),
        ("unlearn", ids[70:80]),  # all the last partial_fit added
    ]


def _apply(knn, step, X, y, ids):
    op, what = step
    if op == "fit":
        knn.fit(X[what], y[what], ids[what])
    elif op == "partial_fit":
        knn.partial_fit(X[what], y[what], sample_ids=ids[what])
    elif op == "unlearn":
        knn.unlearn(what)
    else:
        knn.memory_.set_reliability(what, np.full(len(what), 0.5))
    return knn


def test_each_lazy_before_and_after_is_the_memory_hashed_then(make_voter):
    """The edit log of edits made without hashing equals, entry by entry, the
    digests of the memory hashed whole after the same edits replayed."""
    X, y, ids = _data()
    steps = _steps(X, y, ids)
    knn = make_voter()
    for step in steps:
        _apply(knn, step, X, y, ids)
    log = knn.edit_log()
    expected = [NO_MEMORY]
    for i, step in enumerate(steps):
        if step[0] == "reliability":
            continue
        replay = make_voter()
        for earlier in steps[: i + 1]:
            _apply(replay, earlier, X, y, ids)
        expected.append(memory_digest(replay.memory_))
    logged = [e for e in steps if e[0] != "reliability"]
    assert [e["op"] for e in log] == [op for op, _ in logged]
    assert [e["before"] for e in log] == expected[:-1]
    assert [e["after"] for e in log] == expected[1:]
    assert chain_problems(log) == []
    assert knn.memory_digest() == memory_digest(knn.memory_) == expected[-1]


@pytest.fixture
def hashed(monkeypatch):
    """The rows each leaf hashing was given, in order (``_hash_rows`` counted)."""
    calls = []
    hash_rows = digest._hash_rows

    def counting(rows, labels):
        calls.append(rows.shape[0])
        return hash_rows(rows, labels)

    monkeypatch.setattr(digest, "_hash_rows", counting)
    return calls


def test_fit_and_partial_fit_hash_nothing_until_a_digest_is_asked(hashed):
    X, y, ids = _data()
    knn = KNNVoter(index=INDEX).fit(X[:60], y[:60], ids[:60])
    knn.partial_fit(X[60:], y[60:], sample_ids=ids[60:])
    assert hashed == []
    knn.unlearn(ids[[2, 61]])  # hashes the removed rows, nothing else
    assert sum(hashed) == 2
    hashed.clear()
    first = knn.memory_digest()  # the rows added and kept, once
    assert sum(hashed) == 78
    hashed.clear()
    assert knn.memory_digest() == first == memory_digest(knn.memory_)
    assert knn.edit_log()[-1]["after"] == first
    assert sum(hashed) == 78  # the module function hashed whole; the rest none


def test_a_refit_hashes_the_memory_it_replaces_not_its_own(hashed):
    X, y, ids = _data()
    knn = KNNVoter(index=INDEX).fit(X[:30], y[:30], ids[:30])
    knn.fit(X[30:], y[30:], ids[30:])  # the chain must end where it starts
    assert sum(hashed) == 30
    log = knn.edit_log()
    assert log[1]["before"] == log[0]["after"] != NO_MEMORY
    assert log[1]["after"] == memory_digest(knn.memory_)


def test_an_edit_made_on_the_store_directly_cannot_hide_in_a_pending_edit():
    """A removal made outside the log hashes the pending rows it removes first:
    the fit's ``after`` still holds them, and the next logged edit's
    ``before`` (the memory hashed whole) shows the change."""
    X, y, ids = _data()
    knn = KNNVoter(index=INDEX).fit(X, y, ids)
    knn.memory_.remove(ids[:3])  # not logged
    knn.memory_.replace_vectors(knn.memory_.get(knn.memory_.ids()).X + 1)
    knn.unlearn(ids[3:5])
    fit, unlearn = knn.edit_log()
    assert fit["after"] == memory_digest(KNNVoter(index=INDEX).fit(X, y, ids).memory_)
    assert unlearn["before"] != fit["after"]
    assert "changed outside the log" in chain_problems([fit, unlearn])[0]
    assert unlearn["after"] == memory_digest(knn.memory_)


def test_save_with_pending_edits_then_load_unlearn_and_audit(make_voter, tmp_path):
    X, y, ids = _data()
    gone = ids[[5, 45, 60]]
    knn = make_voter().fit(X[:40], y[:40], ids[:40])
    knn.partial_fit(X[40:], y[40:], sample_ids=ids[40:])
    knn.unlearn(gone[:1])
    if make_voter.backend == "disk":  # a folder is its own save
        path = knn.memory_.storage_folder.parent
        del knn
        gc.collect()
    else:
        path = tmp_path / "m.skknn"
        knn.save(path)
    loaded = skknn.load(path)
    loaded.unlearn(gone[1:])
    if make_voter.backend == "disk":
        del loaded
        gc.collect()
    else:
        loaded.save(path)
    report = skknn.audit(path, removed=X[[5, 45, 60]])
    assert report.ok, report.failures()
    assert report.n_entries == 4
    reference = KNNVoter(index=INDEX).fit(
        X[~np.isin(ids, gone)], y[~np.isin(ids, gone)], ids[~np.isin(ids, gone)]
    )
    assert report.digest == memory_digest(reference.memory_)


def test_discarded_estimators_leave_no_watch_behind():
    """A fit watches its store until its pending edits are hashed; an estimator
    thrown away unhashed (a grid search's many fits) must take that with it."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        KNNVoter(1, index=INDEX).fit(rng.random((10, 3)), np.arange(10) % 2)
    kept = KNNVoter(1, index=INDEX).fit(rng.random((10, 3)), np.arange(10) % 2)
    gc.collect()
    assert list(digest._WATCHING) == [kept.memory_]
    kept.memory_digest()  # hashed: nothing pending, nothing watched
    assert len(digest._WATCHING) == 0


def test_a_pickle_with_pending_edits_carries_the_finished_log():
    X, y, ids = _data()
    knn = KNNVoter(index=INDEX).fit(X[:50], y[:50], ids[:50])
    knn.partial_fit(X[50:], y[50:], sample_ids=ids[50:])
    again = pickle.loads(pickle.dumps(knn))
    again.unlearn(ids[[1, 70]])
    log = again.edit_log()
    assert log[:2] == knn.edit_log()
    assert chain_problems(log) == []
    assert log[-1]["after"] == memory_digest(again.memory_)


@settings(max_examples=50, deadline=None)
@given(
    pending=st.sets(st.integers(-5, 60), max_size=30),
    ids=st.sets(st.integers(-10, 70), max_size=30),
)
def test_taken_finds_exactly_the_pending_ids(pending, ids):
    """The binary search that credits removed rows to the edits that added them."""
    pending = np.array(sorted(pending), dtype=np.int64)
    ids = np.array(list(ids), dtype=np.int64)
    hit, left = digest._taken(pending, ids)
    assert hit.tolist() == np.isin(ids, pending).tolist()
    assert left.tolist() == np.setdiff1d(pending, ids).tolist()


def test_digests_asked_while_other_threads_edit_keep_the_chain():
    """Finishing pending entries (a reader's memory_digest / edit_log) while
    other threads add and remove: no entry lost, doubled or out of order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    X, y, ids = _data(n=80)
    knn = KNNVoter(index=INDEX).fit(X[:20], y[:20], ids[:20])
    done = threading.Event()
    seen = []

    def read():
        while not done.is_set():
            seen.append(len(knn.edit_log()))
            knn.memory_digest()

    def grow_and_shrink(i):
        batch = ids[20 + 6 * i : 26 + 6 * i]
        knn.partial_fit(X[batch - 100], y[batch - 100], sample_ids=batch)
        knn.unlearn(batch[:2])

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(grow_and_shrink, range(10)))
    done.set()
    reader.join()
    log = knn.edit_log()
    assert len(log) == 21
    assert seen == sorted(seen)
    assert chain_problems(log) == []
    assert log[-1]["after"] == memory_digest(knn.memory_)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), max_size=40))
def test_ids_digest_sorts_and_drops_repeats_like_unique(ids):
    assert (
        digest._sorted_unique(ids).tolist()
        == np.unique(np.asarray(ids, np.int64)).tolist()
    )
