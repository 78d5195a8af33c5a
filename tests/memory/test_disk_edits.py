"""A memory on disk across processes and damage: reopened then edited, small
edits that write only what changed, stale temporaries, links and damaged or
out-of-date parts of a store folder (``skknn/memory/segments.py``)."""

from __future__ import annotations

import fcntl
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import skknn
import skknn._archive
from skknn import KNNVoter, ModelFileError, VectorStore
from tests.conftest import HAS_FAISS

needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")
INDEXES = ["exact", *(["flat", "HNSW16"] if HAS_FAISS else [])]
D = 8


def _data(n: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    return gen.normal(size=(n, D)).astype(np.float32), gen.integers(0, 4, n)


def _env() -> dict:
    """The skknn under test, whatever is installed."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(skknn.__file__).parents[1]),
    }


def _store_folder(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


def _part(folder: Path, part: str) -> Path:
    (path,) = folder.glob(f"{part}-*.bin")
    return path


# -- reopened, then edited ---------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np
    import skknn

    out = {}
    for folder in sys.argv[1:]:
        gen = np.random.default_rng(1)
        X, y = gen.normal(size=(30, 8)).astype(np.float32), gen.integers(0, 4, 30)
        est = skknn.load(folder)
        est.partial_fit(X[:10], y[:10], sample_ids=np.arange(5000, 5010))
        est.unlearn([0, 1, 5003])
        est.partial_fit(X[10:], y[10:], sample_ids=np.arange(6000, 6020))
        out[folder] = [est.sample_ids_.tolist(), est.predict(X).tolist()]
        del est
        gc.collect()
        again = skknn.load(folder)  # and once more in this process
        assert again.sample_ids_.tolist() == out[folder][0]
        del again
        gc.collect()
    print(json.dumps(out))
    """
)


