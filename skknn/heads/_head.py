"""The parametric head of JOINT (FORMULAS.md 4): a linear layer or a small MLP.

Building, initialising, growing (new classes), restoring and running the head;
training lives in :mod:`skknn.heads._training`. Torch code only; the estimator
(``skknn/joint.py``) validates parameters, encodes labels and resolves the device.
Everything here is float32 unless asked otherwise and draws its randomness from an
explicit ``torch.Generator``; torch's global seed and default dtype are never
touched.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from skknn._docstrings import fill_doc

# A column whose deviation is within this many units in the last place of its
# dtype (at its mean's magnitude) is rounding noise around a constant.
_ULPS_CONSTANT = 4

__all__ = [
    "Head",
    "add_output_rows",
    "build_head",
    "column_stats",
    "expand_outputs",
    "head_from_bytes",
    "head_from_state_dict",
    "head_to_bytes",
    "input_stats",
    "predict_logits",
    "predict_proba",
]


def _zero_linear(fan_in: int, fan_out: int) -> nn.Linear:
    """``nn.Linear`` with zero parameters, built without drawing random numbers.

    ``nn.Linear(...)`` initialises itself from torch's global generator; skipping
    that keeps the user's RNG stream untouched (the real initialisation comes from
    the caller's generator in :func:`build_head`).
    """
    layer = nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


class Head(nn.Module):
    """Fixed input standardisation followed by ``Linear`` or ``Linear-ReLU-...-Linear``.

    The standardisation ``(x - x_mean) / x_scale`` is held in non-trainable buffers:
    it is an affine re-parametrisation of the first layer, so a zero-hidden-layer
    head is still a linear classifier, while one learning rate suits inputs of any
    scale (standardised features or unit-norm embeddings alike).

    Built with zero weights; use :func:`build_head` for an initialised head or
    :func:`head_from_state_dict` for a saved one.

    Parameters
    ----------
    n_features : int
        Input width ``D``.
    n_classes : int
        Output width ``C``.
    hidden_layer_sizes : tuple of int, default=()
        Widths of the hidden layers; empty gives ``Linear(D, C)``.

    Attributes
    ----------
    layers : torch.nn.Sequential
        The trainable layers; the last one is ``Linear(., n_classes)``.
    x_mean, x_scale : torch.Tensor of shape (n_features,)
        Standardisation buffers (zeros and ones when no statistics were given).
    """

    def __init__(
        self, n_features: int, n_classes: int, hidden_layer_sizes: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        # Always registered, so every head has the same state_dict keys whether or
        # not statistics were given; (x - 0) / 1 is exact in float32.
        self.register_buffer("x_mean", torch.zeros(self.n_features))
        self.register_buffer("x_scale", torch.ones(self.n_features))
        widths = (self.n_features, *self.hidden_layer_sizes)
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [_zero_linear(fan_in, fan_out), nn.ReLU()]
        layers.append(_zero_linear(widths[-1], self.n_classes))
        self.layers = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Linear:
        """The final ``Linear(., n_classes)`` layer."""
        return self.layers[-1]

    @fill_doc
    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the fixed input standardisation.

        %(x_raw)s

        Returns
        -------
        torch.Tensor of shape (n_samples, n_features)
            ``(x - x_mean) / x_scale``.
        """
        return (x - self.x_mean) / self.x_scale

    @fill_doc
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw inputs.

        %(x_raw)s

        Returns
        -------
        torch.Tensor of shape (n_samples, n_classes)
            Unnormalised class scores.
        """
        return self.layers(self.standardize(x))


def check_positive_int(value: int, name: str) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer. Got {value!r} instead.")


def _prior_bias(prior_pi: float) -> float:
    if not 0.0 < prior_pi < 1.0:
        raise ValueError(f"prior_pi must be in (0, 1). Got {prior_pi!r} instead.")
    return -math.log((1.0 - prior_pi) / prior_pi)


def _init_linear(
    layer: nn.Linear, *, generator: torch.Generator, bias: float = 0.0
) -> None:
    # fan_in / ReLU gain is [NN]'s Kaiming-normal; drawing from the caller's
    # generator keeps construction reproducible without the global RNG.
    with torch.no_grad():
        nn.init.kaiming_normal_(
            layer.weight, mode="fan_in", nonlinearity="relu", generator=generator
        )
        layer.bias.fill_(bias)


def column_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and variance, and which columns count as constant.

    The statistics are :class:`~sklearn.preprocessing.StandardScaler`'s (float64
    accumulators). A column is constant by StandardScaler's rule (its variance
    within the rounding bound of the two-pass algorithm, Chan, Golub and LeVeque)
    or when its deviation is within ``_ULPS_CONSTANT`` units in the last place of
    ``X``'s dtype at the column's magnitude: float32 rounding noise around a
    constant is not a feature, and standardising it would blow the noise up to
    unit variance.

    Returns
    -------
    mean, var : ndarray of shape (n_features,), float64
    constant : ndarray of shape (n_features,), bool
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-d array. Got shape {X.shape}.")
    scaler = StandardScaler().fit(X)
    mean, var, n = scaler.mean_, scaler.var_, X.shape[0]
    eps64 = np.finfo(np.float64).eps
    constant = var <= n * eps64 * var + (n * mean * eps64) ** 2
    dtype = X.dtype if X.dtype.kind == "f" else np.dtype(np.float64)
    ulp = _ULPS_CONSTANT * np.finfo(dtype).eps * np.abs(mean)
    constant |= np.sqrt(var) <= ulp
    return mean, var, constant


def input_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale for :func:`build_head`'s standardisation.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Training inputs.

    Returns
    -------
    x_mean : ndarray of shape (n_features,), float32
        Column means.
    x_scale : ndarray of shape (n_features,), float32
        Column standard deviations; columns constant by :func:`column_stats`'
        rule get 1, so that they stay finite and noise in them stays small.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.1, 1.0], [0.1, 5.0]], dtype=np.float32)
    >>> input_stats(X)[1].tolist()  # the constant column keeps scale 1
    [1.0, 2.0]
    """
    mean, var, constant = column_stats(X)
    scale = np.where(constant, 1.0, np.sqrt(var))
    return mean.astype(np.float32), scale.astype(np.float32)


