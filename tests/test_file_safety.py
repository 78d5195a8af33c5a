"""Files are data, never instructions: what ``load`` may touch (only what the
caller names), snapshots that never roll back a folder, links and recorded paths
refused, one owner per storage folder, and one error class for bad files."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

import skknn
from skknn import (
    JointKNNClassifier,
    KNNVoter,
    MemoryPruner,
    ModelFileError,
    StorageInUse,
)
from skknn._archive import read_archive, write_archive

from ._tree import tree


def victim_folder(root: Path) -> Path:
    """A folder that looks like a storage folder with an unlocked memory in it,
    holding a user's file: what a crafted record might point a load at."""
    sub = root / ("ab" * 16)
    sub.mkdir(parents=True)
    (sub / ".lock").write_bytes(b"")
    (sub / "important.txt").write_text("the user's data")
    (sub / "vectors-0.bin").write_bytes(b"\x07" * 4096)
    (root / "notes.txt").write_text("keep me")
    return root


def rewrite_params(path: Path, edit) -> None:
    meta, arrays = read_archive(path)
    edit(meta)
    write_archive(path, meta, arrays)


@pytest.fixture
def data(digits):
    X, y, Q, _ = digits
    return X[:300], y[:300], Q[:40]


# -- 1. load never writes where a file says ----------------------------------------
@pytest.mark.parametrize("where", ["absolute", "relative", "nested"])
def test_load_never_writes_where_the_file_says(data, tmp_path, where):
    X, y, Q = data
    victim = victim_folder(tmp_path / "sandbox" / "victim")
    work = tmp_path / "sandbox" / "work"
    work.mkdir()
    if where == "nested":
        model = JointKNNClassifier(
            KNNVoter(5, index="exact", storage_path=tmp_path / "own"),
            max_epochs=2,
            random_state=0,
        ).fit(X, y)
    else:
        model = KNNVoter(5, index="exact", storage_path=tmp_path / "own").fit(X, y)
    expected = model.predict_proba(Q)
    path = work / "m.skknn"
    model.save(path)
    recorded = str(victim) if where != "relative" else "../victim"

    def point_at_victim(meta):
        params = meta["params"]
        if where == "nested":
            params = params["knn"]["params"]
        params["storage_path"] = recorded

    rewrite_params(path, point_at_victim)
    before = tree(tmp_path / "sandbox")
    with contextlib.chdir(work):
        back = skknn.load(path)
    assert tree(tmp_path / "sandbox") == before  # nothing created, nothing deleted
    knn = back.knn_ if where == "nested" else back
    assert knn.memory_.storage_folder is None  # in RAM
    assert knn.storage_path is None
    np.testing.assert_allclose(back.predict_proba(Q), expected, rtol=1e-6)
    # edits stay in RAM too
    knn.partial_fit(X[:5], y[:5])
    assert tree(tmp_path / "sandbox") == before


def test_load_into_a_named_folder_only(data, tmp_path):
    X, y, _ = data
    path = tmp_path / "m.skknn"
    KNNVoter(5, index="exact").fit(X, y).save(path)
    target = tmp_path / "mine"
    back = skknn.load(path, storage_path=target)
    assert back.memory_.storage_folder.parent == target
    assert back.storage_path == os.fspath(target)
    back.partial_fit(X[:3], y[:3])
    n = back.memory_.n_samples
    del back
    gc.collect()
    assert skknn.load(target).memory_.n_samples == n


# -- 2. a snapshot never rolls back a live folder -------------------------------------
def test_a_snapshot_never_rolls_back_a_folder(digits, tmp_path):
    X, y, _, _ = digits
    folder = tmp_path / "live"
    knn = KNNVoter(5, index="flat", storage_path=folder).fit(X[:100], y[:100])
    knn.save(tmp_path / "snap.skknn")
    knn.partial_fit(X[100:1000], y[100:1000])
    ids = knn.sample_ids_
    del knn
    gc.collect()
    before = tree(folder)
    old = skknn.load(tmp_path / "snap.skknn")
    assert old.memory_.n_samples == 100
    assert tree(folder) == before
    with pytest.raises(FileExistsError, match="holds a memory already"):
        skknn.load(tmp_path / "snap.skknn", storage_path=folder)
    assert tree(folder) == before
    del old
    gc.collect()
    reopened = skknn.load(folder)
    np.testing.assert_array_equal(reopened.sample_ids_, ids)


