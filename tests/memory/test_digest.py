"""The memory digest and the hash-chained edit log (``skknn/memory/digest.py``).

The digest must depend only on what a memory holds: ``fit(A + B)`` then
``unlearn(B)`` hashes as ``fit(A)`` on every backend (RAM, disk, Dask shards)
and storage dtype, whatever the order the rows came in; and any change of an
id, a label or a vector changes it.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skknn import VectorStore
from skknn.exceptions import ModelFileError
from skknn.memory.digest import (
    GENESIS,
    EditLog,
    chain_problems,
    entry_hash,
    ids_digest,
    memory_digest,
    read_log_file,
)
from tests.conftest import HAS_FAISS

INDEX = "flat" if HAS_FAISS else "exact"
D = 8
DTYPES = ["float32", "float16"]


@pytest.fixture(params=["ram", "disk", "dask"])
def make_memory(request, tmp_path):
    """``make_memory(dtype, preprocessing)``: an empty memory on the backend."""
    backend = request.param
    client = request.getfixturevalue("dask_client") if backend == "dask" else None
    count = iter(range(100))

    def make(dtype="float32", preprocessing="l2"):
        if backend == "dask":
            from skknn.memory.sharded import ShardedStore

            config = {
                "metric": "cosine",
                "preprocessing": preprocessing,
                "index": INDEX,
                "index_params": None,
                "device": "cpu",
                "storage_dtype": dtype,
            }
            return ShardedStore(D, config, n_shards=2)
        path = None if backend == "ram" else tmp_path / f"m{next(count)}"
        return VectorStore(
            D,
            engine=INDEX,
            storage_dtype=dtype,
            preprocessing=preprocessing,
            storage_path=path,
        )

    if client is None:
        yield make
    else:
        with client.as_current():
            yield make


def _data(seed=0, n_a=60, n_b=17):
    rng = np.random.default_rng(seed)
    A = (rng.normal(size=(n_a, D)) * 3).astype(np.float32)
    B = rng.normal(size=(n_b, D)).astype(np.float32)
    ya = rng.choice(["cat", "dog", "eel"], n_a)
    yb = rng.choice(["cat", "fox"], n_b)  # "fox" only among the removed
    return A, ya, np.arange(n_a), B, yb, np.arange(1000, 1000 + n_b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unlearn_gives_the_digest_of_never_having_added(make_memory, dtype):
    A, ya, ida, B, yb, idb = _data()
    only_a = make_memory(dtype)
    only_a.add(A, ya, ida)
    # A and B shuffled together: the removed rows sit between the kept ones
    perm = np.random.default_rng(1).permutation(len(ida) + len(idb))
    both = make_memory(dtype)
    both.add(np.vstack([A, B])[perm], np.r_[ya, yb][perm], np.r_[ida, idb][perm])
    before = memory_digest(both)
    both.remove(idb)
    # B added by a later call, between two parts of A
    split = make_memory(dtype)
    split.add(A[:20], ya[:20], ida[:20])
    split.add(B, yb, idb)
    split.add(A[20:], ya[20:], ida[20:])
    split.remove(idb)
    assert memory_digest(both) == memory_digest(only_a) == memory_digest(split)
    assert before != memory_digest(only_a)  # B was hashed while it was there


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_l2_holds_only_when_the_removed_were_not_in_the_first_add(
    make_memory, dtype
):
    """The centre is the mean of the first add: samples of that add leave it
    behind when they are removed (the documented non-holding case)."""
    A, ya, ida, B, yb, idb = _data()
    only_a = make_memory(dtype, "center_l2")
    only_a.add(A, ya, ida)
    later = make_memory(dtype, "center_l2")
    later.add(A, ya, ida)
    later.add(B, yb, idb)
    later.remove(idb)
    assert memory_digest(later) == memory_digest(only_a)
    first = make_memory(dtype, "center_l2")
    first.add(np.vstack([A, B]), np.r_[ya, yb], np.r_[ida, idb])
    first.remove(idb)
    assert memory_digest(first) != memory_digest(only_a)
    assert not np.array_equal(first.mean, only_a.mean)


def test_the_same_content_hashes_alike_on_every_backend(make_memory, tmp_path):
    A, ya, ida, *_ = _data()
    store = make_memory()
    store.add(A, ya, ida)
    ram = VectorStore(D, engine=INDEX)
    ram.add(A[::-1], ya[::-1], ida[::-1])
    assert memory_digest(store) == memory_digest(ram)


@pytest.mark.parametrize(
    "change",
    ["label", "id", "vector bit", "vector length", "weight", "dtype", "extra row"],
)
def test_any_change_of_content_changes_the_digest(change):
    A, ya, ida, *_ = _data()
    X, y, ids, weight, dtype = A.copy(), ya.copy(), ida.copy(), None, "float32"
    if change == "label":
        y[5] = "eel" if y[5] != "eel" else "cat"
    elif change == "id":
        ids[5] = 999
    elif change == "vector bit":
        X.view(np.uint32)[5, 3] ^= 1 << 12  # one mantissa bit of one value
    elif change == "vector length":
        X[5] *= 2  # same direction: the stored unit row is unchanged
    elif change == "weight":
        weight = np.ones(len(y))
        weight[5] = 2
    elif change == "dtype":
        dtype = "float16"
    ref = VectorStore(D, engine=INDEX)
    ref.add(A, ya, ida)
    other = VectorStore(D, engine=INDEX, storage_dtype=dtype)
    other.add(X, y, ids, sample_weight=weight)
    if change == "extra row":
        other.add(A[:1], ya[:1], [500])
    assert memory_digest(other) != memory_digest(ref)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(1, 39), max_size=4),
    dtype=st.sampled_from(DTYPES),
)
def test_digest_is_independent_of_the_order_and_grouping_of_adds(seed, cuts, dtype):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, D)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    one = VectorStore(D, engine="exact", storage_dtype=dtype)
    one.add(X, y)
    perm = rng.permutation(40)
    many = VectorStore(D, engine="exact", storage_dtype=dtype)
    for part in np.split(perm, sorted(set(cuts))):
        many.add(X[part], y[part], part)
    assert memory_digest(many) == memory_digest(one)


def test_ids_digest_is_a_set_digest():
    assert ids_digest([5, 1, 1]) == ids_digest(np.array([1, 5]))
    assert ids_digest([1, 5]) != ids_digest([1, 6])


def _log(n=3) -> EditLog:
    log = EditLog()
    digests = [f"{i:064x}" for i in range(n + 1)]
    for i in range(n):
        log.append(
            "partial_fit",
            count=i + 1,
            ids_digest=ids_digest([i]),
            before=digests[i],
            after=digests[i + 1],
        )
    return log


def test_entries_chain_by_the_hash_of_the_one_before():
    entries = _log().entries()
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [entry_hash(e) for e in entries[:-1]]
    assert chain_problems(entries) == []


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda e: e[1].update(count=7), r"entry 2: prev does not match .*entry 1"),
        (lambda e: e.pop(1), r"entry 1: prev does not match .*entry 0"),
        (lambda e: e.insert(0, e.pop(1)), r"entry 0: prev does not match the log"),
        (lambda e: e[0].update(after="f" * 64), r"entry 1 \(partial_fit\): before"),
        (lambda e: e[2].pop("ids_digest"), r"entry 2: missing \['ids_digest'\]"),
        (lambda e: e[2].update(count=-1), r"entry 2: count must be an int >= 0"),
        (lambda e: e[2].update(after="xyz"), r"entry 2: after must be 64 hex"),
    ],
)
def test_a_tampered_log_breaks_the_chain_where_it_was_changed(tamper, message):
    entries = _log().entries()
    tamper(entries)
    problems = chain_problems(entries)
    assert problems
    assert any(re.search(message, p) for p in problems), problems


def test_the_log_file_is_appended_and_read_back(tmp_path):
    path = tmp_path / "edit_log.jsonl"
    log = _log(2)
    log.attach(path)
    before = log.last["after"]
    log.append("unlearn", count=1, ids_digest="a" * 64, before=before, after="b" * 64)
    assert read_log_file(path) == log.entries()
    assert len(path.read_text().splitlines()) == 3
    assert read_log_file(tmp_path / "missing.jsonl") == []


def test_a_linked_or_garbled_log_file_is_refused(tmp_path):
    target = tmp_path / "real.jsonl"
    _log(1).attach(target)
    link = tmp_path / "edit_log.jsonl"
    os.symlink(target, link)
    with pytest.raises(ModelFileError, match="link"):
        read_log_file(link)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(json.dumps({"op": {"nested": 1}}) + "\n")
    with pytest.raises(ModelFileError, match="plain values"):
        read_log_file(garbled)