def build_head(
    n_features: int,
    n_classes: int,
    hidden_layer_sizes: tuple[int, ...] = (),
    *,
    generator: torch.Generator,
    prior_pi: float = 0.01,
    x_mean: np.ndarray | None = None,
    x_scale: np.ndarray | None = None,
) -> Head:
    """A freshly initialised head, on the CPU, in eval mode.

    Parameters
    ----------
    n_features : int
        Input width ``D``.
    n_classes : int
        Number of outputs ``C``.
    hidden_layer_sizes : tuple of int, default=()
        Hidden widths; ``()`` gives ``Linear(D, C)``, otherwise
        ``Linear -> ReLU -> ... -> Linear(., C)``.
    generator : torch.Generator
        CPU generator all weights are drawn from.
    prior_pi : float, default=0.01
        Output bias is ``-log((1 - pi) / pi)`` (FORMULAS.md 4).
    x_mean, x_scale : ndarray of shape (n_features,), default=None
        Fixed input standardisation ``(x - x_mean) / x_scale`` (see
        :func:`input_stats`); ``None`` means 0 and 1.

    Returns
    -------
    Head
        Weights Kaiming-normal, hidden biases 0, output bias from ``prior_pi``.

    Notes
    -----
    The standardisation is what lets one default learning rate fit standardised and
    unit-norm embeddings alike; the estimator should pass ``input_stats(X)``.
    """
    check_positive_int(n_features, "n_features")
    check_positive_int(n_classes, "n_classes")
    for h in hidden_layer_sizes:
        check_positive_int(h, "Each hidden layer size")
    bias = _prior_bias(prior_pi)
    head = Head(n_features, n_classes, hidden_layer_sizes)
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        _init_linear(layer, generator=generator)
    _init_linear(linears[-1], generator=generator, bias=bias)
    for name, value in (("x_mean", x_mean), ("x_scale", x_scale)):
        if value is None:
            continue
        value = np.asarray(value, dtype=np.float32)
        if value.shape != (head.n_features,):
            raise ValueError(
                f"{name} must have shape ({head.n_features},). Got {value.shape}."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite.")
        if name == "x_scale" and np.any(value <= 0):
            raise ValueError("x_scale must be > 0 everywhere.")
        getattr(head, name).copy_(torch.from_numpy(value))
    return head.eval()


def head_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Head:
    """Rebuild a :class:`Head` of the right shape from its ``state_dict`` and load it.

    Lets a saved head be restored from tensors alone (safetensors, or ``torch.load``
    with ``weights_only=True``), without storing its architecture separately.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
        As returned by ``Head.state_dict()`` or :func:`train_head`.

    Returns
    -------
    Head
        On the CPU, in eval mode.
    """
    weights = sorted(
        (int(key.split(".")[1]), tensor)
        for key, tensor in state_dict.items()
        if key.startswith("layers.") and key.endswith(".weight")
    )
    if not weights or "x_mean" not in state_dict:
        raise ValueError("state_dict does not come from a skknn Head.")
    hidden = tuple(int(w.shape[0]) for _, w in weights[:-1])
    head = Head(int(weights[0][1].shape[1]), int(weights[-1][1].shape[0]), hidden)
    head.load_state_dict(state_dict)
    return head.eval()


@fill_doc
def expand_outputs(
    head: Head,
    new_index_of_old: np.ndarray,
    n_total: int,
    *,
    generator: torch.Generator,
    prior_pi: float = 0.01,
) -> Head:
    """A copy of ``head`` with ``n_total`` outputs; old row ``i`` moves to
    ``new_index_of_old[i]``.

    Used when ``partial_fit`` meets new labels: ``classes_`` is re-sorted, the old
    classes' rows keep their exact weights at their new positions and the new rows are
    initialised as in :func:`build_head`. Hidden layers and standardisation are kept.

    Parameters
    ----------
    head : Head
        The head to expand (left unchanged).
    new_index_of_old : ndarray of int of shape (head.n_classes,)
        Distinct target rows in ``[0, n_total)``.
    n_total : int
        Number of outputs of the new head.
    %(new_rows)s

    Returns
    -------
    Head
        A new head on the CPU, in eval mode.
    """
    index = np.asarray(new_index_of_old)
    if index.shape != (head.n_classes,) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"new_index_of_old must be {head.n_classes} integers, one per existing "
            f"output. Got shape {index.shape} and dtype {index.dtype}."
        )
    if index.size and (index.min() < 0 or index.max() >= n_total):
        raise ValueError(f"new_index_of_old must lie in [0, {n_total}).")
    if np.unique(index).size != index.size:
        raise ValueError("new_index_of_old must not map two outputs to the same row.")
    new = copy.deepcopy(head).cpu()
    old_out = new.output_layer
    out = _zero_linear(old_out.in_features, int(n_total))
    _init_linear(out, generator=generator, bias=_prior_bias(prior_pi))
    with torch.no_grad():
        rows = torch.from_numpy(index.astype(np.int64))
        out.weight[rows] = old_out.weight.detach()
        out.bias[rows] = old_out.bias.detach()
    new.layers[-1] = out
    new.n_classes = int(n_total)
    return new.eval()


