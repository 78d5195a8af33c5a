"""One training loop for both JOINT estimators: epochs, callbacks, the best weights.

As skorch's ``fit_loop``: the caller gives one epoch's training step, callbacks
decide what happens around it (re-embed the memory, validate and stop early, stop
a diverging run), and the :class:`Loop` keeps the history and the best weights.
:func:`skknn.heads._training.train_head` (JointKNNClassifier's head) and
FineTunedJointClassifier's fine-tuning both run here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Loop:
    """A training run's history and its best weights.

    ``snapshot()`` returns a copy of the weights, ``load(copy)`` puts one back;
    ``best_epoch`` counts the epochs done when the best weights were taken (0:
    before the first).
    """

    snapshot: Callable[[], object]
    load: Callable[[object], None]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: tuple = ()
    best_state: object = None
    stop: bool = False
    diverged: bool = False

    def remember(self, epochs_done: int, score: tuple) -> None:
        self.best_epoch, self.best_score = epochs_done, score
        self.best_state = self.snapshot()

    def restore(self) -> None:
        """Back to the best weights remembered (the current ones if none were)."""
        if self.best_state is not None:
            self.load(self.best_state)


class Callback:
    """Hooks around each epoch; a hook stops the run by setting ``loop.stop``."""

    def on_epoch_begin(self, loop: Loop, epoch: int) -> None:
        pass

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        pass

    def on_train_end(self, loop: Loop) -> None:
        pass


def fit_loop(
    loop: Loop,
    train_epoch: Callable[[int], dict],
    *,
    max_epochs: int,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    desc: str = "train",
) -> Loop:
    """Run ``train_epoch(epoch)`` (it returns the epoch's record: ``loss`` and
    anything else) up to ``max_epochs`` times, the callbacks around each epoch.

    Each record gains ``epoch`` (1-based) and ``seconds`` (the epoch with its
    callbacks) and is appended to ``loop.history``.
    """
    from tqdm.auto import tqdm

    bar = tqdm(range(max_epochs), disable=not progress, desc=desc, unit="epoch")
    with bar:
        for epoch in bar:
            start = time.perf_counter()
            for callback in callbacks:
                callback.on_epoch_begin(loop, epoch)
            record = {"epoch": epoch + 1, **train_epoch(epoch)}
            loop.history.append(record)
            for callback in callbacks:
                callback.on_epoch_end(loop, record)
                if loop.stop:
                    break
            record["seconds"] = time.perf_counter() - start
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in _SHOWN})
            if loop.stop:
                break
    for callback in callbacks:
        callback.on_train_end(loop)
    return loop


_SHOWN = ("loss", "train_accuracy", "validation_accuracy")


class EarlyStopping(Callback):
    """Keep the best epoch by ``validate()`` and stop after ``n_iter_no_change``
    epochs without improvement (sklearn's MLP semantics); restore it at the end.

    ``validate()`` returns a score tuple (larger is better; its first entry is
    recorded as ``validation_accuracy``); ``improves(score, best)`` decides,
    strict ``>`` by default. Without ``validate``, the score is ``-loss``, the
    best weights are still remembered (a divergence guard restores them) but the
    run neither stops early nor goes back: the last epoch is the result.
    """

    def __init__(
        self,
        validate: Callable[[], tuple] | None,
        n_iter_no_change: int | None,
        improves: Callable[[tuple, tuple], bool] | None = None,
    ):
        self.validate = validate
        self.n_iter_no_change = n_iter_no_change
        self.improves = improves or (lambda score, best: not best or score > best)

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        if self.validate is None:
            score = (-record["loss"],)
        else:
            score = self.validate()
            record["validation_accuracy"] = score[0]
        done = record["epoch"]
        if self.improves(score, loop.best_score):
            loop.remember(done, score)
        elif (
            self.validate is not None
            and self.n_iter_no_change is not None
            and done - loop.best_epoch >= self.n_iter_no_change
        ):
            loop.stop = True

    def on_train_end(self, loop: Loop) -> None:
        if loop.diverged:  # the guard has restored the best weights already
            return
        if self.validate is not None:
            loop.restore()
        else:
            loop.best_epoch = len(loop.history)


class DivergenceGuard(Callback):
    """Stop a run whose loss is non-finite or runs away, back to the best weights.

    The first epoch has diverged at ``factor`` times ``chance`` (a uniform
    guess's loss), a later one at ``factor`` times the first epoch's loss and
    above twice ``chance``: worse than guessing, and far worse than where
    training started. ``on_diverged(loop, record)`` is told (to warn) after the
    best weights are back.
    """

    def __init__(
        self,
        chance: float,
        on_diverged: Callable[[Loop, dict], None],
        factor: float = 10.0,
    ):
        self.chance, self.factor, self.on_diverged = chance, factor, on_diverged
        self.limit = factor * chance

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        loss = record["loss"]
        if not math.isfinite(loss) or loss > self.limit:
            loop.stop = loop.diverged = True
            loop.restore()
            self.on_diverged(loop, record)
            return
        if record["epoch"] == 1:
            self.limit = max(self.factor * loss, 2 * self.chance)


class EachEpoch(Callback):
    """Call ``action()`` before every epoch but the first (a memory refresh)."""

    def __init__(self, action: Callable[[], None]):
        self.action = action

    def on_epoch_begin(self, loop: Loop, epoch: int) -> None:
        if epoch > 0:
            self.action()