# -- 3. no links followed, no paths from JSON ----------------------------------------
def test_purge_follows_no_link(data, tmp_path):
    X, y, _ = data
    outside = victim_folder(tmp_path / "outside")
    victim_file = tmp_path / "victim.bin"
    victim_file.write_bytes(b"\x05" * 8192)
    root = tmp_path / "store"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    # a link in place of a memory folder, and a memory folder holding a link
    (root / ("cd" * 16)).symlink_to(outside / ("ab" * 16), target_is_directory=True)
    planted = root / ("ef" * 16)
    planted.mkdir()
    (planted / ".lock").write_bytes(b"")
    (planted / "state.npz").write_bytes(b"")
    (planted / "vectors-1.bin").symlink_to(victim_file)
    before_outside, before_file = tree(outside), victim_file.read_bytes()
    KNNVoter(3, index="exact", storage_path=root).fit(X, y)  # purges orphans
    knn.fit(X, y)
    assert tree(outside) == before_outside
    assert victim_file.read_bytes() == before_file
    assert (root / ("cd" * 16)).is_symlink()
    assert (planted / "vectors-1.bin").is_symlink()


@pytest.mark.parametrize(
    "memory", ["ABSOLUTE", "../other/x", "cd" * 16 + "/../..", "", 7, None]
)
def test_a_recorded_memory_path_never_leaves_the_folder(data, tmp_path, memory):
    X, y, _ = data
    other = KNNVoter(3, index="exact", storage_path=tmp_path / "other").fit(X, y)
    other_folder = other.memory_.storage_folder
    del other
    gc.collect()
    root = tmp_path / "mine"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    del knn
    gc.collect()
    record = json.loads((root / "estimator.json").read_text())
    record["memory"] = str(other_folder) if memory == "ABSOLUTE" else memory
    (root / "estimator.json").write_text(json.dumps(record))
    before = tree(tmp_path / "other")
    with pytest.raises(ModelFileError) as info:
        skknn.load(root)
    assert "memory" in info.value.part
    assert tree(tmp_path / "other") == before


def test_a_linked_record_is_refused(data, tmp_path):
    X, y, _ = data
    root = tmp_path / "mine"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    del knn
    gc.collect()
    real = tmp_path / "elsewhere.json"
    (root / "estimator.json").rename(real)
    (root / "estimator.json").symlink_to(real)
    with pytest.raises(ModelFileError, match="link"):
        skknn.load(root)


# -- 6. one folder, one owner -------------------------------------------------------
def test_a_superseded_estimator_learns_it_no_longer_owns_the_folder(data, tmp_path):
    X, y, Q = data
    root = tmp_path / "shared"
    first = KNNVoter(3, index="exact", storage_path=root).fit(X[:200], y[:200])
    second = KNNVoter(3, index="exact", storage_path=root).fit(X[200:], y[200:])
    first_folder = first.memory_.storage_folder
    before = tree(first_folder)
    n = first.memory_.n_samples
    with pytest.raises(StorageInUse, match="now opens to another memory"):
        first.partial_fit(X[:5], y[:5])
    with pytest.raises(StorageInUse, match="now opens to another memory"):
        first.unlearn(first.sample_ids_[:2])
    # refused before anything changed; the first still predicts
    assert first.memory_.n_samples == n
    assert tree(first_folder) == before
    first.predict(Q)
    # the second owns it and edits; a refit of the first takes the folder back
    second.partial_fit(X[:5], y[:5])
    assert second.memory_.storage_folder.exists()
    first.fit(X[:50], y[:50])
    first.partial_fit(X[50:60], y[50:60])
    with pytest.raises(StorageInUse):
        second.partial_fit(X[:5], y[:5])
    assert second.memory_.storage_folder.exists()  # a live memory is never deleted
    ids = first.sample_ids_
    del first, second
    gc.collect()
    np.testing.assert_array_equal(skknn.load(root).sample_ids_, ids)


def test_grid_search_with_a_storage_path_in_parallel(digits, tmp_path):
    X, y, Q, yq = digits
    root = tmp_path / "grid"
    search = GridSearchCV(
        KNNVoter(index="exact", storage_path=root),
        {"n_neighbors": [1, 5]},
        cv=2,
        n_jobs=2,
    ).fit(X[:400], y[:400])
    best = search.best_estimator_
    assert best.memory_.storage_folder.parent == root
    best.partial_fit(X[400:410], y[400:410])  # the refit owns the folder
    score = best.score(Q, yq)
    del search, best
    gc.collect()
    assert skknn.load(root).score(Q, yq) == pytest.approx(score)


