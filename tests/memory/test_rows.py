"""Fresh row buffers: zero, writable, and faulted in only where an add writes."""

import mmap
import os
import pickle
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skknn import JointKNNClassifier, KNNVoter
from skknn.memory import rows
from skknn.memory.rows import RowBuffer, grow, zeroed

linux_madvise = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_NOHUGEPAGE"),
    reason="populating a mapping is a Linux madvise",
)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def _mapped(a: np.ndarray) -> bool:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return isinstance(getattr(a.base, "obj", a.base), mmap.mmap)


@pytest.fixture
def small_threshold(monkeypatch):
    """Every buffer of 64 KiB or more takes the mapped path."""
    monkeypatch.setattr(rows, "POPULATE_BYTES", 1 << 16)


def test_small_buffers_stay_plain_zeros():
    a = zeroed((10, 4), np.float32, 10)
    assert not _mapped(a)
    assert a.dtype == np.float32
    assert a.shape == (10, 4)
    assert not a.any()


@linux_madvise
def test_large_buffer_is_zero_writable_and_mapped(small_threshold):
    a = zeroed((5000, 8), np.float16, 100)
    assert _mapped(a)
    assert a.shape == (5000, 8)
    assert a.dtype == np.float16
    assert a.flags.writeable
    assert not a.any()
    a[4999] = 1
    assert a.sum() == 8


@linux_madvise
def test_only_the_written_rows_are_faulted_in():
    cols, n = 1024, 65536  # 256 MiB of float32, a quarter of it to be written
    before = _resident_bytes()
    a = zeroed((n, cols), np.float32, n // 4)
    grown = _resident_bytes() - before
    quarter = a.nbytes // 4
    try:
        assert grown >= 0.9 * quarter, "the written rows were not faulted in"
        assert grown <= quarter + (16 << 20), "the headroom was faulted in too"
    finally:
        del a


@linux_madvise
def test_refused_madvise_still_gives_zeros(small_threshold, monkeypatch):
    monkeypatch.setattr(rows, "_MADV_POPULATE_WRITE", 10_000)  # EINVAL
    a = zeroed((4096, 16), np.float32, 4096)
    assert _mapped(a)
    assert not a.any()


@linux_madvise
def test_a_forked_child_edits_its_own_copy(small_threshold):
    a = zeroed((4096, 16), np.float32, 4096)
    pid = os.fork()
    if pid == 0:  # the child: write, then leave without running pytest's exit
        a[:] = 7
        os._exit(0)
    os.waitpid(pid, 0)
    assert not a.any()


@linux_madvise
def test_no_room_for_a_mapping_is_a_memory_error(small_threshold, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(rows.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match="Unable to allocate"):
        zeroed((4096, 16), np.float32, 4096)


def test_grow_keeps_the_old_rows(small_threshold):
    old = np.arange(3000 * 8, dtype=np.float32).reshape(3000, 8)
    new = grow(old, 2000, 5000, 2500)
    np.testing.assert_array_equal(new[:2000], old[:2000])
    assert not new[2000:].any()


def test_a_memory_in_mapped_buffers_behaves_as_in_plain_ones(small_threshold, rng):
    X = rng.normal(size=(3000, 16)).astype(np.float32)
    y = rng.integers(0, 4, 3000)
    est = KNNVoter(10, index="flat").fit(X[:2000], y[:2000])
    assert _mapped(est.memory_.backend._X)
    est.partial_fit(X[2000:], y[2000:])  # grows into a second mapping
    est.unlearn(np.arange(0, 3000, 7))  # compacts the mapping in place
    again = pickle.loads(pickle.dumps(est))
    keep = np.setdiff1d(np.arange(3000), np.arange(0, 3000, 7))
    plain = KNNVoter(10, index="flat").fit(X[keep], y[keep], sample_ids=keep)
    Q = rng.normal(size=(50, 16)).astype(np.float32)
    for model in (est, again):
        np.testing.assert_array_equal(
            model.kneighbors(Q, return_distance=False),
            plain.kneighbors(Q, return_distance=False),
        )
    assert not est.memory_.backend._X[est.memory_.n_samples :].any()  # no removed bytes


def test_a_store_faults_in_only_the_rows_it_adds(small_threshold, monkeypatch, rng):
    asked = []
    real = rows.zeroed

    def spy(shape, dtype, filled):
        asked.append((shape[0], filled))
        return real(shape, dtype, filled)

    monkeypatch.setattr(rows, "zeroed", spy)
    X = rng.normal(size=(3000, 16)).astype(np.float32)
    est = KNNVoter(10, index="flat").fit(X[:2000], np.arange(2000) % 3)
    capacity = est.memory_.backend._X.shape[0]
    assert (capacity, 2000) in asked  # the vectors: headroom left unfaulted
    assert capacity > 2000


@pytest.mark.parametrize("make", [KNNVoter, JointKNNClassifier], ids=["voter", "joint"])
def test_defaults_on_real_data_are_those_of_plain_buffers(make, monkeypatch):
    """sklearn's digits (constant pixel columns included), every default, fit
    in mapped buffers and in plain ones: the same probabilities."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    train, test = slice(0, 1500), slice(1500, None)
    assert (X[train].std(axis=0) == 0).any()  # dead columns, as promised
    plain = make().fit(X[train], y[train]).predict_proba(X[test])
    monkeypatch.setattr(rows, "POPULATE_BYTES", 1 << 12)
    est = make().fit(X[train], y[train])
    assert _mapped(est.memory_.backend._X)
    np.testing.assert_array_equal(est.predict_proba(X[test]), plain)


def test_row_buffer_appends_through_grow(small_threshold, rng):
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    buf = RowBuffer(X[:10])
    buf.append(X[10:])
    np.testing.assert_array_equal(buf.rows, X)
