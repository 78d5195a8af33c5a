"""The memory's whole life cycle, driven by hypothesis against a plain model.

A :class:`RuleBasedStateMachine` fits, adds, unlearns, saves, loads, reopens (in
this process and in a new one) and predicts, in any order, on a memory in RAM
and on disk, in float32 and float16; after every step the memory must hold
exactly what a plain dict of ``id -> (vector, label)`` says, and answer
``kneighbors`` as brute force over that dict does.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import skknn
from skknn import KNNVoter

D = 6
K = 3
QUERIES = np.random.default_rng(99).normal(size=(7, D)).astype(np.float32)

_NEW_PROCESS = textwrap.dedent(
    """
    import sys, numpy as np, skknn
    folder, rows = sys.argv[1], np.load(sys.argv[2])
    knn = skknn.load(folder)
    knn.partial_fit(rows["X"], rows["y"], sample_ids=rows["ids"])
    """
)


def rows(draw_seed: int, n: int):
    gen = np.random.default_rng(draw_seed)
    X = gen.normal(size=(n, D)).astype(np.float32)
    y = gen.integers(0, 3, n)
    return X, y


class Lifecycle(RuleBasedStateMachine):
    """Parametrised by the subclasses below: ``disk`` and ``dtype``."""

    disk = False
    dtype = "float32"
    index = "exact"

    def __init__(self):
        super().__init__()
        self.tmp = None
        self.knn = None
        self.model: dict[int, tuple[np.ndarray, int]] = {}
        self.next_id = 0
        self.saves = 0

    # -- helpers -------------------------------------------------------------
    def _params(self):
        path = os.path.join(self.tmp, "store") if self.disk else None
        return dict(
            n_neighbors=K,
            index=self.index,
            storage_dtype=self.dtype,
            storage_path=path,
        )

    def _take(self, seed: int, n: int):
        X, y = rows(seed, n)
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        return X, y, ids

    def _remember(self, X, y, ids):
        for x, label, i in zip(X, y, ids):
            self.model[int(i)] = (x, int(label))

    def _drop(self):
        """Let go of the live estimator (its folder's lock goes with it)."""
        self.knn = None
        gc.collect()

    # -- rules ---------------------------------------------------------------
    @initialize(seed=st.integers(0, 10**6), n=st.integers(4, 30))
    def fit(self, seed, n):
        import tempfile

        self.tmp = tempfile.mkdtemp(prefix="skknn-life-")
        X, y, ids = self._take(seed, n)
        self.knn = KNNVoter(**self._params()).fit(X, y, sample_ids=ids)
        self.model = {}
        self._remember(X, y, ids)

    @rule(seed=st.integers(0, 10**6), n=st.integers(1, 12))
    def partial_fit(self, seed, n):
        X, y, ids = self._take(seed, n)
        self.knn.partial_fit(X, y, sample_ids=ids)
        self._remember(X, y, ids)

    @precondition(lambda self: len(self.model) > K + 1)
    @rule(data=st.data(), retrain=st.booleans())
    def unlearn(self, data, retrain):
        present = sorted(self.model)
        count = data.draw(st.integers(1, min(5, len(present) - K - 1)))
        gone = data.draw(
            st.lists(
                st.sampled_from(present), min_size=count, max_size=count, unique=True
            )
        )
        self.knn.unlearn(gone, retrain_index=retrain)
        for i in gone:
            del self.model[i]

    @rule()
    def save_and_load(self):
        self.saves += 1
        path = os.path.join(self.tmp, f"m{self.saves}.skknn")
        self.knn.save(path)
        if self.disk:
            # the file is a snapshot; the folder stays the live memory
            loaded = skknn.load(path)
            assert loaded.memory_.storage_folder is None
            self._check(loaded)
        else:
            self.knn = skknn.load(path)

    @precondition(lambda self: self.disk)
    @rule()
    def reopen(self):
        self._drop()
        self.knn = skknn.load(os.path.join(self.tmp, "store"))

    @precondition(lambda self: self.disk)
    @rule(seed=st.integers(0, 10**6), n=st.integers(1, 5))
    def edit_in_a_new_process(self, seed, n):
        X, y, ids = self._take(seed, n)
        self._drop()
        batch = os.path.join(self.tmp, "rows.npz")
        np.savez(batch, X=X, y=y, ids=ids)
        folder = os.path.join(self.tmp, "store")
        subprocess.run(
            [sys.executable, "-c", _NEW_PROCESS, folder, batch],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._remember(X, y, ids)
        self.knn = skknn.load(folder)

    # -- what must hold after every step -------------------------------------------
    @invariant()
    def holds_what_the_model_says(self):
        if self.knn is not None:
            self._check(self.knn)

    def _check(self, knn):
        ids = np.array(sorted(self.model), dtype=np.int64)
        np.testing.assert_array_equal(np.sort(knn.sample_ids_), ids)
        got = knn.memory_.get(ids)
        want_X = np.stack([self.model[i][0] for i in ids])
        want_y = np.array([self.model[i][1] for i in ids])
        np.testing.assert_array_equal(got.labels, want_y)
        tol = 2e-3 if self.dtype == "float16" else 1e-6
        np.testing.assert_allclose(got.X, want_X, rtol=tol, atol=tol)
        # brute force over the stored vectors: the unit vectors as the memory
        # holds them (float16 rounding of its float32 normalisation may differ
        # by one float16 step from numpy's; the raw check above bounds them)
        unit = knn.memory_.get(ids, prepared=True).X.astype(np.float64)
        np.testing.assert_allclose(
            unit, want_X / np.linalg.norm(want_X, axis=1, keepdims=True), atol=tol
        )
        q = QUERIES / np.linalg.norm(QUERIES, axis=1, keepdims=True)
        dist = 1.0 - q.astype(np.float64) @ unit.T
        k = min(K, len(ids))
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        d_got, i_got = knn.kneighbors(QUERIES, n_neighbors=k)
        np.testing.assert_allclose(d_got, np.take_along_axis(dist, order, 1), atol=1e-5)
        # ids may swap only where distances tie within float32 rounding
        mismatch = i_got != ids[order]
        assert np.all(
            np.abs(d_got - np.take_along_axis(dist, order, 1))[mismatch] < 1e-5
        )

    def teardown(self):
        self._drop()


SETTINGS = settings(
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class RamFloat32(Lifecycle):
    pass


class RamFloat16(Lifecycle):
    dtype = "float16"


class DiskFloat32(Lifecycle):
    disk = True


class DiskFloat16(Lifecycle):
    disk = True
    dtype = "float16"


class DiskFlat(Lifecycle):
    disk = True
    index = "flat"


MACHINES = [RamFloat32, RamFloat16, DiskFloat32, DiskFloat16, DiskFlat]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_memory_life_cycle(machine):
    if machine.index == "flat":
        pytest.importorskip("faiss")
    run_state_machine_as_test(machine, settings=SETTINGS)
