"""Hostile files and folders, fuzzed: crafted archive members, headers, JSON and
paths; folders with links, foreign files and damaged parts.

Every case runs in its own folder inside a sandbox that also holds a victim
folder and file. Whatever the case, ``load`` either gives a working model or
raises :class:`skknn.ModelFileError`, and nothing outside the case's folder
changes (the victims are hashed before and after).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skknn
from skknn import KNNVoter, ModelFileError

from ._tree import tree

TRIED = {"archives": 0, "archive_refused": 0, "folders": 0, "folder_refused": 0}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """``root/victim`` (a folder shaped like a storage folder, a user's file in
    it), ``root/victim.bin``, and a valid model file and storage folder to
    mutate."""
    root = tmp_path_factory.mktemp("sandbox")
    victim = root / "victim"
    sub = victim / ("ab" * 16)
    sub.mkdir(parents=True)
    (sub / ".lock").write_bytes(b"")
    (sub / "important.txt").write_text("the user's data")
    (sub / "state.npz").write_bytes(b"\x01" * 100)
    (root / "victim.bin").write_bytes(b"\x05" * 4096)
    gen = np.random.default_rng(0)
    X = gen.normal(size=(40, 4)).astype(np.float32)
    y = gen.integers(0, 3, 40)
    originals = root / "originals"
    originals.mkdir()
    KNNVoter(3, index="exact").fit(X, y).save(originals / "plain.skknn")
    disk = KNNVoter(3, index="flat", storage_path=originals / "folder").fit(X, y)
    disk.save(originals / "disk.skknn")
    del disk
    gc.collect()
    return root, X


VICTIM_PATHS = ["{root}/victim", "../../victim", "../victim", "/", "{root}", "."]


def _zip_members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _rezip(members, compress: set[str] = frozenset()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, payload in members:
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name), payload, compress_type=kind)
    return out.getvalue()


def _huge_header(payload: bytes, dims) -> bytes:
    """The ``.npy`` payload with its header claiming ``dims``."""
    buf = io.BytesIO(payload)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        _, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    else:
        _, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": fortran,
        "shape": tuple(dims),
    }
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header) if version == (
        1,
        0,
    ) else np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue() + payload[buf.tell() :]


mutation = st.one_of(
    st.tuples(
        st.just("member"),
        st.sampled_from(
            [
                "../evil",
                "/abs/evil",
                "arrays/../../x.npy",
                "arrays/a b.npy",
                "skknn.json",
                "arrays/memory/labels.npy",
                "other.txt",
            ]
        ),
    ),
    st.tuples(st.just("bomb"), st.integers(1, 50).map(lambda m: m << 20)),
    st.tuples(st.just("compress"), st.integers(0, 20)),
    st.tuples(
        st.just("header"),
        st.integers(0, 20),
        st.lists(st.integers(0, 2**40), min_size=1, max_size=3),
    ),
    st.tuples(
        st.just("json"),
        st.sampled_from(
            ["storage_path", "nested", "class", "version", "memory_n_features"]
        ),
        st.sampled_from([*VICTIM_PATHS, "x", 10**12, -1, None]),
    ),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(1, 255)),
)


def _mutate(data: bytes, op, root: Path) -> bytes:
    kind = op[0]
    if kind not in ("truncate", "flip"):
        try:
            members = [(i.filename, p) for i, p in _zip_members(data)]
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError):
            return data  # an earlier cut left no archive to edit
    if kind == "member":
        return _rezip([*members, (op[1], b"\x00" * 64)])
    if kind == "bomb":  # an unused, highly compressible member
        return _rezip([*members, ("arrays/zz.npy", b"\x00" * op[1])], {"arrays/zz.npy"})
    if kind == "compress":
        name = members[op[1] % len(members)][0]
        return _rezip(members, {name})
    if kind == "header":
        arrays = [i for i, (n, _) in enumerate(members) if n.endswith(".npy")]
        i = arrays[op[1] % len(arrays)]
        try:
            members[i] = (members[i][0], _huge_header(members[i][1], op[2]))
        except ValueError:
            return data  # an earlier edit left no .npy header there to rewrite
        return _rezip(members)
    if kind == "json":
        try:
            meta = json.loads(dict(members)["skknn.json"])
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            return data  # an earlier edit left no JSON there to change
        value = op[2].format(root=root) if isinstance(op[2], str) else op[2]
        field = op[1]
        if field == "storage_path":
            meta["params"]["storage_path"] = value
        elif field == "nested":
            meta["params"]["storage_path"] = {
                "__estimator__": "KNNVoter",
                "params": {"storage_path": value},
            }
        elif field == "class":
            meta["class"] = value
        elif field == "version":
            meta["version"] = value
        else:
            meta["state"]["memory"]["n_features"] = value
        members = [
            (n, json.dumps(meta).encode() if n == "skknn.json" else p)
            for n, p in members
        ]
        return _rezip(members)
    if kind == "truncate":
        return data[: int(len(data) * op[1])]
    if not data:  # an earlier edit truncated it all: nothing to flip
        return data
    pos = op[1] % len(data)
    return data[:pos] + bytes([data[pos] ^ op[2]]) + data[pos + 1 :]


def _use(model, X) -> None:
    """A loaded model must answer (or refuse a parameter the file changed)."""
    try:
        proba = model.predict_proba(X[:3])
    except ValueError as exc:
        if "parameter" not in str(exc) and "memory" not in str(exc):
            raise
        return
    assert np.isfinite(proba).all()


@settings(
    max_examples=110,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    source=st.sampled_from(["plain.skknn", "disk.skknn"]),
    ops=st.lists(mutation, min_size=1, max_size=2),
)
def test_crafted_archives(sandbox, tmp_path_factory, source, ops):
    root, X = sandbox
    case = tmp_path_factory.mktemp("case")
    data = (root / "originals" / source).read_bytes()
    for op in ops:
        data = _mutate(data, op, root)
    path = case / "m.skknn"
    path.write_bytes(data)
    before = tree(root)
    TRIED["archives"] += 1
    refused = None
    try:
        with contextlib.chdir(case):
            model = skknn.load(path)
    except ModelFileError as exc:
        TRIED["archive_refused"] += 1
        refused, model = exc, None
    assert refused is None or refused.path == str(path)
    if model is not None:
        _use(model, X)
    del model
    gc.collect()
    assert tree(root) == before
    shutil.rmtree(case)


folder_mutation = st.one_of(
    st.tuples(
        st.just("memory"),
        st.sampled_from(
            ["{root}/victim/" + "ab" * 16, "../victim", "ab" * 16, "", "..", "x/y"]
        ),
    ),
    st.tuples(
        st.just("link"),
        st.sampled_from(
            ["vectors-0.bin", "state.npz", ".lock", "estimator.json", "SUB"]
        ),
        st.sampled_from(
            ["{root}/victim.bin", "{root}/victim/" + "ab" * 16, "{root}/victim"]
        ),
    ),
    st.tuples(st.just("foreign"), st.sampled_from(["notes.txt", "SUB/notes.txt"])),
    st.tuples(
        st.just("truncate"),
        st.sampled_from(["state.npz", "vectors-0.bin", "estimator.json"]),
        st.floats(0, 0.99),
    ),
    st.tuples(
        st.just("delete"),
        st.sampled_from(["state.npz", "vectors-0.bin", "estimator.json", ".lock"]),
    ),
    st.tuples(
        st.just("json"),
        st.sampled_from(["class", "state", "params"]),
        st.sampled_from([None, 3, "KNNVoter", {}, [], "os.system"]),
    ),
)


def _mutate_folder(folder: Path, op, root: Path) -> None:
    sub = next(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())

    def where(name: str) -> Path:
        if name == "SUB":
            return sub
        if name.startswith("SUB/"):
            return sub / name[4:]
        return folder / name if name == "estimator.json" else sub / name

    kind = op[0]
    if kind == "memory":
        record = json.loads((folder / "estimator.json").read_text())
        record["memory"] = op[1].format(root=root)
        (folder / "estimator.json").write_text(json.dumps(record))
    elif kind == "link":
        target, to = where(op[1]), Path(op[2].format(root=root))
        candidates = [target] if target.exists() else list(sub.glob(op[1] + "*"))
        for t in candidates or [target]:
            if t.is_dir() and not t.is_symlink():
                shutil.rmtree(t)
            elif t.exists():
                t.unlink()
            t.symlink_to(to)
    elif kind == "foreign":
        where(op[1]).write_text("someone's file")
    elif kind in ("truncate", "delete"):
        matches = (
            [where(op[1])]
            if where(op[1]).exists()
            else sorted(sub.glob(op[1].split("-")[0] + "*"))
        )
        for t in matches[:1]:
            if kind == "delete":
                t.unlink()
            else:
                data = t.read_bytes()
                t.write_bytes(data[: int(len(data) * op[2])])
    else:
        record = json.loads((folder / "estimator.json").read_text())
        record[op[1]] = op[2]
        (folder / "estimator.json").write_text(json.dumps(record))


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(folder_mutation, min_size=1, max_size=2))
def test_crafted_folders(sandbox, tmp_path_factory, ops):
    root, X = sandbox
    case = tmp_path_factory.mktemp("fcase")
    folder = case / "folder"
    shutil.copytree(root / "originals" / "folder", folder, symlinks=True)
    for op in ops:
        # a mutation an earlier one made impossible is skipped
        with contextlib.suppress(StopIteration, OSError, ValueError):
            _mutate_folder(folder, op, root)
    before = tree(root)
    TRIED["folders"] += 1
    model = None
    try:
        with contextlib.chdir(case):
            model = skknn.load(folder)
    except ModelFileError:
        TRIED["folder_refused"] += 1
    if model is not None:
        _use(model, X)
        # an edit and a refit purge orphans: still nothing outside the case
        with contextlib.suppress(ModelFileError):
            model.partial_fit(X[:2], [0, 1])
        KNNVoter(3, index="exact", storage_path=folder).fit(X, np.arange(40) % 3)
    del model
    gc.collect()
    assert tree(root) == before
    shutil.rmtree(case)


def test_the_fuzzers_tried_and_refused_cases():
    if TRIED["archives"] == 0 or TRIED["folders"] == 0:
        pytest.skip("the fuzz tests did not run")
    assert TRIED["archives"] >= 100
    assert TRIED["archive_refused"] >= 50
    assert TRIED["folders"] >= 50
    assert TRIED["folder_refused"] >= 15
