"""A linear head fitted by sklearn's L-BFGS on JOINT's weighted loss.

JOINT's loss on a linear head is a per-sample weighted multinomial
cross-entropy (FORMULAS.md 4: weight ``1 + alpha * min(-log p_n, 100)``, or the
focal factor, times any sample weight) plus the L2 penalty ``weight_decay / 2 *
|W|^2``. That is exactly the objective of
``LogisticRegression(solver="lbfgs", C=1 / (weight_decay * n))`` given those
weights as ``sample_weight``: a full-batch quasi-Newton solver converges in tens
of passes where mini-batch SGD needs its whole schedule. The fitted coefficients
become the head's output layer; the head's fixed input standardisation is
applied first, as in SGD training.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from skknn.heads._head import Head

# How far below the lowest learnt bias a class with no training samples starts:
# it gets ~e^-10 of the probability until partial_fit brings samples of it.
_ABSENT_MARGIN = 10.0


def fit_linear_head(
    head: Head,
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    weight_decay: float,
    max_iter: int,
    tol: float = 1e-4,
) -> dict:
    """Fit ``head``'s output layer in place; returns what the training loop would.

    Parameters
    ----------
    head : Head
        A linear head (no hidden layers) with its standardisation set.
    X : ndarray of shape (n_samples, n_features)
        Raw training inputs.
    y : ndarray of int of shape (n_samples,)
        Class indices into the head's outputs.
    weights : ndarray of shape (n_samples,)
        Per-sample loss weights (JOINT's modulation times sample weights).
    weight_decay : float
        The L2 penalty ``weight_decay / 2 * |W|^2`` (0 for none).
    max_iter : int
        L-BFGS iterations at most.
    tol : float, default=1e-4
        sklearn's stopping tolerance.

    Returns
    -------
    result : dict
        ``loss`` (the final penalised weighted loss), ``n_iter``, ``converged``.
    """
    if head.hidden_layer_sizes:
        raise ValueError("L-BFGS fits linear heads only; MLP heads train by SGD.")
    with torch.no_grad():
        X = np.require(X, np.float32, requirements="W")  # torch wraps, not copies
        Z = head.standardize(torch.from_numpy(X)).numpy()
    weights = np.asarray(weights, dtype=np.float64)
    layer = head.output_layer
    if not np.any(weights > 0):
        # A zero loss everywhere (focal modulation where the memory is always
        # right): the penalised optimum has no weights; biases keep their prior.
        with torch.no_grad():
            layer.weight.zero_()
        return {"loss": 0.0, "n_iter": 0, "converged": True}
    present = np.unique(y)
    if len(present) == 1:
        # One class seen so far (a first partial_fit with classes=): the
        # optimum has no weights and that class's bias far above the others.
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(-_ABSENT_MARGIN)
            layer.bias[int(present[0])] = 0.0
        return {"loss": 0.0, "n_iter": 0, "converged": True}
    if weight_decay > 0:
        # Two classes: sklearn fits one vector d, split below into rows +-d/2,
        # whose penalty wd/2 * 2 * |d/2|^2 is half of wd/2 * |d|^2: C doubles.
        factor = 2.0 if len(present) == 2 else 1.0
        penalty = {"C": factor / (weight_decay * len(y))}
    else:
        penalty = {"C": np.inf}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(
            solver="lbfgs", max_iter=max_iter, tol=tol, **penalty
        )
        model.fit(Z, y, sample_weight=weights)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef, intercept = model.coef_, model.intercept_
    if len(present) == 2:  # binary: one logit difference, split symmetrically
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    W = np.zeros((head.n_classes, head.n_features), dtype=np.float32)
    b = np.full(head.n_classes, intercept.min() - _ABSENT_MARGIN, dtype=np.float32)
    W[present], b[present] = coef, intercept
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))
        logits = torch.from_numpy(Z) @ layer.weight.T + layer.bias
        ce = torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(np.asarray(y, np.int64)), reduction="none"
        )
        loss = float((ce.double() * torch.from_numpy(weights)).mean())
        loss += 0.5 * weight_decay * float((layer.weight.double() ** 2).sum())
    return {"loss": loss, "n_iter": int(model.n_iter_[0]), "converged": converged}
