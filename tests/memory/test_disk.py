"""Memories on disk (``storage_path``): same answers as in RAM, crash-safe
edits, complete deletion, files, and memory-mapped loading."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import skknn
from skknn import KNNVoter, MemoryPruner, StorageInUse, VectorStore
from tests.conftest import ENGINES, HAS_FAISS

INDEXES = [*ENGINES, *(["IVF8,Flat"] if HAS_FAISS else [])]


def _files_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("storage_dtype", ["float32", "float16"])
@pytest.mark.parametrize("index", INDEXES)
def test_disk_memory_answers_as_the_ram_memory(digits, tmp_path, index, storage_dtype):
    X, y, Q, _ = digits
    params = {"n_neighbors": 5, "index": index, "storage_dtype": storage_dtype}
    ram, disk = KNNVoter(**params), KNNVoter(**params, storage_path=tmp_path)
    for est in (ram, disk):
        est.fit(X[:700], y[:700])
        est.partial_fit(X[700:], y[700:])
        est.unlearn(np.arange(0, 1200, 7))
        est.memory_.set_reliability([1, 2], [0.5, 0.25])
    assert disk.memory_.vector_nbytes == 0  # the vectors are the file's pages
    assert ram.memory_.vector_nbytes > 0
    np.testing.assert_array_equal(disk.kneighbors(Q)[1], ram.kneighbors(Q)[1])
    np.testing.assert_allclose(disk.predict_proba(Q), ram.predict_proba(Q))
    np.testing.assert_allclose(disk.loo_proba(), ram.loo_proba())
    kept = disk.sample_ids_
    np.testing.assert_array_equal(disk.memory_.get(kept).X, ram.memory_.get(kept).X)


def test_pruning_and_reopening_a_disk_memory(digits, tmp_path):
    X, y, Q, _ = digits
    pruner = MemoryPruner(
        KNNVoter(5, index="exact", storage_path=tmp_path), mode="soft"
    )
    pruner.fit(X, y)
    ram = MemoryPruner(KNNVoter(5, index="exact"), mode="soft").fit(X, y)
    np.testing.assert_array_equal(pruner.reliability_, ram.reliability_)
    ids = pruner.estimator_.sample_ids_
    reliability = pruner.estimator_.memory_.get(ids).reliability
    expected = pruner.estimator_.predict_proba(Q)
    del pruner, ram
    gc.collect()  # the folder's lock goes with the last reference to its memory
    # the folder reopens the memory with its reliabilities, in the voter
    reopened = skknn.load(tmp_path)
    assert isinstance(reopened, KNNVoter)
    np.testing.assert_array_equal(reopened.sample_ids_, ids)
    np.testing.assert_array_equal(reopened.memory_.get(ids).reliability, reliability)
    np.testing.assert_allclose(reopened.predict_proba(Q), expected)


def test_reopened_folder_is_the_last_committed_memory(digits, tmp_path):
    X, y, Q, _ = digits
    knn = KNNVoter(5, index="flat", storage_path=tmp_path).fit(X[:800], y[:800])
    knn.partial_fit(X[800:], y[800:])
    knn.unlearn([3, 4, 5])
    expected, ids = knn.predict_proba(Q), knn.sample_ids_
    with pytest.raises(StorageInUse):
        VectorStore.open(knn.memory_.storage_folder)  # one live store per folder
    del knn
    gc.collect()
    back = skknn.load(tmp_path)
    np.testing.assert_array_equal(back.sample_ids_, ids)
    np.testing.assert_allclose(back.predict_proba(Q), expected)
    back.partial_fit(X[:2], y[:2])  # and it goes on
    assert back.memory_.n_samples == len(ids) + 2


def test_unlearned_vectors_leave_every_file(digits, tmp_path):
    X, y, _, _ = digits
    folder = tmp_path / "store"
    knn = KNNVoter(5, index="exact", storage_path=folder).fit(X, y)
    gone = np.array([10, 11, 500, 1199])
    stored = knn.memory_.get(gone, prepared=True).X  # the rows as the file holds them
    patterns = [row.tobytes() for row in stored]
    assert all(p in _files_bytes(folder) for p in patterns)
    knn.unlearn(gone)
    knn.save(tmp_path / "after.skknn")
    everything = _files_bytes(tmp_path)
    for p in patterns:
        assert p not in everything
    # a refit replaces the memory: the old files are zeroed and deleted
    old_folder = knn.memory_.storage_folder
    knn.fit(X[:100], y[:100])
    assert not old_folder.exists()
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [
        knn.memory_.storage_folder.name
    ]


def test_save_streams_and_mmap_load(digits, tmp_path):
    X, y, Q, _ = digits
    knn = KNNVoter(5, index="exact", storage_path=tmp_path / "a").fit(X, y)
    knn.save(tmp_path / "m.skknn")
    expected = knn.predict_proba(Q)
    mapped = skknn.load(tmp_path / "m.skknn", mmap=True)
    assert mapped.memory_.vector_nbytes == 0
    assert mapped.storage_path is None
    np.testing.assert_allclose(mapped.predict_proba(Q), expected)
    mapped.unlearn([0, 1])  # an edit copies into RAM; the file is untouched
    assert mapped.memory_.vector_nbytes > 0
    np.testing.assert_allclose(
        skknn.load(tmp_path / "m.skknn").predict_proba(Q), expected
    )
    # the recorded storage_path is not used: the memory loads into RAM ...
    in_ram = skknn.load(tmp_path / "m.skknn")
    assert in_ram.storage_path is None
    assert in_ram.memory_.storage_folder is None
    # ... or streams into the folder the caller names
    on_disk = skknn.load(tmp_path / "m.skknn", storage_path=tmp_path / "b")
    assert on_disk.memory_.storage_folder.parent == tmp_path / "b"
    np.testing.assert_allclose(on_disk.predict_proba(Q), expected)


def test_disk_memories_are_not_pickled(digits, tmp_path):
    X, y, _, _ = digits
    knn = KNNVoter(5, index="exact", storage_path=tmp_path).fit(X, y)
    with pytest.raises(TypeError, match=r"est\.save\(path\)"):
        pickle.dumps(knn)


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from skknn import KNNVoter

    def rows(ids):  # each id's vector, recomputable by the test
        return np.sin(np.outer(ids, np.arange(1, 17) * 1e-3) + np.arange(16))

    folder = sys.argv[1]
    ids = np.arange(3000)
    knn = KNNVoter(3, index="exact", storage_path=folder).fit(rows(ids), ids % 7)
    print("ready", flush=True)
    start, edit = 3000, np.random.default_rng(1)
    while True:  # until killed
        ids = np.arange(start, start + 3000)
        knn.partial_fit(rows(ids), ids % 7, sample_ids=ids)
        start += 3000
        knn.unlearn(edit.choice(knn.sample_ids_, 2000, replace=False))
    """
)


