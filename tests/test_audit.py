"""Deletion you can prove: the estimators' edit log across save, load, pickles
and storage folders, and ``skknn.audit`` / ``skknn audit`` failing, and saying
where, for a tampered log, a changed vector and a surviving removed vector."""

from __future__ import annotations

import gc
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skknn
from skknn import (
    JointKNNClassifier,
    KNNTransformer,
    KNNVoter,
    MemoryPruner,
)
from skknn._archive import read_archive, write_archive
from skknn.app.cli import main
from skknn.memory.digest import NO_MEMORY, chain_problems, ids_digest, memory_digest

INDEX = "exact"


@pytest.fixture
def split():
    """A (kept), B (to be removed): float32 rows, labels, ids."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(90, 8)) * 2).astype(np.float32)
    y = rng.integers(0, 3, 90)
    ids = np.arange(90)
    gone = np.zeros(90, bool)
    gone[rng.choice(90, 12, replace=False)] = True
    return X, y, ids, gone


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_unlearn_matches_a_fresh_fit_and_the_log_records_it(split, dtype):
    X, y, ids, gone = split
    fresh = KNNVoter(index=INDEX, storage_dtype=dtype).fit(
        X[~gone], y[~gone], ids[~gone]
    )
    knn = KNNVoter(index=INDEX, storage_dtype=dtype).fit(X, y, ids)
    knn.unlearn(ids[gone])
    assert knn.memory_digest() == fresh.memory_digest()
    log = knn.edit_log()
    assert [e["op"] for e in log] == ["fit", "unlearn"]
    assert [e["count"] for e in log] == [90, 12]
    assert log[0]["before"] == NO_MEMORY
    assert log[1]["ids_digest"] == ids_digest(ids[gone])
    assert log[1]["after"] == fresh.memory_digest() != log[1]["before"]
    assert chain_problems(log) == []


def test_a_refit_continues_the_chain_from_the_memory_it_replaces(split):
    X, y, _ids, _ = split
    knn = KNNVoter(index=INDEX).fit(X[:50], y[:50])
    first = knn.memory_digest()
    knn.fit(X[50:], y[50:])
    log = knn.edit_log()
    assert [e["op"] for e in log] == ["fit", "fit"]
    assert log[1]["before"] == first
    assert chain_problems(log) == []


def test_the_chain_survives_files_pickles_and_later_edits(split, tmp_path):
    X, y, ids, gone = split
    knn = KNNVoter(index=INDEX).fit(X, y, ids).unlearn(ids[gone][:4])
    path = tmp_path / "m.skknn"
    knn.save(path)
    loaded = skknn.load(path)
    assert loaded.edit_log() == knn.edit_log()
    loaded.unlearn(ids[gone][4:])
    again = pickle.loads(pickle.dumps(loaded))
    again.partial_fit(X[:2] + 1, y[:2], sample_ids=[500, 501])
    log = again.edit_log()
    assert log[:2] == knn.edit_log()
    assert [e["op"] for e in log] == ["fit", "unlearn", "unlearn", "partial_fit"]
    assert chain_problems(log) == []
    assert log[-1]["after"] == again.memory_digest()


def test_a_storage_folder_carries_the_chain_and_reopening_extends_it(split, tmp_path):
    X, y, ids, gone = split
    root = tmp_path / "store"
    knn = KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids)
    knn.unlearn(ids[gone][:5])
    del knn
    gc.collect()
    reopened = skknn.load(root)
    assert [e["op"] for e in reopened.edit_log()] == ["fit", "unlearn"]
    reopened.unlearn(ids[gone][5:])
    lines = (root / "edit_log.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == reopened.edit_log()
    assert chain_problems(reopened.edit_log()) == []
    del reopened
    gc.collect()
    report = skknn.audit(root, removed=X[gone])
    assert report.ok, report.failures()
    assert report.n_entries == 3
    assert report.n_removed == 12
    assert any(f.endswith(".bin") for f in report.files_scanned)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_audit_passes_after_unlearn_and_finds_vectors_still_held(
    split, dtype, tmp_path
):
    X, y, ids, gone = split
    path = tmp_path / "m.skknn"
    KNNVoter(index=INDEX, storage_dtype=dtype).fit(X, y, ids).unlearn(ids[gone]).save(
        path
    )
    report = skknn.audit(path, removed=X[gone])
    assert report.ok, report.failures()
    assert report.chain_valid
    assert report.digest_matches
    assert report.n_byte_hits == 0
    kept = np.flatnonzero(~gone)[:3]
    report = skknn.audit(path, removed=X[kept])
    assert not report.ok
    assert report.n_byte_hits == 3
    assert {h["form"] for h in report.byte_hits} == {f"stored {dtype}"}
    # each hit is where the stored row's bytes really are
    data = path.read_bytes()
    stored = skknn.load(path).memory_.get(ids[kept], prepared=True).X.astype(dtype)
    for hit in report.byte_hits:
        row = stored[hit["row"]].tobytes()
        assert data[hit["offset"] : hit["offset"] + len(row)] == row
        assert hit["file"] == str(path)


def _rewrite_log(path, change):
    meta, arrays = read_archive(path)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    change(meta["state"]["edit_log"])
    write_archive(path, meta, arrays)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda log: log[0].update(count=80), "entry 1: prev"),
        (lambda log: log.pop(0), "entry 0: prev"),
        (lambda log: log[1].update(after=log[1]["before"]), "entry 2: prev"),
        # the last entry has no successor: the digest check catches its after
        (lambda log: log[-1].update(after=log[-1]["before"]), "digest"),
    ],
)
def test_a_tampered_log_fails_the_audit_and_says_where(split, tmp_path, change, where):
    X, y, ids, gone = split
    path = tmp_path / "m.skknn"
    KNNVoter(index=INDEX).fit(X, y, ids).unlearn(ids[gone]).partial_fit(
        X[:1] + 3, y[:1], sample_ids=[700]
    ).save(path)
    assert skknn.audit(path).ok
    _rewrite_log(path, change)
    report = skknn.audit(path)
    assert not report.ok
    assert any(line.startswith(f"chain: {where}") or where in line
               for line in report.failures()), report.failures()  # fmt: skip


def test_a_tampered_folder_log_fails_the_audit(split, tmp_path):
    X, y, ids, gone = split
    root = tmp_path / "store"
    KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids).unlearn(ids[gone])
    gc.collect()
    log = root / "edit_log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    certificate = skknn.audit(root).log_head
    entries[0]["count"] = 3  # claims a smaller first fit
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    report = skknn.audit(root)
    assert not report.ok
    assert not report.chain_valid
    assert report.digest_matches  # the memory itself is intact
    assert report.chain_problems[0].startswith("entry 1: prev")
    # the last entry's own fields are checked only against a kept log head
    entries[0]["count"] = 90
    entries[1]["count"] = 3  # claims fewer deletions
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert skknn.audit(root).ok
    report = skknn.audit(root, log_head=certificate)
    assert not report.ok
    assert "is not in the log" in report.chain_problems[0]


def test_a_flipped_vector_byte_fails_the_audit(split, tmp_path):
    """In a model file (read memory-mapped: the digest sees the flip) and in a
    storage folder (its block checksums refuse it on reopening)."""
    X, y, ids, gone = split
    path = tmp_path / "m.skknn"
    knn = KNNVoter(index=INDEX).fit(X, y, ids).unlearn(ids[gone])
    knn.save(path)
    row = knn.memory_.get(ids[~gone][:1], prepared=True).X.tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(row)
    assert at > 0
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    report = skknn.audit(path)
    assert not report.ok
    assert report.chain_valid
    assert not report.digest_matches, report.failures()
    assert report.failures()[-1].startswith("digest: the stored memory hashes to")

    root = tmp_path / "store"
    KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids).unlearn(ids[gone])
    gc.collect()
    (vectors,) = root.glob("*/vectors-*.bin")
    data = bytearray(vectors.read_bytes())
    data[37] ^= 0x01
    vectors.write_bytes(bytes(data))
    report = skknn.audit(root)
    assert not report.ok
    assert report.failures()[0].startswith("load: ")
    assert "vectors" in str(report.errors)


def test_an_edit_outside_the_log_fails_the_audit(split, tmp_path):
    X, y, ids, _ = split
    knn = KNNVoter(index=INDEX).fit(X, y, ids)
    knn.memory_.add(X[:1] + 5, y[:1], [900])  # the store itself: not logged
    path = tmp_path / "m.skknn"
    knn.save(path)
    assert not skknn.audit(path).digest_matches
    knn.unlearn([900])  # the next logged edit starts elsewhere than the last ended
    knn.save(path)
    report = skknn.audit(path)
    assert report.digest_matches
    assert not report.chain_valid
    assert "changed outside the log" in report.chain_problems[0]


def test_a_planted_copy_of_a_removed_vector_is_found(split, tmp_path):
    X, y, ids, gone = split
    root = tmp_path / "store"
    knn = KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids)
    planted = knn.memory_.get(ids[gone][2:3], prepared=True).X.tobytes()
    knn.unlearn(ids[gone])
    del knn
    gc.collect()
    assert skknn.audit(root, removed=X[gone]).ok
    (root / "notes.bin").write_bytes(b"abc" + planted + b"xyz")  # unaligned
    raw = X[gone][5].astype("<f2").tobytes()
    (root / "sub").mkdir()
    (root / "sub" / "raw16.dat").write_bytes(b"\x01" * 7 + raw)
    report = skknn.audit(root, removed=X[gone])
    assert not report.ok
    hits = {(os.path.basename(h["file"]), h["offset"], h["row"], h["form"])
            for h in report.byte_hits}  # fmt: skip
    assert hits == {
        ("notes.bin", 3, 2, "stored float32"),
        ("raw16.dat", 7, 5, "raw float16"),
    }
    assert "notes.bin at offset 3" in report.failures()[0]


def test_a_folder_held_by_a_live_estimator_is_reported_not_raised(split, tmp_path):
    X, y, ids, _ = split
    root = tmp_path / "store"
    knn = KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids)
    report = skknn.audit(root)
    assert not report.ok
    assert report.errors[0].startswith("load: The memory in")
    assert report.chain_valid  # the log file is read all the same
    del knn


def test_links_are_not_followed(split, tmp_path):
    X, y, ids, gone = split
    root = tmp_path / "store"
    KNNVoter(index=INDEX, storage_path=root).fit(X, y, ids).unlearn(ids[gone])
    gc.collect()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(X[gone].tobytes())
    os.symlink(outside, root / "link.bin")
    report = skknn.audit(root, removed=X[gone])
    assert report.ok, report.failures()
    assert report.links_skipped == [str(root / "link.bin")]
    assert str(outside) not in report.files_scanned
    assert not skknn.audit(root / "link.bin").ok  # a link is never the model


def test_removed_vectors_are_checked_before_the_scan(split, tmp_path):
    X, y, ids, _gone = split
    path = tmp_path / "m.skknn"
    KNNVoter(index=INDEX).fit(X, y, ids).save(path)
    np.save(tmp_path / "wide.npy", np.ones((2, 9)))
    report = skknn.audit(path, removed=tmp_path / "wide.npy")
    assert not report.ok
    assert "9 features, but the memory has 8" in report.errors[0]
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}]), allow_pickle=True)
    report = skknn.audit(path, removed=tmp_path / "objects.npy")
    assert not report.ok
    assert report.errors[0].startswith("removed: ")
    assert report.files_scanned == []


@pytest.mark.parametrize("retrain", [False, True])
def test_joint_reports_whether_the_head_saw_deleted_samples(split, tmp_path, retrain):
    X, y, ids, gone = split
    joint = JointKNNClassifier(max_epochs=3, random_state=0).fit(X, y, ids)
    joint.unlearn(ids[gone], retrain=retrain)
    ops = [e["op"] for e in joint.edit_log()]
    assert ops == (["fit", "head", "unlearn", "head"] if retrain else
                   ["fit", "head", "unlearn"])  # fmt: skip
    assert chain_problems(joint.edit_log()) == []
    path = tmp_path / "j.skknn"
    joint.save(path)
    report = skknn.audit(path, removed=X[gone])
    assert report.head["trained_after_last_deletion"] is retrain
    assert report.ok is retrain, report.failures()
    assert report.n_byte_hits == 0  # neither the memory nor the training rows
    if not retrain:
        assert report.failures() == [
            "head: trained on a memory that still held deleted samples (last "
            "training: entry 1, last deletion: entry 2); retrain it"
        ]
    else:  # the default "center_l2" centre is refitted without them too
        fresh = JointKNNClassifier(max_epochs=3, random_state=0)
        fresh.fit(X[~gone], y[~gone], ids[~gone])
        assert joint.memory_digest() == fresh.memory_digest()


def test_joint_partial_fit_logs_the_memory_edit_and_the_head(split):
    X, y, ids, _ = split
    joint = JointKNNClassifier(max_epochs=2, random_state=0).fit(X[:60], y[:60])
    joint.partial_fit(X[60:], y[60:], sample_ids=ids[60:])
    log = joint.edit_log()
    assert [e["op"] for e in log] == ["fit", "head", "partial_fit", "head"]
    assert log[3]["before"] == log[3]["after"] == joint.memory_digest()
    assert log[3]["trained_on"] == 30
    assert chain_problems(log) == []


def test_every_estimator_with_a_memory_has_a_digest_and_a_log(split):
    X, y, ids, gone = split
    voter = KNNVoter(index=INDEX).fit(X[~gone], y[~gone], ids[~gone])
    pruner = MemoryPruner(KNNVoter(index=INDEX)).fit(X, y, ids).unlearn(ids[gone])
    assert pruner.memory_digest() == voter.memory_digest()
    assert [e["op"] for e in pruner.edit_log()] == ["fit", "unlearn"]
    wrapped = MemoryPruner(JointKNNClassifier(max_epochs=2)).fit(X, y, ids)
    assert wrapped.edit_log() == wrapped.estimator_.edit_log()
    transformer = KNNTransformer(n_neighbors=2).fit(X)
    assert transformer.memory_digest() == transformer.knn_.memory_digest()
    assert [e["op"] for e in transformer.edit_log()] == ["fit"]


def test_the_command_exits_non_zero_on_failure_and_writes_json(split, tmp_path, capsys):
    X, y, ids, gone = split
    path = tmp_path / "m.skknn"
    KNNVoter(index=INDEX).fit(X, y, ids).unlearn(ids[gone]).save(path)
    np.save(tmp_path / "gone.npy", X[gone])
    np.save(tmp_path / "kept.npy", X[~gone][:2])
    out = tmp_path / "report.json"
    args = ["audit", str(path), "--removed", str(tmp_path / "gone.npy")]
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ok"] is True
    assert "OK" in capsys.readouterr().out
    assert main(["audit", str(path), "--removed", str(tmp_path / "kept.npy")]) == 1
    text = capsys.readouterr().out
    assert "FAIL bytes: removed row 0" in text
    assert text.rstrip().endswith("FAILED")
    assert main(["audit", str(path), "--json", str(tmp_path / "r.txt")]) == 2


def test_a_file_without_a_log_or_damaged_beyond_loading_fails(split, tmp_path):
    X, y, ids, _ = split
    path = tmp_path / "m.skknn"
    KNNVoter(index=INDEX).fit(X, y, ids).save(path)
    _rewrite_log(path, lambda log: log.clear())
    report = skknn.audit(path)
    assert not report.ok
    assert report.chain_problems == ["the model carries no edit log"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("skknn.json", "{}")
    report = skknn.audit(path)
    assert not report.ok
    assert report.errors[0].startswith("load: ")


def test_concurrent_edits_still_chain(split):
    """Each edit holds the memory from its digest before to its digest after,
    so edits from several threads never interleave in the log."""
    from concurrent.futures import ThreadPoolExecutor

    X, y, ids, _ = split
    knn = KNNVoter(index=INDEX).fit(X[:30], y[:30], ids[:30])

    def grow_and_shrink(i):
        batch = ids[30 + 6 * i : 36 + 6 * i]
        knn.partial_fit(X[batch], y[batch], sample_ids=batch)
        knn.unlearn(batch[:3])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(grow_and_shrink, range(10)))
    log = knn.edit_log()
    assert len(log) == 21
    assert chain_problems(log) == []
    assert log[-1]["after"] == memory_digest(knn.memory_)  # hashed whole


@settings(max_examples=15, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 5)), min_size=1, max_size=6),
    dtype=st.sampled_from(["float32", "float16"]),
    preprocessing=st.sampled_from(["l2", "center_l2", None]),
)
def test_each_logged_digest_is_the_memory_hashed_whole(steps, dtype, preprocessing):
    """Edits update the digest by their rows only; each must equal a digest of
    the whole memory taken then (the module's function: the estimator's own
    method answers from the log's lanes)."""
    rng = np.random.default_rng(len(steps))
    X = rng.normal(size=(80, 8)).astype(np.float32)
    y = rng.choice(["a", "b", "c"], 80)
    knn = KNNVoter(index=INDEX, storage_dtype=dtype, preprocessing=preprocessing)
    knn.fit(X[:20], y[:20])
    whole = [memory_digest(knn.memory_)]
    next_row = 20
    for add, n in steps:
        if add:
            knn.partial_fit(X[next_row : next_row + n], y[next_row : next_row + n])
            next_row += n
        else:
            knn.unlearn(knn.sample_ids_[::3][:n])
        whole.append(memory_digest(knn.memory_))
    assert [e["after"] for e in knn.edit_log()] == whole
    assert knn.memory_digest() == whole[-1]
