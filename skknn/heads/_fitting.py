"""JOINT's head fitted for the estimator: a fresh head (L-BFGS or SGD, with an
optional validation split) and the rehearsal that teaches it new samples.

``skknn/joint.py`` validates, encodes labels and keeps the memory and the
training rows; it hands over arrays, a ``torch.Generator`` and the
:class:`HeadSettings` read from its parameters. Torch and NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from skknn.heads import _head, _training
from skknn.heads._lbfgs import fit_linear_head
from skknn.heads._new_classes import imprint_new_rows

__all__ = [
    "PARTIAL_FIT_LR_FACTOR",
    "PARTIAL_FIT_PASSES",
    "REPLAY_PER_NEW",
    "HeadSettings",
    "fit_new_head",
    "grow_head",
    "rehearse",
    "replay_positions",
]

# partial_fit's single pass runs at this fraction of the peak learning rate: new
# samples should move a trained head, not undo it.
PARTIAL_FIT_LR_FACTOR = 0.1
# partial_fit rehearses this many memory samples per new one, for this many passes.
REPLAY_PER_NEW = 4
PARTIAL_FIT_PASSES = 3
# An epoch has at least this many SGD steps (see HeadSettings.batch_size_for).
MIN_STEPS = 20


@dataclass(frozen=True)
class HeadSettings:
    """The estimator's parameters that shape its head and its training."""

    alpha: float
    modulation: str
    gamma: float
    hidden_layer_sizes: tuple
    base_lr: float
    batch_size: int
    max_epochs: int
    warmup_epochs: float
    momentum: float
    weight_decay: float
    validation_fraction: float | None
    n_iter_no_change: int | None
    solver: str
    max_iter: int
    n_threads: int | None
    verbose: bool

    @classmethod
    def of(cls, est) -> HeadSettings:
        """The settings of an estimator holding these parameters."""
        return cls(**{f.name: getattr(est, f.name) for f in fields(cls)})

    @property
    def loss(self) -> dict:
        return {
            "alpha": float(self.alpha),
            "modulation": self.modulation,
            "gamma": float(self.gamma),
        }

    def uses_p_knn(self) -> bool:
        return _training.loss_uses_p_knn(alpha=self.alpha, modulation=self.modulation)

    def solver_for(self, device: torch.device) -> str:
        """'auto': L-BFGS for a linear head on the CPU without a validation split
        (full-batch, converges in tens of passes); mini-batch SGD otherwise."""
        if self.solver != "auto":
            return self.solver
        simple = not self.hidden_layer_sizes and not self.validation_fraction
        return "lbfgs" if simple and device.type == "cpu" else "sgd"

    def batch_size_for(self, n_train: int) -> int:
        """``batch_size``, capped so an epoch has at least ``MIN_STEPS`` steps:
        a few hundred samples must not train in a handful of steps (the learning
        rate follows the batch size, so the step size stays comparable)."""
        return int(max(1, min(self.batch_size, n_train // MIN_STEPS)))

    def threads_for(self, head: _head.Head, n_train: int) -> int | None:
        if self.n_threads is not None:
            return self.n_threads
        return _training.threads_for(head, self.batch_size_for(n_train))


def fit_new_head(
    X: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    p_true: np.ndarray | None,
    sample_weight: np.ndarray | None,
    *,
    settings: HeadSettings,
    device: torch.device,
    generator: torch.Generator,
    max_epochs: int,
) -> tuple[_head.Head, dict]:
    """A head built and trained on ``(X, codes)``: ``(head, result)``.

    A ``validation_fraction`` is held out of every class first (for SGD's early
    stopping); the head's input standardisation comes from the training rows.
    ``p_true`` is each sample's leave-one-out ``p_kNN`` (None: the loss does not
    use it). ``result`` holds the loss curve, validation scores, best epoch and
    epochs run; the head is on the CPU, in eval mode.
    """
    train = np.arange(len(codes))
    X_val = y_val = None
    if settings.validation_fraction:
        train, val = _training.stratified_split(
            codes,
            settings.validation_fraction,
            generator,
            "use a larger fraction or None",
        )
        X_val, y_val = X[val], codes[val]
    x_mean, x_scale = _head.input_stats(X[train])
    head = _head.build_head(
        X.shape[1],
        n_classes,
        tuple(settings.hidden_layer_sizes),
        generator=generator,
        x_mean=x_mean,
        x_scale=x_scale,
    )
    p_train = np.ones(len(train), np.float32) if p_true is None else p_true[train]
    sw_train = None if sample_weight is None else sample_weight[train]
    result = _train_new_head(
        head,
        X[train],
        codes[train],
        p_train,
        sw_train,
        (X_val, y_val),
        settings=settings,
        device=device,
        generator=generator,
        max_epochs=max_epochs,
    )
    return head.cpu().eval(), result


def _train_new_head(
    head, X, codes, p_train, sw_train, val, *, settings, device, generator, max_epochs
) -> dict:
    """Train a fresh ``head`` on ``(X, codes)``: L-BFGS for a linear head on
    the CPU, else mini-batch SGD (with early stopping on ``val``)."""
    X_val, y_val = val
    if settings.solver_for(device) == "lbfgs":
        weights = _training.modulation_weights(
            torch.from_numpy(p_train), **settings.loss
        ).numpy()
        fitted = fit_linear_head(
            head,
            X,
            codes,
            weights if sw_train is None else weights * sw_train,
            weight_decay=settings.weight_decay,
            max_iter=settings.max_iter,
        )
        return {
            "loss_curve": [fitted["loss"]],
            "val_scores": [],
            "best_epoch": fitted["n_iter"],
            "n_epochs": fitted["n_iter"],
        }
    result = _training.train_head(
        head,
        X,
        codes,
        p_train,
        **settings.loss,
        base_lr=settings.base_lr,
        batch_size=settings.batch_size_for(len(codes)),
        max_epochs=max_epochs,
        warmup_epochs=min(settings.warmup_epochs, max_epochs),
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        X_val=X_val,
        y_val=y_val,
        n_iter_no_change=settings.n_iter_no_change,
        generator=generator,
        device=device,
        verbose=settings.verbose,
        sample_weight=sw_train,
        n_threads=settings.threads_for(head, len(codes)),
    )
    head.load_state_dict(result["state_dict"])
    return result


def grow_head(
    head: _head.Head, old: np.ndarray, new: np.ndarray, generator_state: torch.Tensor
) -> tuple[_head.Head, np.ndarray, torch.Tensor]:
    """``head`` with an output per class of ``new`` (sorted labels, a superset
    of ``old``): ``(head, rows added, generator state)``; unchanged when the
    classes are."""
    if new.shape == old.shape and np.array_equal(new, old):
        return head, np.empty(0, dtype=np.int64), generator_state
    gen = torch.Generator()
    gen.set_state(generator_state)
    moved = np.searchsorted(new, old)
    head = _head.expand_outputs(head, moved, len(new), generator=gen)
    return head, np.setdiff1d(np.arange(len(new)), moved), gen.get_state()


def replay_positions(n_old: int, n_new: int, generator: torch.Generator) -> np.ndarray:
    """Positions of the old training samples a rehearsal revisits: a random
    ``REPLAY_PER_NEW`` per new sample (all of them, when fewer)."""
    n_replay = min(n_old, REPLAY_PER_NEW * n_new)
    return torch.randperm(n_old, generator=generator)[:n_replay].numpy()


def rehearse(
    head: _head.Head,
    added: np.ndarray,
    new: tuple,
    old: tuple,
    *,
    settings: HeadSettings,
    n_train: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """Teach ``head`` new samples beside a rehearsal sample of old ones.

    ``new`` and ``old`` are ``(X, codes, p_true, sample_weight)``; ``added`` the
    head's rows of classes seen for the first time (imprinted first, see
    :func:`~skknn.heads._new_classes.imprint_new_rows`). New samples alone would
    drag every class's row towards them, and one pass over few samples teaches a
    new class little: ``PARTIAL_FIT_PASSES`` passes over both, at
    ``PARTIAL_FIT_LR_FACTOR`` of the peak learning rate. Returns the last pass's
    mean loss.
    """
    sw_new = new[3] if new[3] is not None else np.ones(len(new[1]), np.float32)
    X_mix, c_mix, p_mix = (np.concatenate([a, b]) for a, b in zip(new[:3], old[:3]))
    w_mix = np.concatenate([np.asarray(sw_new, np.float32), old[3]])
    if np.all(w_mix == 1.0):
        w_mix = None  # torch's fused mean: the unweighted loss, exactly
    imprint_new_rows(
        head, added, X_mix, c_mix, w_mix, weight_decay=settings.weight_decay
    )
    batch_size = settings.batch_size_for(n_train)
    lr = settings.base_lr * batch_size / 256 * PARTIAL_FIT_LR_FACTOR
    for _ in range(PARTIAL_FIT_PASSES):
        loss = _training.one_pass(
            head,
            X_mix,
            c_mix,
            p_mix,
            **settings.loss,
            lr=lr,
            batch_size=batch_size,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            generator=generator,
            device=device,
            sample_weight=w_mix,
            n_threads=settings.threads_for(head, n_train),
        )
    return loss
