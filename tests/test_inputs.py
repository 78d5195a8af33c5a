"""Inputs are never modified, and read-only inputs are accepted, by every public
method of every estimator (hypothesis draws the arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skknn import JointKNNClassifier, KNNVoter, MemoryPruner


def _estimators():
    return [
        KNNVoter(3, index="exact", preprocessing="center_l2"),
        KNNVoter(3, index="flat", metric="sqeuclidean", preprocessing=None),
        JointKNNClassifier(KNNVoter(3, index="exact"), max_epochs=2, random_state=0),
        MemoryPruner(KNNVoter(3, index="exact"), n_neighbors=2),
    ]


@st.composite
def datasets(draw):
    n = draw(st.integers(8, 30))
    d = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = st.floats(-100, 100, allow_nan=False, width=32).filter(
        lambda v: abs(v) > 1e-3
    )
    X = draw(arrays(dtype, (n, d), elements=values))
    y = np.arange(n) % 3
    Q = draw(arrays(dtype, (draw(st.integers(1, 6)), d), elements=values))
    if draw(st.booleans()):
        X = np.asfortranarray(X)
    return X, y, Q


def _frozen(a):
    a = np.array(a, copy=True, order="K")
    a.setflags(write=False)
    return a


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=datasets())
def test_every_public_method_leaves_its_inputs_untouched(data):
    X, y, Q = (_frozen(a) for a in data)
    snapshot = [a.tobytes() for a in (X, y, Q)]
    n = len(y)
    for est in _estimators():
        est.fit(X, y)
        est.partial_fit(X[: n // 2], y[: n // 2])
        for query in (est.predict, est.predict_proba, est.kneighbors, est.explain):
            query(Q)
        assert [a.tobytes() for a in (X, y, Q)] == snapshot, type(est).__name__


def test_torch_tensors_and_pandas_views_are_read_not_written():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    knn = KNNVoter(3, index="exact").fit(pd.DataFrame(X, copy=False), y)
    tensor = torch.from_numpy(X.copy())
    before = tensor.clone()
    knn.predict(tensor.numpy())  # a CPU tensor's buffer, shared with numpy
    knn.explain(tensor.numpy())
    assert torch.equal(tensor, before)  # rows were not normalised in place
    frame = pd.DataFrame(X, copy=False)
    frame_before = frame.to_numpy().copy()
    knn.predict_proba(frame)
    np.testing.assert_array_equal(frame.to_numpy(), frame_before)
    joint = JointKNNClassifier(KNNVoter(3, index="exact"), max_epochs=1)
    buffer = X.copy()
    joint.fit(buffer, y)
    buffer[:] = 0.0  # the caller reuses its buffer: the model keeps no reference
    joint.unlearn([0, 1])  # retrains from the memory's own copy
    assert np.isfinite(joint.predict_proba(X)).all()
    assert joint.score(X[2:], y[2:]) > 0.5