def _rows(ids):
    return np.sin(np.outer(ids, np.arange(1, 17) * 1e-3) + np.arange(16))


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7, 1.2])
def test_a_process_killed_mid_edit_leaves_a_consistent_memory(tmp_path, delay):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folder = tmp_path / "memory"
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        # the skknn under test, whatever is installed
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(skknn.__file__).parents[1]),
        },
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed while editing
    knn = skknn.load(folder)
    ids = knn.sample_ids_
    data = knn.memory_.get(ids)
    # every committed row is the row that was added under its id
    np.testing.assert_allclose(data.X, _rows(ids), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.labels, ids % 7)
    assert knn.memory_.n_samples >= 3000
    # nothing but the committed generation remains
    assert len(list(knn.memory_.storage_folder.glob("vectors-*"))) == 1
    assert knn.predict(_rows(ids[:5])).shape == (5,)


@pytest.mark.parametrize("index", INDEXES)
def test_a_refused_commit_changes_nothing(digits, tmp_path, monkeypatch, index):
    """The disk refuses the commit (full, say): the edit raises and neither the
    memory in RAM nor the folder's committed state changed."""
    from skknn.memory.segments import DiskVectors

    X, y, Q, _ = digits
    knn = KNNVoter(5, index=index, storage_path=tmp_path).fit(X[:900], y[:900])
    before = (knn.sample_ids_, knn.predict_proba(Q), knn.memory_.version)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiskVectors, "commit", full)
    for edit, args in (
        (knn.partial_fit, (X[900:], y[900:])),
        (knn.unlearn, (np.arange(50),)),
        (knn.memory_.set_reliability, ([1], [0.5])),
    ):
        with pytest.raises(OSError, match="No space"):
            edit(*args)
        np.testing.assert_array_equal(knn.sample_ids_, before[0])
        np.testing.assert_allclose(knn.predict_proba(Q), before[1])
        assert knn.memory_.version == before[2]
    monkeypatch.undo()
    folder = knn.memory_.storage_folder
    assert sorted(p.name for p in folder.glob("vectors-*")) == ["vectors-0.bin"]
    knn.partial_fit(X[900:], y[900:])  # and the next edit commits
    del knn, edit
    gc.collect()
    assert skknn.load(tmp_path).memory_.n_samples == 1200


@pytest.mark.parametrize("moved", [False, True])
def test_save_and_mmap_load_do_not_copy_the_vectors_through_ram(tmp_path, moved):
    """A 77 MB memory on disk is saved and loaded with less than 20 MB of
    allocations (numpy's 16 MiB write chunk; numpy reports its buffers to
    tracemalloc); rows moved on disk by a removal are gathered into memory order
    a 16 MiB block at a time."""
    import tracemalloc

    gen = np.random.default_rng(0)
    X = gen.normal(size=(300_000, 64)).astype(np.float32)
    knn = KNNVoter(3, index="flat", storage_path=tmp_path / "s").fit(
        X, np.arange(300_000) % 5
    )
    del X
    if moved:  # the last rows move into the removed ones' places
        knn.unlearn([5, 70_000, 150_000], retrain_index=False)
    tracemalloc.start()
    knn.save(tmp_path / "m.skknn")
    saved_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    back = skknn.load(tmp_path / "m.skknn", mmap=True)
    loaded_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the per-row arrays (ids, labels, weights: 29 B a row; gathered copies and
    # the order when rows moved) are read, not the vectors
    assert saved_peak < (36e6 if moved else 20e6), saved_peak
    assert loaded_peak < 20e6, loaded_peak
    assert back.memory_.vector_nbytes == 0
    np.testing.assert_array_equal(back.sample_ids_, knn.sample_ids_)


def test_memories_no_live_store_holds_are_purged(digits, tmp_path):
    """A replaced or garbage-collected memory's folder (zeroed) goes at the next
    fit into the same storage_path; live ones stay."""
    X, y, _, _ = digits
    first = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X, y)
    second = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X, y)
    folders = {first.memory_.storage_folder, second.memory_.storage_folder}
    assert {p for p in tmp_path.iterdir() if p.is_dir()} == folders  # both live
    gone = first.memory_.storage_folder
    del first
    gc.collect()
    third = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X[:10], y[:10])
    assert not gone.exists()
    assert {p for p in tmp_path.iterdir() if p.is_dir()} == {
        second.memory_.storage_folder,
        third.memory_.storage_folder,
    }
