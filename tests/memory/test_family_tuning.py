"""tune_index with index="auto": the index family chosen by measurement
(skknn/_family_tuning.py, issue 25 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from skknn import KNNVoter
from skknn._family_tuning import (
    COLUMNS,
    _best,
    _fallback,
    candidate_families,
    pareto_front,
)
from tests.conftest import HAS_FAISS

pytestmark = pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = 2.5 * rng.standard_normal((20, 16)).astype(np.float32)
    y = rng.integers(0, 20, 3000)
    X = centres[y] + rng.standard_normal((3000, 16)).astype(np.float32)
    Q = centres[rng.integers(0, 20, 300)] + rng.standard_normal((300, 16))
    return X, y, Q.astype(np.float32)


def test_families_follow_the_memory_size():
    assert candidate_families(3000, 16) == [
        "flat",
        "IVF64,Flat",
        "IVF64,SQ8",
        "IVF64,PQ4x4",
        "HNSW32",
    ]
    # IVF needs 39 samples a list for 16 lists at least.
    assert candidate_families(600, 16) == ["flat", "HNSW32"]
    assert "IVF4096,PQ32" in candidate_families(1_000_000, 128)


def test_auto_picks_the_fastest_setting_that_keeps_predictions(data):
    X, y, Q = data
    knn = KNNVoter(10).fit(X, y)
    exact = knn.predict(Q)
    before = knn.memory_.get(knn.memory_.ids())
    version = knn.memory_.version
    knn.tune_index(Q, target_agreement=0.98)
    t, row = knn.tuning_, knn.tuning_.chosen
    assert set(t.index) == set(candidate_families(3000, 16))
    met = [i for i, a in enumerate(t.agreement) if a >= 0.98]
    assert row in met
    assert t.queries_per_s[row] == max(t.queries_per_s[i] for i in met)
    # The memory is the chosen index, with the same content, in a new state.
    assert knn.index == t.index[row] == knn.memory_.engine_name
    assert knn.memory_.index_params == t.params[row]
    assert dict(knn.index_params or {}) == t.params[row]
    assert knn.memory_.version > version
    after = knn.memory_.get(knn.memory_.ids())
    np.testing.assert_array_equal(after.X, before.X)
    np.testing.assert_array_equal(after.labels, before.labels)
    assert np.mean(knn.predict(Q) == exact) >= 0.98


def test_the_budget_is_kept(data):
    X, y, Q = data
    free = KNNVoter(10).fit(X, y).tune_index(Q, 0.98)
    smallest = min(free.tuning_.bytes)
    knn = KNNVoter(10).fit(X, y).tune_index(Q, 0.98, max_memory_bytes=smallest)
    assert knn.tuning_.bytes[knn.tuning_.chosen] <= smallest


def test_an_impossible_budget_changes_nothing(data):
    X, y, Q = data
    knn = KNNVoter(10).fit(X, y)
    memory, version = knn.memory_, knn.memory_.version
    with pytest.raises(ValueError, match="No index family fits max_memory_bytes"):
        knn.tune_index(Q, 0.98, max_memory_bytes=1000)
    assert knn.memory_ is memory
    assert memory.version == version
    assert knn.index == "auto"
    assert not hasattr(knn, "tuning_")


def test_the_front_is_non_dominated_and_covers_the_rest(data):
    X, y, Q = data
    t = KNNVoter(10).fit(X, y).tune_index(Q, 0.98).tuning_
    rows = [
        {"agreement": a, "queries_per_s": s, "bytes": b}
        for a, s, b in zip(t.agreement, t.queries_per_s, t.bytes)
    ]
    assert t.front == pareto_front(rows)

    def beats(a, b):
        no_worse = (
            a["agreement"] >= b["agreement"]
            and a["queries_per_s"] >= b["queries_per_s"]
            and a["bytes"] <= b["bytes"]
        )
        return no_worse and a != b

    for i in t.front:
        assert not any(beats(r, rows[i]) for r in rows)
    for i in set(range(len(rows))) - set(t.front):
        assert any(beats(rows[j], rows[i]) for j in t.front)


def test_the_front_as_a_frame(data):
    pd = pytest.importorskip("pandas")
    X, y, Q = data
    knn = KNNVoter(10).fit(X, y).tune_index(Q, 0.98)
    front = knn.index_front_
    assert isinstance(front, pd.DataFrame)
    assert list(front.columns) == [
        "index",
        "params",
        "agreement",
        "recall",
        "queries_per_s",
        "bytes",
    ]
    assert len(front) == len(knn.tuning_.front)


def test_a_tuned_memory_saves_and_loads(data, tmp_path):
    from skknn.io import load, save

    X, y, Q = data
    knn = KNNVoter(10).fit(X, y).tune_index(Q, 0.98)
    save(knn, tmp_path / "m.skknn")
    loaded = load(tmp_path / "m.skknn")
    assert loaded.index == knn.index
    assert loaded.memory_.engine_name == knn.memory_.engine_name
    np.testing.assert_array_equal(loaded.predict(Q), knn.predict(Q))


def test_what_cannot_be_rebuilt_is_refused(data, tmp_path):
    X, y, Q = data
    with pytest.raises(ValueError, match="index='auto' only"):
        KNNVoter(10, index="IVF16,Flat").fit(X, y).tune_index(Q, max_memory_bytes=10**9)
    on_disk = KNNVoter(10, storage_path=tmp_path / "mem").fit(X, y)
    with pytest.raises(ValueError, match="rebuilding the memory in RAM"):
        on_disk.tune_index(Q)


def test_an_unreachable_target_takes_the_most_accurate_within_the_budget():
    # On a real memory exact flat search is both the smallest (every family
    # keeps the stored vectors) and exact, so this rule is only reached through
    # the table: rows none of which meets the target.
    rows = [
        {
            "index": "flat",
            "params": {},
            "agreement": 0.97,
            "queries_per_s": 5,
            "bytes": 900,
        },
        {
            "index": "IVF64,SQ8",
            "params": {"nprobe": 4},
            "agreement": 0.95,
            "queries_per_s": 40,
            "bytes": 500,
        },
        {
            "index": "IVF64,PQ4",
            "params": {"nprobe": 8},
            "agreement": 0.96,
            "queries_per_s": 30,
            "bytes": 400,
        },
        {
            "index": "IVF64,PQ4",
            "params": {"nprobe": 1},
            "agreement": 0.96,
            "queries_per_s": 60,
            "bytes": 400,
        },
    ]
    assert _best(rows, 0.99, None) is None
    with pytest.warns(UserWarning, match=r"best 0\.9600: 'IVF64,PQ4', \{'nprobe': 1\}"):
        assert _fallback(rows, 0.99, 600) == 3
    with pytest.warns(UserWarning, match=r"best 0\.9700: 'flat'"):
        assert _fallback(rows, 0.99, None) == 0
    with pytest.raises(
        ValueError, match="the smallest measured, 'IVF64,PQ4', takes 400"
    ):
        _fallback(rows, 0.99, 399)


def test_the_front_without_pandas_is_a_dict_of_columns(data, monkeypatch):
    import sys

    X, y, Q = data
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas fails
    knn = KNNVoter(10).fit(X, y).tune_index(Q, 0.98)
    front = knn.index_front_
    assert isinstance(front, dict)
    assert list(front) == list(COLUMNS)
    assert front["index"] == [knn.tuning_.index[i] for i in knn.tuning_.front]


def test_the_far_query_guard_of_auto_is_kept(data, monkeypatch):
    """Past its size index="auto" searches far queries exactly (far_quantile);
    the families tuned from such a memory keep that guard (scaled down here, as
    in tests/memory/test_storage.py)."""
    from skknn.memory import engines

    monkeypatch.setattr(engines, "AUTO_MIN_SAMPLES", 2000)
    monkeypatch.setattr(engines, "AUTO_INDEX", "IVF16,PQ8x4")
    monkeypatch.setattr(
        engines, "AUTO_PARAMS", {"nprobe": 16, "refine": 4, "far_quantile": 0.999}
    )
    X, y, Q = data
    knn = KNNVoter(10).fit(X, y)
    assert knn.memory_.index_params["far_quantile"] == 0.999
    t = knn.tune_index(Q, 0.98).tuning_
    for index, params in zip(t.index, t.params):
        assert ("far_quantile" in params) == (index != "flat"), (index, params)
    assert knn.memory_.index_params == t.params[t.chosen]


def test_a_family_that_fails_to_build_changes_nothing(data, monkeypatch):
    from skknn.memory.front import VectorStore

    X, y, Q = data
    knn = KNNVoter(10).fit(X, y)
    memory, version = knn.memory_, knn.memory_.version
    build = VectorStore.from_state.__func__

    def failing(cls, meta, *args, **kwargs):
        if meta["engine"] == "HNSW32":  # the last family, after the others
            raise MemoryError("no room for the graph")
        return build(cls, meta, *args, **kwargs)

    monkeypatch.setattr(VectorStore, "from_state", classmethod(failing))
    with pytest.raises(MemoryError, match="no room"):
        knn.tune_index(Q, 0.98)
    assert knn.memory_ is memory
    assert memory.version == version
    assert memory.index_params == {}
    assert knn.index == "auto"
    assert not hasattr(knn, "tuning_")
    assert not hasattr(knn, "index_front_")