# -- 9. one clear error for a bad folder or file --------------------------------------
@pytest.mark.parametrize(
    "damage",
    [
        lambda r: "{not json",
        lambda r: json.dumps([1, 2]),
        lambda r: json.dumps({**r, "format": "other"}),
        lambda r: json.dumps({k: v for k, v in r.items() if k != "state"}),
        lambda r: json.dumps({**r, "class": 3}),
        lambda r: json.dumps({**r, "class": "Pickle"}),
        lambda r: json.dumps({**r, "params": "x"}),
        lambda r: json.dumps({**r, "state": {}}),
        lambda r: json.dumps({**r, "params": {"n_neighbors": "many", "bogus": 1}}),
    ],
)
def test_a_damaged_record_raises_one_error(data, tmp_path, damage):
    X, y, _ = data
    root = tmp_path / "f"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    del knn
    gc.collect()
    record = json.loads((root / "estimator.json").read_text())
    (root / "estimator.json").write_text(damage(record))
    with pytest.raises(ModelFileError) as info:
        skknn.load(root)
    assert info.value.path == str(root)
    assert info.value.part.startswith("estimator.json")


def test_a_missing_memory_folder_raises_one_error(data, tmp_path):
    X, y, _ = data
    root = tmp_path / "f"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    folder = knn.memory_.storage_folder
    knn.fit(X[:10], y[:10])  # a new memory: the old folder is gone
    del knn
    gc.collect()
    record = json.loads((root / "estimator.json").read_text())
    record["memory"] = folder.name
    (root / "estimator.json").write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="not a memory folder"):
        skknn.load(root)


def test_a_file_from_a_disk_memory_loads_where_its_folder_cannot_exist(data, tmp_path):
    X, y, Q = data
    knn = KNNVoter(3, index="exact", storage_path=tmp_path / "a").fit(X, y)
    path = tmp_path / "m.skknn"
    knn.save(path)
    rewrite_params(
        path, lambda m: m["params"].update(storage_path="/proc/no/such/folder")
    )
    back = skknn.load(path)
    np.testing.assert_allclose(back.predict_proba(Q), knn.predict_proba(Q))


def test_a_relative_storage_path_survives_chdir(data, tmp_path):
    X, y, _ = data
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with contextlib.chdir(tmp_path / "a"):
        knn = KNNVoter(3, index="exact", storage_path="rel").fit(X[:100], y[:100])
    with contextlib.chdir(tmp_path / "b"):
        knn.partial_fit(X[100:110], y[100:110])
        knn.unlearn(knn.sample_ids_[:3])
        knn.predict(X[:3])
    assert not (tmp_path / "b" / "rel").exists()
    ids = knn.sample_ids_
    del knn
    gc.collect()
    np.testing.assert_array_equal(skknn.load(tmp_path / "a" / "rel").sample_ids_, ids)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello", b"PK\x03\x04garbage", b"PK\x05\x06" + bytes(18)],
)
def test_not_a_model_file_raises_one_error(tmp_path, content):
    path = tmp_path / "m.skknn"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        skknn.load(path)
    assert info.value.path == str(path)


def test_unknown_class_and_members_name_the_part(data, tmp_path):
    X, y, _ = data
    path = tmp_path / "m.skknn"
    KNNVoter(3, index="exact").fit(X, y).save(path)
    rewrite_params(path, lambda m: m.update({"class": "os.system"}))
    with pytest.raises(ModelFileError) as info:
        skknn.load(path)
    assert info.value.part == "skknn.json: class"
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(ModelFileError) as info:
        skknn.load(path)
    assert info.value.part == "../evil.txt"


# -- 11. a round trip changes nothing -------------------------------------------------
@pytest.mark.parametrize("trip", ["file", "joblib"])
def test_a_round_trip_changes_no_later_answer(digits, tmp_path, trip):
    """A hard pruner over HNSW, saved and loaded, then edited, ends exactly as
    the same edits without the round trip (the HNSW level generator is seeded
    from the graph's size, not kept in the live index only)."""
    import joblib

    pytest.importorskip("faiss")
    X, y, Q, _ = digits
    flip = np.random.default_rng(0).random(len(y)) < 0.15
    noisy = np.where(flip, (y + 1) % 10, y)

    def pruner():
        return MemoryPruner(
            KNNVoter(10, index="HNSW4", index_params={"efSearch": 12}),
            mode="hard",
            n_neighbors=10,
            threshold=2,
        )

    def edits(model):
        for start in range(700, 1200, 100):
            model.partial_fit(X[start : start + 100], noisy[start : start + 100])
        return model

    direct = edits(pruner().fit(X[:700], noisy[:700]))
    first = pruner().fit(X[:700], noisy[:700])
    if trip == "file":
        first.save(tmp_path / "p.skknn")
        back = skknn.load(tmp_path / "p.skknn")
    else:
        joblib.dump(first, tmp_path / "p.joblib")
        back = joblib.load(tmp_path / "p.joblib")
    back = edits(back)
    np.testing.assert_array_equal(back.wrong_counts_, direct.wrong_counts_)
    np.testing.assert_array_equal(back.pruned_ids_, direct.pruned_ids_)
    np.testing.assert_array_equal(back.predict(Q), direct.predict(Q))