def test_reopened_in_a_new_process_then_edited(tmp_path):
    """A plain fit keeps spare room in every file; a new process reopens the
    folder and appends, unlearns and appends again (issue 22, item 11)."""
    X, y = _data(1500)
    folders = []
    for index in INDEXES:
        for dtype in ("float32", "float16"):
            folder = tmp_path / f"{index}-{dtype}"
            params = {"index": index, "storage_dtype": dtype}
            KNNVoter(10, **params, storage_path=folder).fit(X, y)
            folders.append((folder, params))
    gc.collect()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    res = subprocess.run(
        [sys.executable, str(script), *(str(f) for f, _ in folders)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    gen = np.random.default_rng(1)
    X2, y2 = gen.normal(size=(30, D)).astype(np.float32), gen.integers(0, 4, 30)
    for folder, params in folders:
        ids, predicted = out[str(folder)]
        ram = KNNVoter(10, **params).fit(X, y)
        ram.partial_fit(X2[:10], y2[:10], sample_ids=np.arange(5000, 5010))
        ram.unlearn([0, 1, 5003])
        ram.partial_fit(X2[10:], y2[10:], sample_ids=np.arange(6000, 6020))
        assert ids == ram.sample_ids_.tolist()
        if params["index"] != "HNSW16":  # approximate: its own build order
            assert predicted == ram.predict(X2).tolist()
        back = skknn.load(folder)  # the edits were committed
        assert back.sample_ids_.tolist() == ids
        del back
        gc.collect()


@pytest.mark.parametrize("index", INDEXES)
def test_reopened_in_the_same_process_then_edited(tmp_path, index):
    X, y = _data(3000)
    est = KNNVoter(5, index=index, storage_path=tmp_path).fit(X, y)
    del est
    gc.collect()
    back = skknn.load(tmp_path)
    back.partial_fit(X[:10], y[:10], sample_ids=np.arange(9000, 9010))
    back.unlearn([3, 9004], retrain_index=False)
    back.memory_.set_reliability([9000], [0.5])
    back.partial_fit(X[10:12], y[10:12], sample_ids=[9100, 9101])
    expected = np.concatenate(
        [np.delete(np.arange(3000), 3), np.delete(np.arange(9000, 9010), 4)]
    )
    np.testing.assert_array_equal(back.sample_ids_, [*expected, 9100, 9101])
    np.testing.assert_allclose(back.memory_.get([9000]).reliability, [0.5])
    ids = back.sample_ids_
    del back
    gc.collect()
    again = skknn.load(tmp_path)
    np.testing.assert_array_equal(again.sample_ids_, ids)
    np.testing.assert_allclose(again.memory_.get([9000]).reliability, [0.5])


# -- small edits write only what changed ---------------------------------------------
def _syscall_bytes_written() -> int:
    """Bytes this process passed to write calls (``wchar``; memory-map writes
    are not counted: they are the rows themselves)."""
    text = Path("/proc/self/io").read_text()
    return int(text.split("wchar:")[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="Linux only")
def test_a_small_append_writes_no_per_row_array_whole(tmp_path):
    """A 1-row partial_fit writes the row and a small manifest, the same at
    2,000 and 60,000 rows; the first format rewrote every per-row array."""
    cost = {}
    for n in (2000, 60_000):
        X, y = _data(n + 3)
        est = KNNVoter(3, index="exact", storage_path=tmp_path / str(n))
        est.fit(X[:n], y[:n])
        folder = est.memory_.storage_folder
        before = sorted(p.name for p in folder.iterdir())
        start = _syscall_bytes_written()
        est.partial_fit(X[n : n + 1], y[n : n + 1])
        cost[n] = _syscall_bytes_written() - start
        # the same files (generations): rows appended in place
        assert sorted(p.name for p in folder.iterdir()) == before
        assert est.memory_.n_samples == n + 1
    assert cost[60_000] < 16_384, cost  # 60,000 rows of ids alone are 480 KB
    assert abs(cost[60_000] - cost[2000]) < 1024, cost


def test_an_unlearned_sample_leaves_every_file(tmp_path):
    X, y = _data(2000)
    ids = np.arange(2000) * 1_000_003 + 987_654_321  # distinctive bytes
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X, y, sample_ids=ids)
    folder = est.memory_.storage_folder
    gone = ids[[5, 1500]]
    vectors = [r.tobytes() for r in est.memory_.get(gone, prepared=True).X]
    est.memory_.set_reliability(gone, [0.25, 0.75])
    est.unlearn(gone, retrain_index=False)
    data = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    for pattern in [*vectors, *(g.tobytes() for g in gone)]:
        assert pattern not in data
    assert not (folder / "state.npz").exists()


# -- stale temporaries ---------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import importlib.util, sys, time

    # skknn/_archive.py alone: no need to import torch to hold a temporary
    spec = importlib.util.spec_from_file_location("_archive", sys.argv[2])
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    replaced = atomic.replaced

    with replaced(sys.argv[1]) as fh:  # killed mid-write
        fh.write(b"x" * 100000)
        fh.flush()
        print("writing", flush=True)
        time.sleep(60)
    """
)


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def test_stale_temporaries_are_cleaned_live_ones_kept(tmp_path):
    X, y = _data(300)
    est = KNNVoter(3, index="exact", storage_path=tmp_path / "s").fit(X, y)
    target = tmp_path / "m.skknn"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(target), skknn._archive.__file__],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        (live,) = _temporaries(target)
        est.save(target)  # a live writer's temporary is not touched
        assert _temporaries(target) == [live]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # not ours: another name, or a link (its target untouched)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / ".m.skknn.tmp").write_bytes(b"other")
    link = tmp_path / ".m.skknn.abcd1234.tmp"
    link.symlink_to(victim)
    est.save(target)  # the killed writer's is
    assert _temporaries(target) == [link]
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / ".m.skknn.tmp").exists()
    assert skknn.load(target).memory_.n_samples == 300
    # in a store folder: cleaned by the next commit and by the next opening
    folder = est.memory_.storage_folder
    stale = folder / ".manifest.json.k1ll3d00.tmp"
    stale.write_bytes(b"{")
    est.partial_fit(X[:1], y[:1])
    assert not stale.exists()
    stale.write_bytes(b"{")
    held = folder / ".manifest.json.l1vel1ve.tmp"
    held.write_bytes(b"{")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live writer holds its own
    try:
        del est
        gc.collect()
        VectorStore.open(folder)
        assert not stale.exists()
        assert held.exists()
    finally:
        os.close(fd)


# -- links in a store folder ---------------------------------------------------------
def test_links_in_a_store_folder_are_refused_never_followed(tmp_path):
    X, y = _data(300)
    KNNVoter(3, index="exact", storage_path=tmp_path / "s").fit(X, y)
    gc.collect()
    folder = _store_folder(tmp_path / "s")
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious" * 100)
    # a link named as an uncommitted generation: the purge must not zero it
    (folder / "vectors-99.bin").symlink_to(victim)
    with pytest.raises(ModelFileError) as err:
        skknn.load(tmp_path / "s")
    assert "vectors-99.bin" in str(err.value)
    assert victim.read_bytes() == b"precious" * 100
    (folder / "vectors-99.bin").unlink()
    # a committed part replaced by a link to a copy of itself
    labels = _part(folder, "labels")
    shutil.copy(labels, tmp_path / "labels.copy")
    labels.unlink()
    labels.symlink_to(tmp_path / "labels.copy")
    with pytest.raises(ModelFileError) as err:
        VectorStore.open(folder)
    assert err.value.part.startswith("labels")
    # a linked store folder in the storage folder: never purged through
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".lock").write_bytes(b"")
    (outside / "vectors-0.bin").write_bytes(b"precious")
    (tmp_path / "s" / ("ab" * 16)).symlink_to(outside, target_is_directory=True)
    KNNVoter(3, index="exact", storage_path=tmp_path / "s").fit(X, y)
    assert (outside / "vectors-0.bin").read_bytes() == b"precious"


# -- damaged and out-of-date parts ---------------------------------------------------
def _fitted_folder(root: Path) -> Path:
    X, y = _data(500)
    est = KNNVoter(3, index="exact", storage_path=root).fit(X, y)
    folder = est.memory_.storage_folder
    del est
    gc.collect()
    return folder


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "part"),
    [
        ("truncate labels", "labels"),
        ("flip sample_ids", "sample_ids"),
        ("flip vectors", "vectors"),
        ("flip reliability", "reliability"),
        ("delete excluded", "excluded"),
        ("truncate manifest", "manifest.json"),
        ("garbage manifest", "manifest.json"),
        ("edit manifest", "manifest.json"),
        ("forge manifest", "vectors"),
        ("hostile manifest", "manifest.json"),
    ],
)
def test_a_damaged_part_is_refused_by_path_and_part(tmp_path, damage, part):
    folder = _fitted_folder(tmp_path)
    manifest = folder / "manifest.json"
    action, name = damage.split()
    if name == "manifest":
        record = json.loads(manifest.read_text())
        if action == "truncate":
            manifest.write_bytes(manifest.read_bytes()[:100])
        elif action == "garbage":
            manifest.write_bytes(b"\x00\xff" * 40)
        elif action == "edit":  # a field changed, its checksum not
            record["n"] = 499
            manifest.write_text(json.dumps(record))
        else:
            from skknn.memory.segments import _checksum

            body = {k: v for k, v in record.items() if k != "checksum"}
            if action == "forge":  # consistent, but naming rows no file holds
                body["n"] = 10**6
            else:  # a name read from the manifest is never a path
                body["parts"]["labels"]["gen"] = "../../etc/passwd"
            manifest.write_text(json.dumps({**body, "checksum": _checksum(body)}))
    else:
        path = _part(folder, name)
        if action == "truncate":
            os.truncate(path, 100)
        elif action == "flip":
            _flip(path, 3)
        else:
            path.unlink()
    with pytest.raises(ModelFileError) as err:
        VectorStore.open(folder)
    assert err.value.part.startswith(part), err.value
    assert str(folder) in err.value.path


def test_an_older_manifest_put_back_is_refused(tmp_path):
    X, y = _data(600)
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X[:500], y[:500])
    folder = est.memory_.storage_folder
    old = (folder / "manifest.json").read_bytes()
    est.partial_fit(X[500:], y[500:])  # rows appended: the old one names a prefix
    del est
    gc.collect()
    (folder / "manifest.json").write_bytes(old)
    with pytest.raises(ModelFileError, match="older") as err:
        skknn.load(tmp_path)
    assert err.value.part == "manifest.json: generation"


def test_a_first_format_folder_is_converted_and_a_damaged_one_refused(tmp_path):
    X, y = _data(400)
    ram = VectorStore(D, engine="exact")
    ram.add(X, y)
    meta, arrays = ram.state()
    folder = tmp_path / "old"
    folder.mkdir()
    arrays["embeddings"].tofile(folder / "vectors-0.bin")
    record = {"store": meta, "vectors": {"gen": 0, "n": 400}}
    rest = {k: v for k, v in arrays.items() if k != "embeddings" and "/" not in k}
    np.savez(folder / "state.npz", __meta__=np.array(json.dumps(record)), **rest)
    store = VectorStore.open(folder)
    np.testing.assert_array_equal(store.ids(), ram.ids())
    np.testing.assert_array_equal(store.search(X[:5], 3).ids, ram.search(X[:5], 3).ids)
    assert (folder / "manifest.json").exists()
    assert not (folder / "state.npz").exists()
    del store
    gc.collect()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "state.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelFileError) as err:
        VectorStore.open(bad)
    assert err.value.part == "state.npz"


def test_a_killed_commit_leaves_a_folder_that_opens(tmp_path):
    """Killed at random instants while appending: the folder opens to a
    consistent memory, without leftovers."""
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, numpy as np
            from skknn import KNNVoter
            X = np.random.default_rng(0).normal(size=(20000, 8)).astype(np.float32)
            knn = KNNVoter(3, index="exact", storage_path=sys.argv[1])
            knn.fit(X[:1000], np.arange(1000) % 3)
            print("ready", flush=True)
            i = 1000
            while True:
                knn.partial_fit(X[i : i + 7], np.arange(i, i + 7) % 3)
                i += 7
                if i % 700 == 0:
                    knn.unlearn(knn.sample_ids_[:50], retrain_index=False)
            """
        )
    )
    for delay in (0.3,):
        root = tmp_path / str(delay)
        child = subprocess.Popen(
            [sys.executable, str(script), str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        est = skknn.load(root)
        ids = est.sample_ids_
        np.testing.assert_array_equal(est.memory_.get(ids).labels, ids % 3)
        folder = est.memory_.storage_folder
        names = [p.name for p in folder.iterdir()]
        assert len(names) == 2 + 8, names  # lock, manifest, the parts


class _Crash(BaseException):
    """Stands for a kill -9 at a chosen instant: nothing after it runs."""


def _crash(*args, **kwargs):
    raise _Crash


def _after(calls: int, func):
    """``func`` that crashes at its ``calls``-th call, the earlier ones done."""
    count = [0]

    def crashing(*args, **kwargs):
        count[0] += 1
        if count[0] >= calls:
            raise _Crash
        return func(*args, **kwargs)

    return crashing


@pytest.mark.parametrize(
    ("op", "point"),
    [
        ("append", "before rename"),
        ("append", "after rename"),
        ("unlearn", "before rename"),
        ("unlearn", "after rename"),  # the patch not applied
        ("unlearn", "mid patch"),  # some parts' rows moved
        ("unlearn", "before moves dropped"),  # every part patched
        ("unlearn", "mid tail zeroing"),  # the second manifest committed
        ("unlearn", "mid retire"),  # too large a patch: files rewritten
    ],
)
def test_a_crash_at_each_point_of_a_commit(tmp_path, monkeypatch, op, point):
    """Killed before the manifest's rename: the old commit; after it (before,
    while or after a deletion's rows are moved, or while superseded files are
    zeroed): the new one; either way every file not named is zeroed and
    deleted, and no removed row's bytes are left, at the next opening."""
    from skknn.memory import segments as _disk

    X, y = _data(310)
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X[:300], y[:300])
    folder = est.memory_.storage_folder
    old_ids = est.sample_ids_
    gone = old_ids[[4, 200]]
    patterns = [r.tobytes() for r in est.memory_.get(gone, prepared=True).X]
    vectors = est.memory_.get(old_ids, prepared=True).X
    new_ids = np.setdiff1d(old_ids, gone) if op == "unlearn" else np.arange(310)
    monkeypatch.setattr(_disk.DiskVectors, "discard", lambda self, gen=None: None)
    if point == "before rename":

        def replaced(path, mode="wb"):  # a temporary half written, then killed
            (folder / ".manifest.json.h4lfwr1t.tmp").write_bytes(b'{"form')
            raise _Crash

        monkeypatch.setattr(_disk, "replaced", replaced)
    elif point == "after rename":
        monkeypatch.setattr(_disk.DiskVectors, "_adopt", _crash)
    elif point == "mid patch":
        monkeypatch.setattr(_disk, "_move_rows", _after(2, _disk._move_rows))
    elif point == "before moves dropped":
        monkeypatch.setattr(_disk.DiskVectors, "_drop_moves", _crash)
    elif point == "mid tail zeroing":
        sync = _disk.DiskVectors._sync_parts
        monkeypatch.setattr(_disk.DiskVectors, "_sync_parts", _after(2, sync))
    else:
        monkeypatch.setattr(_disk, "_MAX_MOVES", 0)
        monkeypatch.setattr(_disk, "_zero_file", _crash)
    if op == "append":
        edit, args, kwargs = est.partial_fit, (X[300:], y[300:]), {}
    else:
        edit, args, kwargs = est.unlearn, (gone,), {"retrain_index": False}
    with pytest.raises(_Crash):
        edit(*args, **kwargs)
    monkeypatch.undo()
    del est, edit
    gc.collect()
    store = VectorStore.open(folder)
    expected = old_ids if point == "before rename" else new_ids
    np.testing.assert_array_equal(store.ids(), expected)
    kept = np.intersect1d(expected, old_ids)  # every row where its id says
    got = store.get(kept, prepared=True)
    np.testing.assert_array_equal(got.X, vectors[kept])
    np.testing.assert_array_equal(got.labels, y[kept])
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 + 8, names  # lock, manifest, the parts
    if op == "unlearn" and point != "before rename":
        data = b"".join(p.read_bytes() for p in folder.iterdir())
        assert not any(p in data for p in patterns)
    store.add(X[300:], y[300:], ids=np.arange(1000, 1010))  # and it goes on
    np.testing.assert_array_equal(store.ids(), [*expected, *range(1000, 1010)])


# -- deletions move rows in place -----------------------------------------------------
def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="Linux only")
def test_a_one_id_unlearn_writes_a_few_rows(tmp_path):
    """Unlearning 1 id writes two small manifests and O(1) rows of each part
    (the last row moved into the removed one, the tail zeroed), the same at
    2,000 and 6,000 rows: no part is rewritten."""
    cost = {}
    for n in (2000, 6000):
        X, y = _data(n)
        est = KNNVoter(3, index="exact", storage_path=tmp_path / str(n)).fit(X, y)
        folder = est.memory_.storage_folder
        before = _snapshot(folder)
        start = _syscall_bytes_written()
        est.unlearn([n // 3], retrain_index=False)
        cost[n] = _syscall_bytes_written() - start
        after = _snapshot(folder)
        # the same files (generations); in each, at most 2 rows' bytes changed
        assert sorted(after) == sorted(before)
        for name, data in after.items():
            if name.endswith(".bin"):
                old = np.frombuffer(before[name], np.uint8)
                changed = np.count_nonzero(old != np.frombuffer(data, np.uint8))
                row = D * 4 if name.startswith("vectors") else 8
                assert changed <= 2 * row, (name, changed)
        assert est.memory_.n_samples == n - 1
    assert cost[6000] < 16_384, cost  # 6,000 rows of vectors alone are 192 KB
    assert abs(cost[6000] - cost[2000]) < 1024, cost


@pytest.mark.parametrize(
    "index", ["exact", *(["flat", "IVF8,Flat"] if HAS_FAISS else [])]
)
def test_a_disk_memory_after_deletions_is_the_ram_memory(tmp_path, index):
    """Deletions move rows on disk, never in RAM; what shows order does not
    see it: sample_ids_, loo_proba(), neighbours, the saved state and file
    (also reopened, and after more appends and deletions)."""
    X, y = _data(900)
    X[450:] = X[:450]  # duplicates: equal distances, settled by id
    Q = np.concatenate([_data(20, seed=5)[0], X[:10]])
    ram = KNNVoter(5, index=index)
    disk = KNNVoter(5, index=index, storage_path=tmp_path / "s")
    for est in (ram, disk):
        est.fit(X[:600], y[:600], sample_ids=np.arange(600) * 7 % 600)
        est.unlearn([3, 599, 17, 250], retrain_index=False)
        est.partial_fit(X[600:800], y[600:800], sample_ids=np.arange(600, 800))
        est.unlearn(np.arange(100, 700, 11))  # retrained: in memory order
        est.partial_fit(X[800:], y[800:], sample_ids=np.arange(800, 900))
        est.unlearn([0, 899])

    def same(a, b):
        np.testing.assert_array_equal(a.sample_ids_, b.sample_ids_)
        np.testing.assert_array_equal(a.loo_proba(), b.loo_proba())
        np.testing.assert_array_equal(a.kneighbors(Q)[1], b.kneighbors(Q)[1])
        np.testing.assert_array_equal(a.predict_proba(Q), b.predict_proba(Q))
        (meta_a, arrays_a), (meta_b, arrays_b) = a.memory_.state(), b.memory_.state()
        assert {**meta_a, "uid": 0} == {**meta_b, "uid": 0}
        assert sorted(arrays_a) == sorted(arrays_b)
        for name in arrays_a:
            np.testing.assert_array_equal(arrays_a[name], arrays_b[name], name)

    order = disk.memory_.backend.storage.sequence(disk.memory_.n_samples)
    assert not np.all(np.diff(order) > 0)  # rows were moved
    same(disk, ram)
    ram.save(tmp_path / "ram.skknn")
    disk.save(tmp_path / "disk.skknn")
    same(skknn.load(tmp_path / "disk.skknn"), skknn.load(tmp_path / "ram.skknn"))
    del disk, est
    gc.collect()
    back = skknn.load(tmp_path / "s")  # reopened: the rows as they lie
    same(back, ram)
    for est in (ram, back):
        est.partial_fit(X[:5], y[:5], sample_ids=np.arange(2000, 2005))
        est.unlearn([2001, 5, 6])
    same(back, ram)


def test_reopened_after_a_deletion_then_an_append(tmp_path):
    X, y = _data(400)
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X[:300], y[:300])
    folder = est.memory_.storage_folder
    est.unlearn([0, 10, 20], retrain_index=False)
    est.partial_fit(X[300:], y[300:])
    ids, proba = est.sample_ids_, est.predict_proba(X[:50])
    vectors = est.memory_.get(ids, prepared=True).X
    del est
    gc.collect()
    back = skknn.load(tmp_path)
    np.testing.assert_array_equal(back.sample_ids_, ids)
    np.testing.assert_array_equal(back.memory_.get(ids, prepared=True).X, vectors)
    np.testing.assert_array_equal(back.predict_proba(X[:50]), proba)
    assert len(list(folder.iterdir())) == 2 + 8
    back.unlearn(ids[-3:], retrain_index=False)
    back.partial_fit(X[:2], y[:2], sample_ids=[5000, 5001])
    assert back.sample_ids_.tolist() == [*ids[:-3], 5000, 5001]


def test_a_large_deletion_rewrites_the_parts_in_memory_order(tmp_path, monkeypatch):
    """A deletion over _MAX_MOVES moved rows writes new generation files
    (rows in their physical order, the sequence numbers with them)."""
    from skknn.memory import segments as _disk

    X, y = _data(500)
    ram = KNNVoter(3, index="exact").fit(X, y)
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X, y)
    ram.unlearn(np.arange(0, 500, 3))
    est.unlearn(np.arange(0, 500, 3))  # rows moved
    monkeypatch.setattr(_disk, "_MAX_MOVES", 2)
    folder = est.memory_.storage_folder
    for e in (ram, est):
        e.unlearn(np.arange(1, 400, 9))
    assert not (folder / "vectors-0.bin").exists()  # rewritten
    np.testing.assert_array_equal(est.sample_ids_, ram.sample_ids_)
    np.testing.assert_array_equal(est.loo_proba(), ram.loo_proba())
    del est, e
    gc.collect()
    np.testing.assert_array_equal(skknn.load(tmp_path).sample_ids_, ram.sample_ids_)