@fill_doc
def add_output_rows(
    head: Head, n_new: int, *, generator: torch.Generator, prior_pi: float = 0.01
) -> Head:
    """A copy of ``head`` with ``n_new`` freshly initialised outputs appended.

    Parameters
    ----------
    head : Head
        The head to expand (left unchanged).
    n_new : int
        Number of outputs to add at the end.
    %(new_rows)s

    Returns
    -------
    Head
        Outputs ``0..C-1`` identical to ``head``'s, then ``n_new`` new ones.
    """
    if int(n_new) != n_new or n_new < 0:
        raise ValueError(f"n_new must be a non-negative integer. Got {n_new!r}.")
    return expand_outputs(
        head,
        np.arange(head.n_classes),
        head.n_classes + int(n_new),
        generator=generator,
        prior_pi=prior_pi,
    )


def predict_logits(
    head: Head,
    X: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 8192,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Logits of ``X``, computed in blocks under ``torch.inference_mode()``.

    Parameters
    ----------
    head : Head
        Trained head; put in eval mode, used on ``device`` and moved back to its
        own device afterwards.
    X : ndarray of shape (n_samples, n_features)
        Inputs (converted to float32).
    device : torch.device
        Where to compute.
    batch_size : int, default=8192
        Rows per block, which bounds device memory.
    dtype : torch.dtype, default=torch.float32
        Arithmetic precision. ``torch.float64`` computes on a float64 copy of the
        head: float32 GEMM results depend on how many rows share a call, float64
        ones agree to far below float32 resolution, so a sample's logits no longer
        depend on its batch.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
        On the CPU, in ``dtype``.
    """
    check_positive_int(batch_size, "batch_size")
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != head.n_features:
        raise ValueError(f"X must be (n_samples, {head.n_features}). Got {X.shape}.")
    # The head goes back where it was, so that predicting never changes the
    # device an estimator's fitted head (and hence its pickle) lives on.
    home = head.x_mean.device
    model = head if dtype == torch.float32 else copy.deepcopy(head).to(dtype)
    model.to(device).eval()
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    out = np.empty((X.shape[0], head.n_classes), dtype=np_dtype)
    try:
        with torch.inference_mode():
            for start in range(0, X.shape[0], batch_size):
                # A read-only block (a pandas view) is copied: torch refuses
                # to wrap memory it may not write.
                block = torch.from_numpy(
                    np.require(X[start : start + batch_size], requirements="W")
                )
                block = block.to(device=device, dtype=dtype)
                out[start : start + batch_size] = model(block).cpu().numpy()
    finally:
        head.to(home)
    return out


def predict_proba(head: Head, X: np.ndarray, *, device: torch.device) -> np.ndarray:
    """Softmax of the head's logits, computed in float64 so that a query's
    probabilities do not depend on its batch."""
    logits = predict_logits(head, X, device=device, dtype=torch.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def head_to_bytes(head: Head) -> np.ndarray:
    """The head's ``state_dict`` as ``torch.save`` bytes, in a uint8 array."""
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def head_from_bytes(data: np.ndarray) -> tuple[Head, dict]:
    """The head saved by :func:`head_to_bytes` (tensors only:
    ``weights_only=True``), on the CPU, and its state dict."""
    state = torch.load(
        io.BytesIO(data.tobytes()), map_location="cpu", weights_only=True
    )
    return head_from_state_dict(state), state


def check_restored(head: Head, state: dict, n_features: int, n_classes: int) -> None:
    """Refuse a restored head whose shape or weights do not fit its estimator."""
    probe = predict_logits(head, np.zeros((1, n_features), np.float32), device="cpu")
    if probe.shape != (1, n_classes):
        raise ValueError(
            f"the head gives {probe.shape[1]} outputs for {n_classes} classes"
        )
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise ValueError("the head's weights hold NaN or infinite values")