@pytest.mark.parametrize("index", ["IVF4,Flat", "HNSW8"])
def test_a_swapped_index_is_refused(digits, tmp_path, index):
    """An index blob from another memory with as many vectors (other ids), or
    garbage in its place, raises the one error class."""
    pytest.importorskip("faiss")
    X, y, _, _ = digits
    a = KNNVoter(3, index=index).fit(X[:400], y[:400])
    b = KNNVoter(3, index=index).fit(
        X[400:800], y[400:800], sample_ids=np.arange(400) + 10**6
    )
    a.save(tmp_path / "a.skknn")
    b.save(tmp_path / "b.skknn")
    meta, arrays = read_archive(tmp_path / "a.skknn")
    _, other = read_archive(tmp_path / "b.skknn")
    key = "memory/engine/faiss_index"
    for blob in (other[key], np.frombuffer(b"\x00garbage" * 40, dtype=np.uint8)):
        write_archive(tmp_path / "c.skknn", meta, {**arrays, key: blob})
        with pytest.raises(ModelFileError, match="index"):
            skknn.load(tmp_path / "c.skknn")


def test_a_folder_emptied_by_unlearn_reopens(data, tmp_path):
    X, y, _ = data
    root = tmp_path / "f"
    knn = KNNVoter(3, index="exact", storage_path=root).fit(X[:5], y[:5])
    knn.unlearn(knn.sample_ids_)
    del knn
    gc.collect()
    back = skknn.load(root)
    assert back.memory_.n_samples == 0
    back.partial_fit(X[5:10], y[5:10])
    assert back.memory_.n_samples == 5


def test_edit_cycles_keep_folder_rss_and_handles_flat(tmp_path):
    """1,500 edit cycles (append one row, unlearn one id) on a disk memory: the
    folder's size and files, the process's RSS, open files and mappings stay
    flat after a warm-up. The edit log is append-only by design: it grows by
    exactly one line per edit and is counted apart."""
    import psutil

    gen = np.random.default_rng(0)
    X = gen.normal(size=(2000, 8)).astype(np.float32)
    y = gen.integers(0, 4, 2000)
    root = tmp_path / "cycles"
    knn = KNNVoter(3, index="flat", storage_path=root).fit(X[:400], y[:400])
    proc = psutil.Process()

    def footprint():
        gc.collect()
        files = [
            p for p in root.rglob("*") if p.is_file() and p.name != "edit_log.jsonl"
        ]
        return {
            "bytes": sum(p.stat().st_size for p in files),
            "files": len(files),
            "rss": proc.memory_info().rss,
            "fds": proc.num_fds(),
            "maps": len(proc.memory_maps(grouped=False)),
        }

    def cycles(start, count):
        for i in range(start, start + count):
            knn.partial_fit(X[i % 2000 : i % 2000 + 1], y[i % 2000 : i % 2000 + 1])
            knn.unlearn(knn.sample_ids_[:1], retrain_index=False)

    cycles(0, 300)
    warm = footprint()
    cycles(300, 1200)
    after = footprint()
    assert knn.memory_.n_samples == 400
    assert after["files"] == warm["files"], (warm, after)
    assert after["bytes"] <= warm["bytes"] * 1.1 + 65536, (warm, after)
    assert after["fds"] <= warm["fds"], (warm, after)
    assert after["maps"] <= warm["maps"] + 2, (warm, after)
    assert after["rss"] <= warm["rss"] + (16 << 20), (warm, after)
    lines = (root / "edit_log.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 2 * 1500  # the fit, then two edits per cycle


def test_bombs_are_refused_before_allocation(data, tmp_path):
    """An unused, highly compressible member and a header claiming a huge shape
    are refused from the archive's directory and headers alone."""
    import tracemalloc

    X, y, _ = data
    path = tmp_path / "m.skknn"
    KNNVoter(3, index="exact").fit(X, y).save(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("arrays/unused.npy", bytes(200 << 20))  # 200 MB of zeros
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="compressed") as info:
        skknn.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.part == "arrays/unused.npy"
    assert peak < 10 << 20, peak
    # a header claiming 999,999,999,999 rows for a member of a few kB (the header's
    # padding takes the longer shape; the member's size is unchanged)
    KNNVoter(3, index="exact").fit(X, y).save(path)
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    old = b"'shape': (300,), }" + b" " * 9
    name, payload = members[-1]
    assert old in payload, name
    members[-1] = (name, payload.replace(old, b"'shape': (999999999999,), }", 1))
    with zipfile.ZipFile(path, "w") as zf:  # stored, CRCs right: only the header lies
        for name, payload in members:
            zf.writestr(name, payload)
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="header claims"):
        skknn.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 << 20, peak