def test_a_damaged_patch_is_refused(tmp_path, monkeypatch):
    """A manifest whose patch moves rows out of range is refused, unread."""
    from skknn.memory import segments as _disk

    X, y = _data(300)
    est = KNNVoter(3, index="exact", storage_path=tmp_path).fit(X, y)
    folder = est.memory_.storage_folder
    monkeypatch.setattr(_disk.DiskVectors, "_adopt", _crash)
    with pytest.raises(_Crash):
        est.unlearn([5], retrain_index=False)
    monkeypatch.undo()
    del est
    gc.collect()
    record = json.loads((folder / "manifest.json").read_text())
    body = {k: v for k, v in record.items() if k != "checksum"}
    import base64

    body["patch"]["src"] = base64.b64encode(np.int64([5]).tobytes()).decode()
    (folder / "manifest.json").write_text(
        json.dumps({**body, "checksum": _disk._checksum(body)})
    )
    with pytest.raises(ModelFileError) as err:
        VectorStore.open(folder)
    assert err.value.part == "manifest.json: patch"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("store", "n_features"), 0),
        (("parts", "labels", "gen"), 10**18),  # a name purge could not recognise
        (("parts", "order", "dtype"), "<f4"),
        (("parts", "vectors", "dtype"), "<i8"),
    ],
)
def test_a_forged_manifest_field_is_refused(tmp_path, field, value):
    from skknn.memory.segments import _checksum

    folder = _fitted_folder(tmp_path)
    manifest = folder / "manifest.json"
    record = json.loads(manifest.read_text())
    body = {k: v for k, v in record.items() if k != "checksum"}
    target = body
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    manifest.write_text(json.dumps({**body, "checksum": _checksum(body)}))
    with pytest.raises(ModelFileError):
        VectorStore.open(folder)


def test_a_first_format_folder_with_fewer_rows_than_named_is_kept(tmp_path):
    """Conversion refuses a vectors file shorter than the state names (it never
    grows it into zero rows) and keeps the first-format state."""
    X, y = _data(400)
    ram = VectorStore(D, engine="exact")
    ram.add(X, y)
    meta, arrays = ram.state()
    folder = tmp_path / "old"
    folder.mkdir()
    arrays["embeddings"][:300].tofile(folder / "vectors-0.bin")
    record = {"store": meta, "vectors": {"gen": 0, "n": 400}}
    rest = {k: v for k, v in arrays.items() if k != "embeddings" and "/" not in k}
    np.savez(folder / "state.npz", __meta__=np.array(json.dumps(record)), **rest)
    with pytest.raises(ModelFileError, match="truncated"):
        VectorStore.open(folder)
    assert (folder / "state.npz").exists()
    assert (folder / "vectors-0.bin").stat().st_size == 300 * D * 4
