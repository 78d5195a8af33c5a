"""JOINT with the backbone trained too: [NN]'s fine-tuning protocol (App. A.5).

:class:`FineTunedJointClassifier` trains the last modules of a pretrained image
backbone (a :class:`~skknn.TorchFeatureExtractor`) together with a linear head, with
JOINT's kNN-weighted cross-entropy (FORMULAS.md 4). Because the backbone changes,
the kNN memory of the training images is re-embedded:

- ``memory_refresh="epoch"`` (JOINT): before every epoch, so each epoch's
  ``p_kNN`` comes from the current backbone;
- ``"test"`` (JOINT-UT): ``p_kNN`` from the pretrained backbone throughout
  training, the memory re-embedded once, after it;
- ``"never"``: the memory and its queries stay with the pretrained backbone (a
  frozen copy is kept for them).

Re-embedding is an inference pass (no gradients, eval mode, batched) and the
memory is rebuilt in place (:meth:`VectorStore.replace_vectors`: same ids, labels
and weights, the centre refitted, the index rebuilt).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from skknn._certificates import DelegatedCertificates, record_head
from skknn._device import device_after_unpickling
from skknn._docstrings import fill_doc
from skknn._param_validation import Interval, StrOptions, check_params
from skknn.features import TorchFeatureExtractor
from skknn.heads._head import Head, build_head, column_stats
from skknn.heads._lbfgs import fit_linear_head
from skknn.heads._loop import (
    DivergenceGuard,
    EachEpoch,
    EarlyStopping,
    Loop,
    fit_loop,
)
from skknn.heads._training import modulation_weights, stratified_split
from skknn.io import Persistable, register, subtree
from skknn.voter import KNNVoter

MEMORY_REFRESH = ("epoch", "test", "never")
AUGMENTATIONS = ("crop_flip", "crop")

# L-BFGS iterations for the linear probe (JointKNNClassifier's max_iter is 200;
# a few hundred images converge well within this).
_PROBE_MAX_ITER = 500
# An epoch whose mean loss exceeds this many times the first epoch's (and twice
# a uniform guess's cross-entropy) has diverged: a working fine-tune lowers its
# loss, and noise from augmentation moves it by far less.
_DIVERGED = 10.0
# The head's input scale is floored at this fraction of the typical column's
# deviation (see _head_stats).
_SCALE_FLOOR = 0.3
# Smallest fall of a loss that counts as an improvement (MLPClassifier's tol).
_TOL = 1e-4


def _default_extractor() -> TorchFeatureExtractor:
    return TorchFeatureExtractor(
        "efficientnet-lite0", layer="_blocks.10", pooling="avg"
    )


def _default_knn() -> KNNVoter:
    return KNNVoter(n_neighbors=10, voting="softmax", preprocessing="center_l2")


@register
class FineTunedJointClassifier(
    DelegatedCertificates, Persistable, ClassifierMixin, BaseEstimator
):
    """JOINT over a trainable backbone: the memory re-embedded as it learns.

    Images in, labels out. The backbone of ``extractor`` is loaded with its
    pretrained weights; the modules named in ``trainable`` (and everything
    inside them) are trained with a linear head on the kNN-weighted
    cross-entropy ``(1 + alpha * min(-log p_kNN, 100)) * CE`` ([NN], FORMULAS.md
    4), where ``p_kNN`` is the leave-one-out probability of each training
    image's own class from a memory of the training images (``knn``). At test
    time ``interpolation * p_kNN + (1 - interpolation) * softmax(head)``.
    ``alpha=0, interpolation=0`` is a fine-tuned linear classifier ([NN]'s
    BASE).

    Parameters
    ----------
    extractor : TorchFeatureExtractor, default=None
        The backbone, its input size, layer and pooling. None means
        ``TorchFeatureExtractor("efficientnet-lite0", layer="_blocks.10")``.
    knn : KNNVoter, default=None
        The memory and its vote; None means ``KNNVoter(n_neighbors=10,
        voting="softmax", preprocessing="center_l2")``.
    trainable : list of str, default=None
        Names of the backbone's submodules to train (as in
        ``named_modules()``); None trains every parameter, ``[]`` none (a
        linear probe trained by the same recipe). Batch-norm statistics stay
        as pretrained (the backbone runs in eval mode).
    memory_refresh : {"epoch", "test", "never"}, default="epoch"
        When the memory is re-embedded: before every epoch (JOINT), once after
        training (JOINT-UT), or never (the pretrained backbone serves the kNN).
    alpha : float, default=0.01
        Strength of the kNN modulation; 0 gives a plain cross-entropy.
    interpolation : float, default=0.5
        Weight of the kNN's probabilities at test time, in [0, 1].
    max_epochs : int, default=10
        Passes over the training images once the head has been fitted.
    batch_size : int, default=32
        Images per training step.
    backbone_lr : float, default=0.001
        Peak learning rate of the backbone's trainable parameters (SGD). Smaller
        than ``head_lr``: the pretrained features should move, not be relearnt.
    head_lr : float, default=0.01
        Peak learning rate of the head while the backbone trains. The head
        starts fitted (see Notes), so it needs only small corrections.
    momentum : float, default=0.9
        SGD momentum.
    weight_decay : float, default=1e-2
        L2 penalty on weights (not biases), the linear probe's included
        (``weight_decay / 2 * |W|^2`` beside the mean loss, as
        :class:`~skknn.JointKNNClassifier`'s): 1e-2 is LogisticRegression's
        ``C=1`` for 100 training images, and matched or beat it on 150 digits
        where 1e-3 (JointKNNClassifier's default) lost 4 points.
    warmup_epochs : float, default=1
        Linear warm-up of both learning rates, then cosine decay to 0.
    augment : {"crop_flip", "crop"} or None, default=None
        Training augmentation: a random resized crop (scale 0.6 to 1, aspect
        3/4 to 4/3) and, with ``"crop_flip"``, a horizontal flip with
        probability 1/2 (not where a flip changes the class, as for digits).
        None by default: on small images (25-32 px digits and faces,
        benchmarks/RESULTS.md) crops moved the pooled embeddings so far from
        the probe's that fine-tuning lost accuracy.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training images (stratified;
        they stay in the memory) and keep the epoch whose head is most accurate
        on them, the linear probe before any fine-tuning included; stop after
        ``n_iter_no_change`` epochs without improvement.
    validation_fraction : float, default=0.1
        Share of each class held out when ``early_stopping`` is on.
    n_iter_no_change : int, default=3
        Epochs without a better validation score before stopping.
    mixed_precision : bool or "auto", default="auto"
        Autocast to bfloat16 on a CUDA device ("auto": when the backbone runs
        on one); the CPU trains in float32.
    random_state : int or None, default=None
        Seeds shuffling, augmentation and the head's initialisation: on the CPU
        two fits with the same seed give identical models.
    verbose : bool, default=False
        A progress bar over epochs (loss and training accuracy).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Known labels, sorted (the memory's, grown by :meth:`partial_fit`).
    extractor_ : TorchFeatureExtractor
        The fitted extractor whose backbone was trained.
    frozen_extractor_ : TorchFeatureExtractor or None
        With ``memory_refresh="never"``, the pretrained extractor that embeds the
        memory and the kNN's queries.
    knn_ : KNNVoter
        The memory of the training images (and of later :meth:`partial_fit`).
    head_ : torch.nn.Module
        The trained linear head; it standardises its input by the pretrained
        embeddings of the training images, as
        :class:`~sklearn.preprocessing.StandardScaler` would (constant columns
        at the input's float resolution kept unscaled, and a floor on the
        scale of barely varying ones).
    head_classes_ : ndarray
        The classes the head was trained on (those of :meth:`fit`).
    n_memory_refreshes_ : int
        How many times the memory was embedded during :meth:`fit`.
    history_ : list of dict
        Per fine-tuning epoch: mean training loss, training accuracy, seconds
        and, with ``early_stopping``, ``validation_accuracy``.
    n_iter_ : int
        Fine-tuning epochs run (0 when nothing in the backbone is trainable).
    best_epoch_ : int
        The epoch whose weights were kept; 0 is the linear probe.
    validation_scores_ : list of float
        With ``early_stopping``: the head's validation accuracy of the linear
        probe, then after each epoch; empty otherwise.

    See Also
    --------
    skknn.JointKNNClassifier : JOINT on frozen embeddings.

    Notes
    -----
    Training is LP-FT: the head is first fitted to convergence on the frozen
    embeddings (L-BFGS on JOINT's weighted loss, as
    :class:`~skknn.JointKNNClassifier`'s linear head), then the backbone and the
    head are trained together by SGD at their own learning rates. A head that
    starts random sends large, noisy gradients into the pretrained features;
    one that starts fitted does not. With ``trainable=[]`` the linear probe is
    the model (no epochs run).

    Fine-tuning stops early, restores the weights of its best epoch (the
    lowest training loss, or the linear probe) and raises a
    :class:`~sklearn.exceptions.ConvergenceWarning` when the loss becomes
    non-finite, or exceeds both ten times the first epoch's and twice the
    cross-entropy of a uniform guess: lower ``backbone_lr`` and ``head_lr``
    then.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import KNNVoter, TorchFeatureExtractor
    >>> from skknn.finetune import FineTunedJointClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    >>> y = np.repeat([0, 1], 20)
    >>> X[y == 1, :16] = 255  # class 1: a white top half
    >>> clf = FineTunedJointClassifier(
    ...     TorchFeatureExtractor("tiny-cnn"), KNNVoter(5), max_epochs=2,
    ...     random_state=0).fit(X, y)
    >>> clf.predict(X[[0, 39]])
    array([0, 1])
    >>> clf.n_memory_refreshes_  # before each of 2 epochs, and after training
    3
    """

    _parameter_constraints: dict = {
        "extractor": [TorchFeatureExtractor, None],
        "knn": [KNNVoter, None],
        # the names must be the backbone's modules: checked once it is loaded
        "trainable": [list, tuple, None],
        "memory_refresh": [StrOptions(set(MEMORY_REFRESH))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "interpolation": [Interval(Real, 0, 1, closed="both")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "backbone_lr": [Interval(Real, 0, None, closed="neither")],
        "head_lr": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "warmup_epochs": [Interval(Real, 0, None, closed="left")],
        "augment": [StrOptions(set(AUGMENTATIONS)), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "mixed_precision": ["boolean", StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        extractor: TorchFeatureExtractor | None = None,
        knn: KNNVoter | None = None,
        *,
        trainable: list | None = None,
        memory_refresh: str = "epoch",
        alpha: float = 0.01,
        interpolation: float = 0.5,
        max_epochs: int = 10,
        batch_size: int = 32,
        backbone_lr: float = 0.001,
        head_lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-2,
        warmup_epochs: float = 1,
        augment: str | None = None,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 3,
        mixed_precision="auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.extractor = extractor
        self.knn = knn
        self.trainable = trainable
        self.memory_refresh = memory_refresh
        self.alpha = alpha
        self.interpolation = interpolation
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.backbone_lr = backbone_lr
        self.head_lr = head_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.augment = augment
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------------
    def _check_params(self) -> None:
        check_params(self)
        # Beyond the table: the nested KNNVoter's own parameters (the names in
        # trainable are checked against the backbone once it is loaded).
        if self.knn is not None and (
            self.knn.backend != "local" or self.knn.storage_path is not None
        ):
            raise ValueError(
                "FineTunedJointClassifier re-embeds its memory in place, in RAM: "
                "give it a KNNVoter with backend='local' and no storage_path."
            )

    # -- fitting --------------------------------------------------------------------
    def fit(self, X, y):
        """Train the backbone's trainable modules and the head on images.

        Parameters
        ----------
        X : array-like of images or list
            Training images in any form :class:`TorchFeatureExtractor` takes
            (uint8 or [0, 1] float arrays, paths, PIL images).
        y : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        self : FineTunedJointClassifier
            The fitted classifier.
        """
        self._check_params()
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(
                f"y must be 1-d (one label per image); got shape {y.shape}."
            )
        extractor = clone(self.extractor or _default_extractor()).fit(X[:1])
        images = extractor.decode(X)  # (n, C, H, W), the model's input
        if images.shape[0] != y.shape[0]:
            raise ValueError(
                f"X holds {images.shape[0]} images but y {y.shape[0]} labels."
            )
        gen = torch.Generator().manual_seed(_seed(self.random_state))
        # The backbone trained is a copy: a module the user passed stays as it
        # was, and with memory_refresh="never" the original serves the memory.
        frozen = extractor if self.memory_refresh == "never" else None
        extractor = _copy_extractor(extractor)
        params = _trainable(extractor.model_, self.trainable)
        ids = np.arange(len(y))
        knn = clone(self.knn or _default_knn())
        if "knn_" in self.__dict__:  # a refit continues the memory's chain
            knn._continue_chain(self.knn_)
        E0 = _embed(extractor, images, self.batch_size)
        knn.fit(E0, y, sample_ids=ids)
        classes = knn.classes_
        codes = np.searchsorted(classes, y)
        p_true = _p_true(knn, codes, ids)
        # Held-out images only where there is something to stop early.
        if params and self.early_stopping:
            train, val = stratified_split(
                codes,
                self.validation_fraction,
                gen,
                "use a larger fraction or early_stopping=False",
            )
        else:
            train, val = ids, ids[:0]
        run = _Run(
            extractor=extractor,
            params=params,
            images=images,
            codes=codes,
            ids=ids,
            train=train,
            val=val,
            knn=knn,
            p_true=p_true,
            head=self._linear_probe(
                E0[train], codes[train], p_true[train], len(classes), gen
            ),
            generator=gen,
            n_classes=len(classes),
        )
        if params:
            self._fine_tune(run)
        extractor.model_.requires_grad_(False)
        if self.memory_refresh in ("epoch", "test") and params:
            self._refresh(run)
        record_head(knn, len(y), ids)
        self.extractor_ = extractor
        self.frozen_extractor_ = frozen
        self.knn_ = knn
        self.head_ = run.head.eval()
        self.head_classes_ = classes
        self.n_memory_refreshes_ = run.refreshes
        self.history_ = run.history
        self.n_iter_ = len(run.history)
        self.best_epoch_ = run.best_epoch
        self.validation_scores_ = run.val_scores
        return self

    def _linear_probe(self, E, codes, p_true, n_classes, gen) -> Head:
        """LP of LP-FT: the head fitted to convergence on the frozen embeddings,
        by the same solver and loss as JointKNNClassifier's linear head, over
        inputs standardised by :func:`_head_stats`."""
        mean, scale = _head_stats(E)
        head = build_head(
            E.shape[1], n_classes, generator=gen, x_mean=mean, x_scale=scale
        )
        weights = modulation_weights(torch.from_numpy(p_true), alpha=float(self.alpha))
        fit_linear_head(
            head,
            E,
            codes,
            weights.numpy(),
            weight_decay=float(self.weight_decay),
            max_iter=_PROBE_MAX_ITER,
        )
        return head

    def _refresh(self, run: _Run, p_true: bool = False) -> None:
        """Re-embed the memory with the current backbone (and, with ``p_true``,
        the leave-one-out probabilities that weight the loss)."""
        E = _embed(run.extractor, run.images, self.batch_size)
        before = run.knn._state_before_edit()
        run.knn.memory_.replace_vectors(E)
        run.knn._record_edit("refresh", run.ids, before, whole=True)
        run.refreshes += 1
        if p_true:
            run.p_true = _p_true(run.knn, run.codes, run.ids)

    def _optimizer(self, run: _Run) -> tuple[torch.optim.SGD, list[float]]:
        device = run.extractor.device_
        run.head.to(device)
        head = [p for p in run.head.parameters() if p.requires_grad]
        groups = [
            {"params": _decayed(run.params), "lr": self.backbone_lr, "decay": True},
            {"params": _biases(run.params), "lr": self.backbone_lr, "decay": False},
            {"params": _decayed(head), "lr": self.head_lr, "decay": True},
            {"params": _biases(head), "lr": self.head_lr, "decay": False},
        ]
        groups = [g for g in groups if g["params"]]
        for group in groups:
            group["weight_decay"] = self.weight_decay if group.pop("decay") else 0.0
        peaks = [group["lr"] for group in groups]
        return torch.optim.SGD(groups, momentum=self.momentum), peaks

    def _fine_tune(self, run: _Run) -> None:
        """FT of LP-FT: SGD epochs in the shared training loop, with the
        divergence guard, early stopping and (``memory_refresh="epoch"``) the
        memory re-embedded before each epoch but the first."""
        optimizer, peaks = self._optimizer(run)
        loop = Loop(snapshot=run.snapshot, load=run.load)
        loop.remember(0, self._validate(run) if len(run.val) else (-math.inf,))
        callbacks = []
        if self.memory_refresh == "epoch":
            callbacks.append(EachEpoch(lambda: self._refresh(run, p_true=True)))
        callbacks += [
            DivergenceGuard(
                run.chance_loss(float(self.alpha)), self._diverged, factor=_DIVERGED
            ),
            EarlyStopping(
                (lambda: self._validate(run)) if len(run.val) else None,
                self.n_iter_no_change,
                improves=_improves,
            ),
        ]

        def train_epoch(epoch: int) -> dict:
            loss, accuracy = self._epoch(run, optimizer, peaks, epoch)
            return {"loss": loss, "train_accuracy": accuracy}

        fit_loop(
            loop,
            train_epoch,
            max_epochs=self.max_epochs,
            callbacks=callbacks,
            progress=self.verbose,
            desc="fine-tune",
        )
        run.history, run.best_epoch = loop.history, loop.best_epoch

    def _diverged(self, loop: Loop, record: dict) -> None:
        epoch, loss = record["epoch"], record["loss"]
        first = (
            "" if epoch == 1 else f"; the first epoch's {loop.history[0]['loss']:.3g}"
        )
        warnings.warn(
            f"Fine-tuning diverged at epoch {epoch} (mean loss {loss:.3g}{first}): "
            "training stopped and the weights of epoch "
            f"{loop.best_epoch} restored (0: the linear probe). Lower backbone_lr "
            f"({self.backbone_lr}) or head_lr ({self.head_lr}).",
            ConvergenceWarning,
            stacklevel=6,  # fit -> _fine_tune -> fit_loop -> guard -> here
        )

    def _epoch(self, run: _Run, optimizer, peaks, epoch: int) -> tuple[float, float]:
        """One shuffled pass over the training images; (mean loss, accuracy).

        Stops at the first non-finite loss (returned as the epoch's): one step
        more would spread it into every weight.
        """
        device = run.extractor.device_
        weights = modulation_weights(
            torch.from_numpy(run.p_true), alpha=float(self.alpha)
        ).to(device)
        targets = torch.from_numpy(run.codes).to(device)
        train = torch.from_numpy(run.train)
        order = train[torch.randperm(len(train), generator=run.generator)]
        steps = math.ceil(len(order) / self.batch_size)
        autocast = self._autocast(device)
        total, correct = 0.0, 0
        for step in range(steps):
            t = (epoch + step / steps) / self.max_epochs
            factor = _schedule(t, self.warmup_epochs / self.max_epochs)
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = peak * factor
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = run.images[batch.to(run.images.device)]
            if self.augment is not None:
                # decode() has normalised x: crops (bilinear, weights summing
                # to 1) and flips commute with the per-channel affine map, so
                # this equals augmenting the pixels and then normalising.
                x = _augment(x, self.augment == "crop_flip", run.generator)
            with autocast:
                logits = run.head(run.extractor.embed_inputs(x).float())
            b = batch.to(device)
            ce = F.cross_entropy(logits.float(), targets[b], reduction="none")
            loss = (weights[b] * ce).mean()
            if not torch.isfinite(loss):
                return float(loss.detach()), correct / len(order)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == targets[b]).sum())
        return total / len(order), correct / len(order)

    def _validate(self, run: _Run) -> tuple[float, float]:
        """(accuracy, -mean cross-entropy) of the head on the held-out images:
        ties in accuracy, frequent on a few images, go to the lower loss."""
        E = torch.from_numpy(_embed(run.extractor, run.images[run.val], 256))
        targets = torch.from_numpy(run.codes[run.val])
        with torch.inference_mode():
            logits = run.head(E.to(run.head.x_mean.device)).float().cpu()
        ce = float(F.cross_entropy(logits, targets))
        accuracy = float((logits.argmax(1) == targets).float().mean())
        run.val_scores.append(accuracy)
        return accuracy, -ce

    def _autocast(self, device: torch.device):
        use = self.mixed_precision is True or (
            self.mixed_precision == "auto" and device.type == "cuda"
        )
        if not use or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    # -- the memory after training -----------------------------------------------
    @property
    def classes_(self) -> np.ndarray:
        return self.knn_.classes_

    def embed(self, X) -> np.ndarray:
        """Embeddings of images by the trained backbone.

        Parameters
        ----------
        X : array-like of images or list
            Images, as :meth:`fit` takes them.

        Returns
        -------
        embeddings : ndarray of shape (n_images, n_features), dtype float32
            One row per image.
        """
        check_is_fitted(self)
        return self.extractor_.transform(X)

    def _memory_embed(self, X) -> np.ndarray:
        extractor = self.frozen_extractor_ or self.extractor_
        return extractor.transform(X)

    def partial_fit(self, X, y, sample_ids=None):
        """Add images to the memory, embedded by the trained backbone.

        The head is not trained: labels new to the memory get probability from
        the kNN only (the head gives them none).

        Parameters
        ----------
        X : array-like of images or list
            Images to add.
        y : array-like of shape (n_samples,)
            Their labels; new classes extend :attr:`classes_`.
        sample_ids : array-like of shape (n_samples,), default=None
            Their ids in the memory (default: fresh ids).

        Returns
        -------
        self : FineTunedJointClassifier
            The classifier, its memory grown.
        """
        self._check_params()  # as every fit method does, fitted or not
        check_is_fitted(self)
        self.knn_.partial_fit(self._memory_embed(X), y, sample_ids=sample_ids)
        return self

    def unlearn(self, sample_ids):
        """Remove samples from the memory (the head keeps what it learnt).

        Parameters
        ----------
        sample_ids : array-like of int
            Ids of memory samples (the training images are ``0 .. n - 1``).

        Returns
        -------
        self : FineTunedJointClassifier
            The classifier, without the removed samples in its memory.
        """
        check_is_fitted(self)
        self.knn_.unlearn(sample_ids)
        return self

    # -- prediction -------------------------------------------------------------------
    def _head_proba(self, E: np.ndarray) -> np.ndarray:
        device = self.head_.x_mean.device
        with torch.inference_mode():
            logits = self.head_(torch.from_numpy(E).to(device)).float()
            proba = torch.softmax(logits, dim=1).cpu().numpy()
        out = np.zeros((len(E), len(self.classes_)))
        out[:, np.searchsorted(self.classes_, self.head_classes_)] = proba
        return out

    @fill_doc
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: the head's interpolated with the kNN's.

        %(X_images)s

        Returns
        -------
        proba : ndarray of shape (n_images, n_classes)
            Columns follow :attr:`classes_`.
        """
        check_is_fitted(self)
        E = self.extractor_.transform(X)
        E_knn = E if self.frozen_extractor_ is None else self._memory_embed(X)
        lam = float(self.interpolation)
        proba = (1 - lam) * self._head_proba(E)
        if lam > 0:
            proba += lam * self.knn_.predict_proba(E_knn)
        return proba

    @fill_doc
    def predict(self, X) -> np.ndarray:
        """The most probable class of each image.

        %(X_images)s

        Returns
        -------
        labels : ndarray of shape (n_images,)
            Predicted labels.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # -- persistence ----------------------------------------------------------------
    def __skknn_reading__(self):
        check_is_fitted(self)
        return self.knn_.__skknn_reading__()

    def __skknn_save__(self) -> tuple[dict, dict]:
        from skknn._archive import labels_to_json

        check_is_fitted(self)
        knn_meta, knn_arrays = self.knn_.__skknn_save__()
        ext = self.extractor_
        meta = {
            "extractor": ext.fitted_state(),
            "head_classes": labels_to_json(self.head_classes_),
            "n_memory_refreshes": int(self.n_memory_refreshes_),
            "history": self.history_,
            "n_iter": int(self.n_iter_),
            "best_epoch": int(self.best_epoch_),
            "validation_scores": [float(v) for v in self.validation_scores_],
            "knn": knn_meta,
        }
        arrays = {"knn/" + k: v for k, v in knn_arrays.items()}
        for name, value in ext.model_.state_dict().items():
            arrays["backbone/" + name] = value.detach().cpu().numpy()
        layer = self.head_.output_layer
        arrays["head/weight"] = layer.weight.detach().cpu().numpy()
        arrays["head/bias"] = layer.bias.detach().cpu().numpy()
        arrays["head/mean"] = self.head_.x_mean.cpu().numpy()
        arrays["head/std"] = self.head_.x_scale.cpu().numpy()
        return meta, arrays

    def __skknn_load__(self, meta: dict, arrays: dict, version: int) -> None:
        from skknn._archive import labels_from_json

        self._check_params()
        fitted = meta["extractor"]
        device = device_after_unpickling(fitted["device"], owner=type(self).__name__)
        weights = {
            k: torch.from_numpy(np.array(v))
            for k, v in subtree(arrays, "backbone/").items()
        }
        template = self.extractor or _default_extractor()
        self.extractor_ = clone(template).from_fitted_state(fitted, device, weights)
        self.frozen_extractor_ = None
        if self.memory_refresh == "never":
            self.frozen_extractor_ = clone(template).from_fitted_state(fitted, device)
        knn = clone(self.knn or _default_knn())
        knn.__skknn_load__(meta["knn"], subtree(arrays, "knn/"), version)
        self.knn_ = knn
        weight = torch.from_numpy(np.array(arrays["head/weight"]))
        head = Head(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.output_layer.weight.copy_(weight)
            head.output_layer.bias.copy_(
                torch.from_numpy(np.array(arrays["head/bias"]))
            )
            head.x_mean.copy_(torch.from_numpy(np.array(arrays["head/mean"])))
            head.x_scale.copy_(torch.from_numpy(np.array(arrays["head/std"])))
        self.head_ = head.to(device).eval()
        self.head_classes_ = labels_from_json(meta["head_classes"])
        if weight.shape[0] != len(self.head_classes_):
            raise ValueError("the head's rows disagree with its classes")
        self.n_memory_refreshes_ = int(meta["n_memory_refreshes"])
        self.history_ = list(meta["history"])
        self.n_iter_ = int(meta.get("n_iter", len(self.history_)))
        self.best_epoch_ = int(meta.get("best_epoch", self.n_iter_))
        self.validation_scores_ = list(meta.get("validation_scores", []))

    def __getstate__(self):
        # The extractor pickles its backbone by name (pretrained weights on
        # load): the trained weights travel beside it.
        state = dict(super().__getstate__())
        if "extractor_" in state:
            state["_trained_weights"] = {
                k: v.detach().cpu().clone()
                for k, v in self.extractor_.model_.state_dict().items()
            }
        return state

    def __setstate__(self, state):
        weights = state.pop("_trained_weights", None)
        super().__setstate__(state)
        if weights is not None:
            self.extractor_.model_.load_state_dict(weights)


@dataclass(eq=False)
class _Run:
    """What one fit trains and reads, and the best weights seen so far."""

    extractor: TorchFeatureExtractor
    params: list
    images: torch.Tensor
    codes: np.ndarray
    ids: np.ndarray
    train: np.ndarray
    val: np.ndarray
    knn: KNNVoter
    p_true: np.ndarray
    head: Head
    generator: torch.Generator
    n_classes: int
    refreshes: int = 1
    history: list = field(default_factory=list)
    val_scores: list = field(default_factory=list)
    best_epoch: int = 0

    def chance_loss(self, alpha: float) -> float:
        """The training loss of a uniform guess: where divergence is judged
        from when the first epoch is already better than chance."""
        w = modulation_weights(torch.from_numpy(self.p_true[self.train]), alpha=alpha)
        return math.log(max(2, self.n_classes)) * float(w.mean())

    def snapshot(self) -> tuple:
        """A copy of the trained weights: the backbone's trainable ones and the
        head's."""
        params = [p.detach().clone() for p in self.params]
        head = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return params, head

    def load(self, state: tuple) -> None:
        params, head = state
        with torch.no_grad():
            for p, saved in zip(self.params, params):
                p.copy_(saved)
        self.head.load_state_dict(head)


def _improves(score: tuple, best: tuple) -> bool:
    """Better accuracy, or the same with a loss lower by more than _TOL (no
    accuracy: the loss alone)."""
    if not best or score[:-1] != best[:-1]:
        return score > best
    return score[-1] > best[-1] + _TOL


def _head_stats(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's input mean and scale: the JOINT head's standardisation
    (:func:`~skknn.heads._head.column_stats`), the scale floored where a column barely
    varies on the training images.

    Constant columns keep scale 1 (a floor of 1e-6 on the deviation blew a
    column dead on the training images up by 1e6 as soon as a crop or a trained
    block woke it: losses of 1e9 and more). Pooled ReLU features also hold
    columns alive on one or two training images (deviation ~0.002 against ~0.1
    for a typical column): standardised, they turn any change the backbone makes
    to them into inputs of hundreds, and fine-tuning collapsed within three
    epochs (EfficientNet-Lite0's 1280-d features of 150 digits: 0.25 accuracy
    against 0.70 with the floor). The floor is a fraction of the root-mean-square
    deviation of the varying columns.
    """
    mean, var, constant = column_stats(E)
    if constant.all():
        return mean, np.ones_like(var)
    typical = math.sqrt(float(np.mean(var[~constant])))
    scale = np.where(constant, 1.0, np.maximum(np.sqrt(var), _SCALE_FLOOR * typical))
    return mean, scale


def _seed(random_state) -> int:
    if random_state is None:
        return int(np.random.default_rng().integers(2**31))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31))
    return int(random_state)


def _embed(extractor, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """The inference pass: eval mode, no gradients, in batches."""
    out = []
    with torch.inference_mode():
        for s in range(0, images.shape[0], batch_size):
            emb = extractor.embed_inputs(images[s : s + batch_size])
            out.append(emb.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def _copy_extractor(extractor: TorchFeatureExtractor) -> TorchFeatureExtractor:
    """The fitted extractor with its own copy of the backbone (to train it)."""
    other = copy.copy(extractor)
    other.model_ = copy.deepcopy(extractor.model_)
    return other


def _trainable(model: torch.nn.Module, names) -> list[torch.nn.Parameter]:
    if names is None:
        params = list(model.parameters())
    else:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"trainable names modules the backbone does not have: {missing}; "
                f"some it has: {list(modules)[1:8]}."
            )
        # A module named with one of its children: each parameter once.
        unique = {id(p): p for n in names for p in modules[n].parameters()}
        params = list(unique.values())
    for p in params:
        p.requires_grad_(True)
    return params


def _decayed(params):
    return [p for p in params if p.ndim > 1]


def _biases(params):
    return [p for p in params if p.ndim <= 1]


def _schedule(t: float, warmup: float) -> float:
    """Linear warm-up to 1 over ``warmup`` of training, then cosine to 0."""
    if warmup > 0 and t < warmup:
        return (t + 1e-9) / warmup
    span = max(1e-9, 1 - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / span)))


def _augment(x: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop (scale 0.6-1, aspect 3/4-4/3) and optional flip."""
    n, _, H, W = x.shape
    out = torch.empty_like(x)
    u = torch.rand(n, 4, generator=gen)
    for i in range(n):
        area = (0.6 + 0.4 * float(u[i, 0])) * H * W
        ratio = math.exp(math.log(3 / 4) + float(u[i, 1]) * math.log(16 / 9))
        h = min(H, max(1, round(math.sqrt(area / ratio))))
        w = min(W, max(1, round(math.sqrt(area * ratio))))
        top = int(float(u[i, 2]) * (H - h + 1))
        left = int(float(u[i, 3]) * (W - w + 1))
        crop = x[i : i + 1, :, top : top + h, left : left + w]
        out[i] = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)[
            0
        ]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def _p_true(knn: KNNVoter, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return knn.loo_proba(ids)[np.arange(len(codes)), codes].astype(np.float32)
