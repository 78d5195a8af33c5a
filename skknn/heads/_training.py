"""Training JOINT's head (FORMULAS.md 4): the kNN-modulated cross-entropy, the
warm-up + cosine schedule, mini-batch SGD with momentum, and one-pass updates.

Everything is float32 and draws its randomness from an explicit
``torch.Generator``; torch's global seed and default dtype are never touched, and
its CPU thread count only for the duration of a training loop when asked (see
``n_threads`` in :func:`train_head`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from skknn._docstrings import fill_doc
from skknn.heads._head import Head, check_positive_int
from skknn.heads._loop import EarlyStopping, Loop, fit_loop

__all__ = [
    "DEFAULT_BASE_LR",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_EPOCHS",
    "DEFAULT_WARMUP_EPOCHS",
    "DEFAULT_WEIGHT_DECAY",
    "MODULATIONS",
    "knn_weighted_loss",
    "loss_uses_p_knn",
    "lr_at",
    "modulation_weights",
    "one_pass",
    "threads_for",
    "train_head",
]

# One setting for every input scale (the head standardises its inputs), chosen to
# match LogisticRegression(lbfgs) accuracy without a grid search: test accuracy
# 0.985 vs 0.983 on separable embedding-like data, 0.716 vs 0.639 (standardised) /
# 0.753 (unit-norm) on overlapping Gaussian classes, 0.875-0.885 vs 0.884 on 5,000
# MNIST digits. On 50,000 x 512 real embeddings with 100 classes the head trains in
# about 4 s on 2 idle cores, against 37 s for lbfgs (benchmarks/RESULTS.md).
# [NN]'s 100 epochs at batch 256 gain nothing measurable over 30 at batch 512 here
# (the linear scaling rule keeps the step comparable); weight decay 1e-3 (from
# [NN]'s grid) beat 1e-4 by 0.3-4 points on data with few samples per dimension and
# matched it on MNIST.
DEFAULT_BASE_LR = 0.1
DEFAULT_BATCH_SIZE = 512
DEFAULT_MAX_EPOCHS = 30
DEFAULT_WARMUP_EPOCHS = 2
DEFAULT_WEIGHT_DECAY = 1e-3

MODULATIONS = ("nll", "focal")

# -log(p) is clamped here, as torch's BCELoss clamps its log at -100 (FORMULAS.md 4).
_NLL_CLAMP = 100.0


def modulation_weights(
    p_knn: torch.Tensor, *, alpha: float, modulation: str = "nll", gamma: float = 2.0
) -> torch.Tensor:
    """Per-sample factors multiplying the cross-entropy in JOINT's loss.

    Parameters
    ----------
    p_knn : torch.Tensor of shape (n_samples,)
        kNN probability of each sample's true class (treated as a constant).
    alpha : float
        Strength of the "nll" modulation (ignored by "focal").
    modulation : {"nll", "focal"}, default="nll"
        ``1 + alpha * min(-log p, 100)`` or ``(1 - p) ** gamma`` (FORMULAS.md 4).
    gamma : float, default=2.0
        Focal exponent.

    Returns
    -------
    torch.Tensor of shape (n_samples,)
        Non-negative weights, finite also at ``p = 0``.
    """
    p = p_knn.detach()
    if modulation == "nll":
        # clamp_max after the log: log(0) = -inf becomes 100, never inf * 0 = NaN.
        return 1.0 + alpha * torch.clamp_max(-torch.log(p), _NLL_CLAMP)
    if modulation == "focal":
        return torch.clamp_min(1.0 - p, 0.0) ** gamma
    raise ValueError(f"modulation must be one of {MODULATIONS}. Got {modulation!r}.")


def _weighted_ce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    if weights is None:
        return F.cross_entropy(logits, targets)
    return (weights * F.cross_entropy(logits, targets, reduction="none")).mean()


def loss_uses_p_knn(*, alpha: float, modulation: str) -> bool:
    """Whether JOINT's loss depends on ``p_kNN``: ``"nll"`` with ``alpha = 0``
    multiplies every sample by exactly 1 (plain cross-entropy)."""
    return not (modulation == "nll" and alpha == 0)


def _loss_weights(
    p_knn: torch.Tensor,
    *,
    alpha: float,
    modulation: str,
    gamma: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor | None:
    # None is the plain-CE fast path: torch's fused mean is then the exact answer.
    plain = not loss_uses_p_knn(alpha=alpha, modulation=modulation)
    if plain and sample_weight is None:
        return None
    weights = modulation_weights(p_knn, alpha=alpha, modulation=modulation, gamma=gamma)
    return weights if sample_weight is None else weights * sample_weight


def knn_weighted_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    p_knn: torch.Tensor,
    *,
    alpha: float,
    modulation: str = "nll",
    gamma: float = 2.0,
) -> torch.Tensor:
    """JOINT's training loss ``L_J``, averaged over the batch (FORMULAS.md 4).

    Parameters
    ----------
    logits : torch.Tensor of shape (n_samples, n_classes)
        Head outputs.
    targets : torch.Tensor of int64 of shape (n_samples,)
        Class indices.
    p_knn : torch.Tensor of shape (n_samples,)
        Leave-one-out kNN probability of the true class; no gradient flows into it.
    alpha : float
        "nll" strength; ``alpha = 0`` is plain cross-entropy, exactly.
    modulation : {"nll", "focal"}, default="nll"
        ``(1 + alpha * min(-log p, 100)) * CE`` or ``(1 - p) ** gamma * CE``.
    gamma : float, default=2.0
        Focal exponent.

    Returns
    -------
    torch.Tensor
        Scalar mean loss.
    """
    n = logits.shape[0] if logits.ndim else -1
    if logits.ndim != 2 or targets.shape != (n,) or p_knn.shape != (n,):
        raise ValueError(
            "logits must be (n, C) and targets, p_knn (n,). Got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(p_knn.shape)}."
        )
    weights = _loss_weights(p_knn, alpha=alpha, modulation=modulation, gamma=gamma)
    return _weighted_ce(logits, targets, weights)


def lr_at(
    epoch_float: float, *, base_lr: float, warmup_epochs: float, max_epochs: float
) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine to 0.

    Parameters
    ----------
    epoch_float : float
        Epochs done so far, e.g. ``epoch + step / steps_per_epoch``.
    base_lr : float
        Peak rate, reached at the end of the warm-up (already batch-size scaled).
    warmup_epochs : float
        Length of the linear ramp from 0; 0 starts at ``base_lr``.
    max_epochs : float
        Where the cosine reaches 0.

    Returns
    -------
    float
        ``base_lr * t / warmup`` during the warm-up, then
        ``base_lr * (1 + cos(pi * (t - warmup) / (max - warmup))) / 2``; 0 from
        ``max_epochs`` on.
    """
    if epoch_float >= max_epochs:
        return 0.0
    if epoch_float < warmup_epochs:
        return base_lr * epoch_float / warmup_epochs
    progress = (epoch_float - warmup_epochs) / (max_epochs - warmup_epochs)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _make_optimizer(
    head: Head, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    # Weight decay on matrices only: decaying biases pulls the class priors
    # towards uniform, and [NN] exempts them (FORMULAS.md 4).
    decay = [p for p in head.parameters() if p.ndim > 1]
    no_decay = [p for p in head.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=momentum,
    )


def _to_device(
    X: np.ndarray,
    y: np.ndarray,
    p_knn: np.ndarray,
    sample_weight: np.ndarray | None,
    n_classes: int,
    n_features: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    p_knn = np.asarray(p_knn, dtype=np.float32)
    n = X.shape[0] if X.ndim == 2 else -1
    if X.ndim != 2 or X.shape[1] != n_features or n == 0:
        raise ValueError(
            f"X must be (n_samples, {n_features}) with n_samples >= 1. Got {X.shape}."
        )
    if y.shape != (n,) or p_knn.shape != (n,):
        raise ValueError(
            f"y and p_knn must have shape ({n},). Got {y.shape} and {p_knn.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y must hold class indices in [0, {n_classes}).")
    sw = None
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != (n,) or not sample_weight.sum() > 0:
            raise ValueError("sample_weight must be (n_samples,) with a positive sum.")
        # Mean 1, so the weights re-balance samples without changing the step size.
        sw = torch.from_numpy((sample_weight / sample_weight.mean()).astype(np.float32))
        sw = sw.to(device)
    return (
        torch.from_numpy(np.require(X, requirements="W")).to(device),
        torch.from_numpy(y.astype(np.int64)).to(device),
        torch.from_numpy(p_knn).to(device),
        sw,
    )


# Multiply-adds per SGD step below which training runs on one torch thread: at
# that size torch's threads hand work over more than they compute, and beside
# another busy process they spin against it (benchmarks/RESULTS.md, "Threads
# and load": 20,000 x 256 x 50 at batch 512 is 6.6 M per step).
ONE_THREAD_BELOW_MACS = 16_000_000


def threads_for(head: Head, batch_size: int) -> int | None:
    """Torch threads for SGD steps of ``head`` on batches of ``batch_size``: 1
    for small steps, None (torch's own count) for large ones."""
    widths = (head.n_features, *head.hidden_layer_sizes, head.n_classes)
    macs = batch_size * sum(a * b for a, b in itertools.pairwise(widths))
    return 1 if macs < ONE_THREAD_BELOW_MACS else None


@contextlib.contextmanager
def _training_threads(device: torch.device, n_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for a training loop, then restore it."""
    if n_threads is not None and (int(n_threads) != n_threads or n_threads < 1):
        raise ValueError(f"n_threads must be a positive integer. Got {n_threads!r}.")
    previous = torch.get_num_threads()
    if device.type != "cpu" or n_threads is None or n_threads == previous:
        yield
        return
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cpu_state(head: Head) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()}


@torch.inference_mode()
def _accuracy(
    head: Head, X: torch.Tensor, y: torch.Tensor, batch_size: int = 8192
) -> float:
    correct = torch.zeros((), dtype=torch.int64, device=X.device)
    for start in range(0, X.shape[0], batch_size):
        logits = head(X[start : start + batch_size])
        correct += (logits.argmax(dim=1) == y[start : start + batch_size]).sum()
    return correct.item() / X.shape[0]


def _epoch(
    head: Head,
    Xs: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor | None,
    optimizer: torch.optim.SGD,
    *,
    batch_size: int,
    generator: torch.Generator,
    lr_of_step: Callable[[int], float] | None = None,
) -> float:
    """One shuffled pass over pre-standardised inputs; returns the mean loss."""
    n = Xs.shape[0]
    # The permutation comes from the caller's CPU generator on every device, so a
    # seed fixes the batches whatever the hardware.
    perm = torch.randperm(n, generator=generator).to(Xs.device)
    total = torch.zeros((), dtype=torch.float32, device=Xs.device)
    layers = head.layers
    for step, start in enumerate(range(0, n, batch_size)):
        if lr_of_step is not None:
            lr = lr_of_step(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
        idx = perm[start : start + batch_size]
        loss = _weighted_ce(
            layers(Xs[idx]), y[idx], None if weights is None else weights[idx]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: a .item() per batch would synchronise CUDA.
        total += loss.detach() * idx.shape[0]
    return total.item() / n


def _prepared(head: Head, X, y, p_knn, sample_weight, loss: dict, device):
    """Training data on ``device``: ``(standardised X, labels, loss weights)``.

    Standardised once here instead of once per batch: the same elementwise op,
    so the logits are bit-identical to ``head(X[idx])``.
    """
    Xt, yt, pt, sw = _to_device(
        X, y, p_knn, sample_weight, head.n_classes, head.n_features, device
    )
    weights = _loss_weights(pt, **loss, sample_weight=sw)
    with torch.no_grad():
        Xs = head.standardize(Xt)
    return Xs, yt, weights


def _validation(head: Head, X_val, y_val, device) -> Callable[[], tuple[float]]:
    """The head's accuracy on validation data moved to ``device`` once."""
    Xv, yv, _, _ = _to_device(
        X_val,
        y_val,
        np.zeros(len(y_val), np.float32),
        None,
        head.n_classes,
        head.n_features,
        device,
    )

    def validate() -> tuple[float]:
        head.eval()
        return (_accuracy(head, Xv, yv),)

    return validate


@fill_doc
def train_head(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    p_knn: np.ndarray,
    *,
    alpha: float,
    modulation: str = "nll",
    gamma: float = 2.0,
    base_lr: float = DEFAULT_BASE_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    warmup_epochs: float = DEFAULT_WARMUP_EPOCHS,
    momentum: float = 0.9,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    n_iter_no_change: int | None = None,
    generator: torch.Generator,
    device: torch.device,
    verbose: bool = False,
    sample_weight: np.ndarray | None = None,
    n_threads: int | None = None,
) -> dict:
    """Train ``head`` in place with mini-batch SGD on JOINT's loss (FORMULAS.md 4).

    Parameters
    ----------
    head : Head
        From :func:`build_head`; its weights are the starting point.
    X : ndarray of shape (n_samples, n_features)
        Training inputs (converted to float32).
    y : ndarray of int of shape (n_samples,)
        Class indices in ``[0, head.n_classes)``.
    p_knn : ndarray of shape (n_samples,)
        Leave-one-out kNN probability of each sample's true class.
    %(loss_settings)s
    base_lr : float, default=DEFAULT_BASE_LR
        Learning rate per 256 samples: the rate used is ``base_lr * batch_size / 256``.
    batch_size : int, default=DEFAULT_BATCH_SIZE
        Mini-batch size (the last batch of an epoch may be smaller).
    max_epochs : int, default=DEFAULT_MAX_EPOCHS
        Epochs; the cosine schedule reaches 0 at the end of the last one.
    warmup_epochs : float, default=DEFAULT_WARMUP_EPOCHS
        Linear warm-up length, clipped to ``max_epochs``.
    momentum : float, default=0.9
        SGD momentum.
    weight_decay : float, default=DEFAULT_WEIGHT_DECAY
        L2 penalty on weight matrices; biases are never decayed.
    X_val, y_val : ndarray, default=None
        Validation data; when given, the epoch with the best validation accuracy
        (the earliest among ties) is kept.
    n_iter_no_change : int, default=None
        With validation data, stop after this many epochs without a strictly
        better accuracy; ``None`` trains all ``max_epochs``.
    generator : torch.Generator
        CPU generator for the shuffling: same seed, same result bit for bit.
    device : torch.device
        Where to train; the data are moved there once.
    verbose : bool, default=False
        Show a tqdm bar over epochs with the current loss.
    sample_weight : ndarray of shape (n_samples,), default=None
        Per-sample weights, rescaled to mean 1 (they re-balance samples, they do not
        change the learning rate).
    n_threads : int, default=None
        Torch intra-op threads during training on the CPU, restored afterwards.
        ``None`` keeps ``torch.get_num_threads()``: on an idle 2-core machine two
        threads train a 512 x 100 linear head 1.4x faster than one. On a machine
        shared with other busy processes, one thread avoids stalls on descheduled
        threads.

    Returns
    -------
    dict
        ``state_dict`` (best weights, on the CPU), ``loss_curve`` (mean training loss
        per epoch), ``val_scores`` (validation accuracy per epoch, empty without
        validation), ``best_epoch`` (0-based; the last one without validation) and
        ``n_epochs`` (epochs run).

    Notes
    -----
    On return ``head`` holds the best weights, on the CPU, in eval mode. The step
    counts per epoch are ``ceil(n_samples / batch_size)``; the learning rate is set
    every step from :func:`lr_at`.
    """
    check_positive_int(batch_size, "batch_size")
    schedule = _schedule(base_lr, batch_size, warmup_epochs, max_epochs)
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val must be given together.")
    loss_kw = {"alpha": alpha, "modulation": modulation, "gamma": gamma}
    sgd = {"lr": 0.0, "momentum": momentum, "weight_decay": weight_decay}
    head, data, opt = _start(head, (X, y, p_knn, sample_weight), loss_kw, sgd, device)
    validate = None if X_val is None else _validation(head, X_val, y_val, device)
    stopping = None if validate is None else (validate, n_iter_no_change)
    with _training_threads(device, n_threads):
        loop = _run_epochs(
            head, data, opt, schedule, batch_size, generator, stopping, verbose
        )
    head.cpu().eval()
    return _result(loop, validated=validate is not None)


def _schedule(base_lr, batch_size: int, warmup_epochs, max_epochs: int) -> dict:
    """:func:`lr_at`'s settings for :func:`train_head` (``max_epochs`` checked)."""
    check_positive_int(max_epochs, "max_epochs")
    return {
        "base_lr": base_lr * batch_size / 256,
        "warmup_epochs": min(float(warmup_epochs), float(max_epochs)),
        "max_epochs": max_epochs,
    }


def _start(head: Head, data: tuple, loss: dict, sgd: dict, device):
    """``head`` moved to ``device``, its training data ``(standardised X,
    labels, loss weights)`` there, and its SGD optimizer."""
    head = head.to(device)
    X, y, p_knn, sample_weight = data
    prepared = _prepared(head, X, y, p_knn, sample_weight, loss, device)
    return head, prepared, _make_optimizer(head, **sgd)


def _result(loop: Loop, *, validated: bool) -> dict:
    """:func:`train_head`'s return value from the finished loop."""
    return {
        "state_dict": loop.best_state,
        "loss_curve": [r["loss"] for r in loop.history],
        "val_scores": [r["validation_accuracy"] for r in loop.history if validated],
        "best_epoch": loop.best_epoch - 1,
        "n_epochs": len(loop.history),
    }


def _run_epochs(
    head: Head, data, optimizer, schedule, batch_size, generator, stopping, verbose
) -> Loop:
    """:func:`train_head`'s epochs, run by the shared loop: the learning rate
    set every step from :func:`lr_at`; with ``stopping = (validate,
    n_iter_no_change)`` the best validated epoch is kept, else the last one."""
    Xs, yt, weights = data
    steps = math.ceil(Xs.shape[0] / batch_size)

    def train_epoch(epoch: int) -> dict:
        head.train()
        loss = _epoch(
            head,
            Xs,
            yt,
            weights,
            optimizer,
            batch_size=batch_size,
            generator=generator,
            lr_of_step=lambda step: lr_at(epoch + step / steps, **schedule),
        )
        return {"loss": loss}

    callbacks = [] if stopping is None else [EarlyStopping(*stopping)]
    loop = Loop(snapshot=lambda: _cpu_state(head), load=head.load_state_dict)
    fit_loop(
        loop,
        train_epoch,
        max_epochs=schedule["max_epochs"],
        callbacks=callbacks,
        progress=verbose,
        desc="head",
    )
    if not callbacks:  # no validation: the last epoch is the result
        loop.remember(len(loop.history), ())
    return loop


@fill_doc
def one_pass(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    p_knn: np.ndarray,
    *,
    alpha: float,
    modulation: str,
    gamma: float,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device,
    sample_weight: np.ndarray | None = None,
    n_threads: int | None = None,
) -> float:
    """One shuffled epoch over ``X`` at a constant learning rate (for ``partial_fit``).

    Parameters
    ----------
    head : Head
        Updated in place; left on the CPU in eval mode.
    X, y, p_knn, sample_weight
        As in :func:`train_head`.
    %(loss_settings)s
    lr : float
        Learning rate actually used (no batch-size scaling, no schedule).
    batch_size : int
        Mini-batch size.
    momentum, weight_decay : float
        SGD settings; the momentum buffer starts from zero on every call.
    generator : torch.Generator
        CPU generator for the shuffling.
    device : torch.device
        Where to compute.
    n_threads : int, default=None
        As in :func:`train_head`.

    Returns
    -------
    float
        Mean training loss over the pass.
    """
    check_positive_int(batch_size, "batch_size")
    loss_kw = {"alpha": alpha, "modulation": modulation, "gamma": gamma}
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    head, data, optimizer = _start(
        head, (X, y, p_knn, sample_weight), loss_kw, sgd, device
    )
    head.train()
    try:
        with _training_threads(device, n_threads):
            loss = _epoch(
                head, *data, optimizer, batch_size=batch_size, generator=generator
            )
    finally:
        head.cpu().eval()
    return loss


def stratified_split(
    codes: np.ndarray, fraction: float, gen: torch.Generator, fix: str
):
    """``(train, val)`` row indices: a held-out ``fraction`` of every class,
    drawn from the fit's generator, each class keeping a training sample.
    ``fix`` says what to do when nothing is held out."""
    perm = torch.randperm(len(codes), generator=gen).numpy()
    val = []
    for c in np.unique(codes):
        members = perm[codes[perm] == c]
        n_val = round(fraction * len(members))
        val.extend(members[: min(n_val, len(members) - 1)])
    if not val:
        raise ValueError(f"validation_fraction={fraction} holds out no sample; {fix}.")
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(codes)), val), val
