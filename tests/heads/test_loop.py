"""The shared training loop: callbacks, stopping and the best weights."""

from __future__ import annotations

import math

from skknn.heads._loop import (
    DivergenceGuard,
    EachEpoch,
    EarlyStopping,
    Loop,
    fit_loop,
)


class _Weights:
    """A stand-in model: one number that each epoch sets."""

    def __init__(self):
        self.value = 0

    def loop(self) -> Loop:
        return Loop(snapshot=lambda: self.value, load=self._load)

    def _load(self, value):
        self.value = value


def _run(losses, scores=None, *, max_epochs=None, patience=2, guard=None):
    w = _Weights()
    loop = w.loop()

    def train_epoch(epoch):
        w.value = epoch + 1
        return {"loss": losses[epoch]}

    validate = None if scores is None else (lambda: (scores[w.value - 1],))
    callbacks = [] if guard is None else [guard]
    callbacks.append(EarlyStopping(validate, patience))
    fit_loop(
        loop, train_epoch, max_epochs=max_epochs or len(losses), callbacks=callbacks
    )
    return loop, w


def test_early_stopping_keeps_the_best_validated_epoch_and_stops_on_patience():
    loop, w = _run([1.0] * 8, scores=[0.1, 0.5, 0.4, 0.5, 0.3, 0.9, 0.9, 0.9])
    # Best at epoch 2; epochs 3 and 4 bring nothing strictly better: stop at 4.
    assert len(loop.history) == 4
    assert loop.best_epoch == 2
    assert w.value == 2
    assert [r["validation_accuracy"] for r in loop.history] == [0.1, 0.5, 0.4, 0.5]


def test_without_validation_the_last_epoch_is_the_result():
    loop, w = _run([3.0, 2.0, 2.5, 2.4])
    assert len(loop.history) == 4
    assert loop.best_epoch == 4
    assert w.value == 4
    assert loop.best_score == (-2.0,)  # the lowest loss stays remembered


def test_divergence_guard_stops_at_a_non_finite_or_runaway_loss_and_restores():
    told = []
    guard = DivergenceGuard(chance=1.0, on_diverged=lambda loop, r: told.append(r))
    loop, w = _run([0.5, 0.4, 0.3, 100.0, 0.1], guard=guard)
    # After epoch 1 the limit is max(10 * 0.5, 2 * 1.0) = 5: epoch 4 runs away.
    assert len(loop.history) == 4
    assert loop.diverged
    assert told[0]["epoch"] == 4
    assert w.value == 3
    assert loop.best_epoch == 3
    told.clear()
    loop, w = _run(
        [math.nan, 0.1], guard=DivergenceGuard(1.0, lambda *a: told.append(a))
    )
    assert len(loop.history) == 1
    assert told
    assert w.value == 1  # nothing was remembered before: the weights stay


def test_the_first_epoch_diverges_against_chance():
    guard = DivergenceGuard(chance=2.0, on_diverged=lambda *a: None)
    loop, _ = _run([19.0, 1.0], guard=guard)
    assert not loop.diverged  # below 10 x chance
    guard = DivergenceGuard(chance=2.0, on_diverged=lambda *a: None)
    loop, _ = _run([21.0, 1.0], guard=guard)
    assert loop.diverged
    assert len(loop.history) == 1


def test_each_epoch_runs_before_every_epoch_but_the_first():
    calls = []
    loop = _Weights().loop()
    fit_loop(
        loop,
        lambda epoch: calls.append(("train", epoch)) or {"loss": 1.0},
        max_epochs=3,
        callbacks=[EachEpoch(lambda: calls.append(("refresh",)))],
    )
    assert calls == [
        ("train", 0),
        ("refresh",),
        ("train", 1),
        ("refresh",),
        ("train", 2),
    ]
    assert [r["epoch"] for r in loop.history] == [1, 2, 3]
    assert all(r["seconds"] >= 0 for r in loop.history)
