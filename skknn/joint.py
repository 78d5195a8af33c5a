"""JointKNNClassifier: a torch head trained with kNN guidance, interpolated with it."""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from skknn._certificates import DelegatedCertificates, record_head
from skknn._device import device_after_unpickling, resolve_device
from skknn._docstrings import fill_doc
from skknn._joint_prediction import JointPredictionMixin
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS, MEMORY_PARAMETER_HINTS
from skknn._param_validation import Interval, StrOptions, check_params
from skknn._validation import (
    DefaultNestedMixin,
    check_classes_left,
    check_first_classes,
    check_retrainable,
    drop_absent_samples,
    restore_attributes_on_error,
    validate_xy,
)
from skknn.heads import _head, _training
from skknn.heads._fitting import (
    HeadSettings,
    fit_new_head,
    grow_head,
    rehearse,
    replay_positions,
)
from skknn.io import (
    Persistable,
    labels_from_json,
    labels_to_json,
    params_from_json,
    params_to_json,
    register,
    subtree,
)
from skknn.memory.digest import named_edit
from skknn.memory.front import VectorStore
from skknn.memory.locks import GuardedState
from skknn.memory.rows import RowBuffer
from skknn.voter import KNNVoter

# The attributes a failed partial_fit puts back (with a copy of head_).
_PARTIAL_FIT_STATE = ("classes_", "_train_ids", "knn_train_proba_", "_generator_state")


def _default_knn() -> KNNVoter:
    return KNNVoter(voting="softmax", preprocessing="center_l2")


@register
class JointKNNClassifier(
    JointPredictionMixin,
    DefaultNestedMixin,
    DelegatedCertificates,
    GuardedState,
    Persistable,
    ClassifierMixin,
    BaseEstimator,
):
    """A linear (or MLP) head trained with kNN guidance, interpolated with the kNN.

    Training follows [NN] (FORMULAS.md 4): the leave-one-out kNN probability of
    each training sample's true class, ``p_n``, weights its cross-entropy,
    ``(1 + alpha * min(-log p_n, 100)) * CE`` ("nll") or ``(1 - p_n) ** gamma * CE``
    ("focal"), so samples the memory gets wrong count more. At test time
    ``P = interpolation * p_kNN + (1 - interpolation) * softmax(head(x))``.

    Parameters
    ----------
    knn : KNNVoter, default=None
        The memory and its vote; None means ``KNNVoter(voting="softmax",
        preprocessing="center_l2")``. A clone is fitted into ``knn_``, so
        ``knn__n_neighbors`` works in grid searches.
    alpha : float, default=0.01
        Strength of the kNN modulation (>= 0); 0 gives plain cross-entropy.
    modulation : {"nll", "focal"}, default="nll"
        How ``p_n`` weights each sample's cross-entropy (formulas above).
    gamma : float, default=2.0
        Exponent of the focal modulation (>= 0).
    interpolation : float, default=0.5
        ``lambda`` in [0, 1]: 0 is the head alone, 1 the kNN alone.
    hidden_layer_sizes : tuple of int, default=()
        ``()`` is a linear head; e.g. ``(512,)`` an MLP with ReLU.
    base_lr : float, default=0.1
        Learning rate per 256 samples (the rate is ``base_lr * batch_size / 256``),
        with linear warm-up and cosine decay to 0.
    batch_size : int, default=512
        SGD mini-batch size, capped at a twentieth of the training samples (at
        least 1) so that an epoch takes at least 20 steps where it can.
    max_epochs : int, default=30
        SGD epochs; the cosine schedule reaches 0 at the end of the last one.
    warmup_epochs : float, default=2
        Length of the linear warm-up, in epochs (clipped to ``max_epochs``).
    momentum : float, default=0.9
        SGD momentum, in [0, 1).
    weight_decay : float, default=1e-3
        L2 penalty on weights, never on biases.
    validation_fraction : float, default=None
        Hold out this fraction of the training set for the head (stratified);
        the epoch with the best validation accuracy is kept. The held-out
        samples stay in the kNN memory.
    n_iter_no_change : int, default=None
        With a validation set, stop after this many epochs without improvement.
    solver : {"auto", "lbfgs", "sgd"}, default="auto"
        How :meth:`fit` trains the head. ``"lbfgs"``: sklearn's
        ``LogisticRegression(solver="lbfgs")`` on the same weighted loss (the
        JOINT weights as ``sample_weight``, ``C = 1 / (weight_decay * n)``),
        full-batch, for linear heads; ``base_lr``, ``batch_size``, ``max_epochs``
        and ``warmup_epochs`` then do not apply. ``"sgd"``: the mini-batch
        schedule above. ``"auto"`` takes L-BFGS for a linear head on the CPU
        without ``validation_fraction``, SGD otherwise. :meth:`partial_fit`
        always steps by SGD.
    max_iter : int, default=200
        L-BFGS iterations at most.
    n_threads : int, default=None
        Torch threads for SGD steps on the CPU. None chooses by the size of a
        step: one thread below 16 M multiply-adds (torch's threads would hand
        work over more than compute, and spin against any other busy process),
        torch's own count above. The count is restored after each call.
    device : str, default="auto"
        Where the head trains and predicts (the kNN has its own ``device``).
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and the validation split; with an int,
        ``fit`` is repeatable bit for bit on the CPU.
    verbose : bool, default=False
        Progress bar over epochs with the loss.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    knn_ : KNNVoter
        The fitted kNN.
    memory_ : VectorStore
        Its memory (``knn_.memory_``), what :class:`~skknn.MemoryPruner` prunes.
    head_ : torch.nn.Module
        The trained head, on the CPU between calls.
    knn_train_proba_ : ndarray of shape (n_samples,) or None
        Leave-one-out ``p_kNN`` of the true class of each training sample
        (aligned with ``knn_.sample_ids_`` after :meth:`unlearn`). None
        when the loss does not use it (``alpha=0`` with ``modulation="nll"``, plain
        cross-entropy): the leave-one-out search of the memory, most of the fit's
        time, is then skipped.
    loss_curve_ : list of float
        Mean training loss per SGD epoch (L-BFGS: the final loss), then one
        entry per :meth:`partial_fit`.
    validation_scores_ : list of float
        Head accuracy on the validation set per epoch (empty without one).
    best_epoch_ : int
        The epoch kept (L-BFGS: its iteration count).
    n_iter_ : int
        SGD epochs run, or L-BFGS iterations.
    solver_ : str
        The solver that trained the head, ``"lbfgs"`` or ``"sgd"``.
    device_ : torch.device

    See Also
    --------
    skknn.KNNVoter : The memory alone.
    sklearn.linear_model.LogisticRegression : The head alone, by L-BFGS.

    Notes
    -----
    The memory is the only copy of the training inputs: :meth:`unlearn` with
    ``retrain=True`` asks it for the remaining samples' raw vectors (rebuilt from
    the normalised vectors and their lengths, to float32 rounding) and refits
    on them, the centre of ``preprocessing="center_l2"`` included.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import JointKNNClassifier, KNNVoter
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
    >>> y = np.r_[np.zeros(20, int), np.ones(20, int)]
    >>> clf = JointKNNClassifier(KNNVoter(5, index="exact"), random_state=0)
    >>> clf.fit(X, y).score(X, y)
    1.0
    >>> clf.predict(X[[0, -1]])
    array([0, 1])
    >>> clf.predict_proba(X[:1]).sum().round(6)
    np.float64(1.0)
    """

    _parameter_constraints: dict = {
        "knn": [KNNVoter, None],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "modulation": [StrOptions(set(_training.MODULATIONS))],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "interpolation": [Interval(Real, 0, 1, closed="both")],
        # the sizes themselves are checked after the table (_check_params)
        "hidden_layer_sizes": [tuple, list],
        "base_lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "warmup_epochs": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "solver": [StrOptions({"auto", "lbfgs", "sgd"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "device": MEMORY_PARAMETER_CONSTRAINTS["device"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }
    _parameter_hints: dict = {"device": MEMORY_PARAMETER_HINTS["device"]}
    _default_nested = ("knn", _default_knn)

    def __init__(
        self,
        knn: KNNVoter | None = None,
        *,
        alpha: float = 0.01,
        modulation: str = "nll",
        gamma: float = 2.0,
        interpolation: float = 0.5,
        hidden_layer_sizes: tuple = (),
        base_lr: float = _training.DEFAULT_BASE_LR,
        batch_size: int = _training.DEFAULT_BATCH_SIZE,
        max_epochs: int = _training.DEFAULT_MAX_EPOCHS,
        warmup_epochs: float = _training.DEFAULT_WARMUP_EPOCHS,
        momentum: float = 0.9,
        weight_decay: float = _training.DEFAULT_WEIGHT_DECAY,
        validation_fraction: float | None = None,
        n_iter_no_change: int | None = None,
        solver: str = "auto",
        max_iter: int = 200,
        n_threads: int | None = None,
        device: str = "auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.knn = knn
        self.alpha = alpha
        self.modulation = modulation
        self.gamma = gamma
        self.interpolation = interpolation
        self.hidden_layer_sizes = hidden_layer_sizes
        self.base_lr = base_lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.solver = solver
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------
    def _check_params(self) -> None:
        check_params(self)
        # Beyond the table: the layer sizes inside the tuple, and a rule
        # between solver and the options only SGD has.
        sizes = self.hidden_layer_sizes
        if not all(isinstance(h, (int, np.integer)) and h >= 1 for h in sizes):
            raise ValueError(
                "The 'hidden_layer_sizes' parameter of JointKNNClassifier must be a "
                f"tuple of positive ints. Got {sizes!r} instead."
            )
        if self.solver == "lbfgs" and (
            self.hidden_layer_sizes or self.validation_fraction
        ):
            raise ValueError(
                "solver='lbfgs' fits a linear head on the whole training set: it "
                "takes no hidden_layer_sizes and no validation_fraction. Use "
                "solver='sgd' (or 'auto') for those."
            )

    def _generator(self) -> torch.Generator:
        seed = check_random_state(self.random_state).randint(0, 2**31 - 1)
        return torch.Generator().manual_seed(int(seed))

    # -- fitting --------------------------------------------------------------
    def fit(self, X, y, sample_ids=None, sample_weight=None):
        """Build the kNN memory, compute leave-one-out ``p_kNN``, train the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Labels (at least 2 classes).
        sample_ids : array-like of shape (n_samples,), default=None
            Stable ids for the memory (see :class:`KNNVoter`).
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights (finite, >= 0): of each sample's vote in the
            memory and of its term in the head's loss. A zero weight leaves the
            sample out, as if absent from ``X`` (sklearn's convention, on which
            ``BaggingClassifier`` relies); its label still joins ``classes_``.

        Returns
        -------
        self : JointKNNClassifier
            The fitted estimator.
        """
        with self._editing():
            return self._fit(
                X,
                y,
                sample_ids,
                max_epochs=self.max_epochs,
                sample_weight=sample_weight,
            )

    def _fit(self, X, y, sample_ids, **kwargs):
        # validate_data sets n_features_in_ first; a fit failing later (one
        # class, bad ids) must leave the estimator as it was.
        with restore_attributes_on_error(self, ("n_features_in_", "feature_names_in_")):
            return self._fit_unguarded(X, y, sample_ids, **kwargs)

    def _fit_unguarded(
        self, X, y, sample_ids, *, max_epochs: int, classes=None, sample_weight=None
    ):
        self._check_params()
        X, y = validate_xy(self, X, y, reset=True)
        X, y, sample_ids, sample_weight, classes = drop_absent_samples(
            self, X, y, sample_ids, sample_weight, classes, first_call=True
        )
        check_first_classes(self, classes, y)
        known = np.unique(y if classes is None else np.r_[np.unique(y), classes])
        if known.shape[0] < 2:
            raise ValueError(
                "JointKNNClassifier needs at least 2 classes (in y, or passed as "
                f"classes= to the first partial_fit); got 1 class ({known[0]!r})."
            )
        device = resolve_device(self.device, owner=type(self).__name__)
        knn = clone(self.knn if self.knn is not None else _default_knn())
        if "knn_" in self.__dict__:  # a refit continues the memory's chain
            knn._continue_chain(self.knn_)
        # KNNVoter's default ids, made explicit: p_kNN is looked up by id.
        ids = np.arange(len(y)) if sample_ids is None else np.asarray(sample_ids)
        # A fresh clone's first partial_fit is its fit, with extra classes known.
        knn.partial_fit(
            X, y, classes=classes, sample_ids=ids, sample_weight=sample_weight
        )
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float32)
        codes = np.searchsorted(knn.classes_, y)
        p_true = self._p_true(knn, codes, ids) if self._uses_p_knn() else None
        settings, gen = HeadSettings.of(self), self._generator()
        head, result = fit_new_head(
            X,
            codes,
            len(knn.classes_),
            p_true,
            sw,
            settings=settings,
            device=device,
            generator=gen,
            max_epochs=max_epochs,
        )
        self.knn_ = knn
        self.classes_ = knn.classes_
        self.head_ = head
        self.device_ = device
        self.knn_train_proba_ = p_true
        self.loss_curve_ = list(result["loss_curve"])
        self.validation_scores_ = list(result["val_scores"])
        self.best_epoch_ = int(result["best_epoch"])
        self.n_iter_ = int(result["n_epochs"])
        self.solver_ = settings.solver_for(device)
        self._train_ids = np.asarray(ids, dtype=np.int64)  # validated by the store
        # The memory keeps pre-processed vectors (centred, unit length, maybe
        # float16); a retrain after unlearn must see the rows as given to equal
        # a fresh fit.
        self._train_rows = RowBuffer(X)
        self._generator_state = gen.get_state()
        record_head(knn, len(y), ids)
        return self

    @fill_doc
    def partial_fit(self, X, y, classes=None, sample_ids=None, sample_weight=None):
        """Add samples: into the memory at once, then a rehearsal of the head.

        The head takes a few SGD passes over the new samples together with a
        random rehearsal sample of the memory (``REPLAY_PER_NEW`` old samples
        per new one): the memory holds every old sample, so the head learns the
        new ones without forgetting the rest. A new class adds an output row
        (existing rows kept exactly); on a linear head it starts along the mean
        of its samples, its length and bias fitted on that rehearsal set with
        classes weighted equally (weight imprinting), so it is recognised from
        its first batch on. The first call fits on its batch as :meth:`fit`.

        %(partial_fit_Xy)s
        classes : array-like, default=None
            Labels to know before their samples arrive.
        sample_ids : array-like of shape (n_samples,), default=None
            Unique ids not yet used; default: fresh ids after the largest ever
            issued.
        sample_weight : array-like of shape (n_samples,), default=None
            See :meth:`fit`; a call whose weights are all zero changes nothing.

        Returns
        -------
        self : JointKNNClassifier
            The estimator, its memory grown and its head updated.
        """
        with self._editing():
            if not hasattr(self, "head_"):
                return self._fit(
                    X,
                    y,
                    sample_ids,
                    max_epochs=1,
                    classes=classes,
                    sample_weight=sample_weight,
                )
            return self._partial_fit(X, y, classes, sample_ids, sample_weight)

    def _partial_fit(self, X, y, classes, sample_ids, sample_weight):
        self._check_params()
        X, y = validate_xy(self, X, y, reset=False)
        X, y, sample_ids, sample_weight, classes = drop_absent_samples(
            self, X, y, sample_ids, sample_weight, classes, first_call=False
        )
        if y.shape[0] == 0:  # every weight zero: no sample to learn from
            return self
        store = self.knn_.memory_
        ids = store.next_ids(len(y)) if sample_ids is None else sample_ids
        # What a failure restores (the head copied: training changes it in place).
        saved = {k: getattr(self, k) for k in _PARTIAL_FIT_STATE}
        saved["head_"], n_loss = copy.deepcopy(self.head_), len(self.loss_curve_)
        self.knn_.partial_fit(
            X, y, classes=classes, sample_ids=ids, sample_weight=sample_weight
        )
        ids = np.asarray(ids, dtype=np.int64)
        try:
            self._learn_added(X, y, ids, sample_weight)
            record_head(self.knn_, len(y), ids)
        except BaseException:
            # All or nothing: the memory forgets the samples, the head and the
            # bookkeeping go back to what they were.
            self.knn_._logged_removal("rollback", ids, retrain_index=False)
            self.__dict__.update(saved)
            self._training_rows().truncate(len(self._train_ids))
            del self.loss_curve_[n_loss:]
            raise
        return self

    def _learn_added(self, X, y, ids, sample_weight) -> None:
        """The head's part of partial_fit, once the memory holds the samples."""
        old = self.classes_
        store = self.knn_.memory_
        old_ids = self._train_ids
        rows = self._training_rows()
        rows.append(X)
        self._train_ids = np.concatenate([old_ids, ids])
        added = self._sync_head_classes(old)
        codes = np.searchsorted(self.classes_, y)
        tracked = self.knn_train_proba_ is not None
        if tracked or self._uses_p_knn():
            p_true = self._p_true(self.knn_, codes, ids)
        else:
            p_true = np.ones(len(y), np.float32)  # unused by plain cross-entropy
        gen = torch.Generator()
        gen.set_state(self._generator_state)
        # Rehearse: the memory holds every old sample, so the head revisits some
        # beside the new ones (skknn.heads._fitting.rehearse).
        at = replay_positions(len(old_ids), len(y), gen)
        data = store.get(old_ids[at])
        data.X = rows.rows[at]
        r_codes = np.searchsorted(self.classes_, data.labels)
        r_p = (
            self._p_true(self.knn_, r_codes, old_ids[at])
            if self._uses_p_knn() and at.size
            else np.ones(at.size, np.float32)
        )
        loss = rehearse(
            self.head_,
            added,
            (X, codes, p_true, sample_weight),
            (data.X, r_codes, r_p, data.sample_weight),
            settings=HeadSettings.of(self),
            n_train=len(self._train_ids),
            generator=gen,
            device=self.device_,
        )
        self._generator_state = gen.get_state()
        self.loss_curve_.append(loss)
        if tracked:
            self.knn_train_proba_ = np.concatenate([self.knn_train_proba_, p_true])

    def _uses_p_knn(self) -> bool:
        return HeadSettings.of(self).uses_p_knn()

    @staticmethod
    def _p_true(knn: KNNVoter, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Leave-one-out ``p_kNN`` of each sample's own class (``codes``)."""
        return knn.loo_proba(ids)[np.arange(len(codes)), codes].astype(np.float32)

    def _sync_head_classes(self, old: np.ndarray) -> np.ndarray:
        """Give the head an output per class of the grown ``knn_.classes_``;
        returns the new rows."""
        self.head_, added, self._generator_state = grow_head(
            self.head_, old, self.knn_.classes_, self._generator_state
        )
        self.classes_ = self.knn_.classes_
        return added

    @property
    def memory_(self):
        return self.knn_.memory_

    def unlearn(self, sample_ids, retrain: bool = True, retrain_index: bool = True):
        """Remove samples from the memory and, by default, from the head.

        Parameters
        ----------
        sample_ids : array-like of int
            Ids in ``knn_.sample_ids_``.
        retrain : bool, default=True
            Refit everything on the remaining samples with the same parameters
            and seed: the result equals a fresh ``fit`` on what remains, so
            nothing of the removed samples survives (the head's weights, the kNN
            centre, the leave-one-out ``p_kNN``; a class left without samples
            disappears, as it would from a fresh fit). With False only the
            memory forgets: the head still carries what it learnt from them.
        retrain_index : bool, default=True
            With ``retrain=False``: see :meth:`KNNVoter.unlearn` (a retrained
            JOINT builds a fresh index anyway).

        Returns
        -------
        self : JointKNNClassifier
            The estimator, without the removed samples.

        Raises
        ------
        ValueError
            With ``retrain=True``, when the ids are every sample in memory or
            leave samples of one class only: there is nothing to retrain the
            head on. Nothing changes; fit anew to start over. With
            ``retrain=False`` the memory may be emptied, as
            :meth:`KNNVoter.unlearn` allows: prediction then says the memory
            is empty until :meth:`partial_fit` adds samples.
        """
        check_is_fitted(self)
        with self._editing():
            return self._unlearn(sample_ids, retrain, retrain_index)

    def _unlearn(self, sample_ids, retrain, retrain_index):
        store = self.knn_.memory_
        removed = store.check_removable(sample_ids)
        keep = ~np.isin(self._train_ids, removed)
        if retrain:
            # Refit on what is kept, in training order: the rows as given, the
            # labels and weights as the memory holds them.
            kept_ids = self._train_ids[keep]
            check_retrainable(self, kept_ids, removed)
            data = store.get(kept_ids)
            check_classes_left(self, data.labels)
            names = self.__dict__.get("feature_names_in_")
            # The refit is this unlearn's edit of the memory, logged as such.
            with named_edit("unlearn", removed, retrain=True):
                self._fit(
                    self._training_rows().rows[keep],
                    data.labels,
                    kept_ids,
                    max_epochs=self.max_epochs,
                    sample_weight=data.sample_weight,
                )
            if names is not None:  # the memory gives arrays; the names stay
                self.feature_names_in_ = names
        else:
            self.knn_.unlearn(removed, retrain_index=retrain_index)
            self._training_rows().keep(keep)
            self._train_ids = self._train_ids[keep]
            if self.knn_train_proba_ is not None:
                self.knn_train_proba_ = self.knn_train_proba_[keep]
        return self

    def _training_rows(self) -> RowBuffer:
        """The training rows as given, aligned with ``_train_ids``."""
        rows = self.__dict__.get("_train_rows")
        if rows is None:
            # Saved before skknn kept them: the memory's copy is all there is.
            rows = RowBuffer(self.knn_.memory_.get(self._train_ids).X)
            self._train_rows = rows
        return rows

    # -- persistence ----------------------------------------------------------
    def __skknn_reading__(self):
        """Hold the head's and the memory's state while they are written."""
        return self._reading_with(self.knn_)

    def __skknn_save__(self) -> tuple[dict, dict]:
        check_is_fitted(self)
        knn_meta, knn_arrays = self.knn_.__skknn_save__()
        arrays = {"knn/" + k: v for k, v in knn_arrays.items()}
        arrays["head"] = _head.head_to_bytes(self.head_)
        arrays["train_ids"] = self._train_ids
        arrays["train_X"] = self._training_rows().rows
        if self.knn_train_proba_ is not None:
            arrays["knn_train_proba"] = self.knn_train_proba_
        arrays["generator_state"] = self._generator_state.numpy()
        meta = {
            "knn": knn_meta,
            "knn_params": params_to_json(self.knn_),
            "device": str(self.device_),
            "loss_curve": [float(v) for v in self.loss_curve_],
            "validation_scores": [float(v) for v in self.validation_scores_],
            "best_epoch": self.best_epoch_,
            "n_iter": self.n_iter_,
            "solver": self.solver_,
            "classes": labels_to_json(self.classes_),
            **(
                {"feature_names_in": [str(f) for f in self.feature_names_in_]}
                if hasattr(self, "feature_names_in_")
                else {}
            ),
        }
        return meta, arrays

    def __skknn_load__(self, meta: dict, arrays: dict, version: int) -> None:
        knn = KNNVoter(**params_from_json(meta["knn_params"]))
        knn.__skknn_load__(meta["knn"], subtree(arrays, "knn/"), version)
        if version < 2:
            # skknn 0.1 kept the raw training inputs beside the memory (rows
            # aligned): they give the vector lengths the store now keeps.
            knn.memory_ = VectorStore.from_v1_state(
                meta["knn"]["memory"],
                subtree(arrays, "knn/memory/"),
                preprocessing=knn.memory_.preprocessing,
                classes=knn.memory_.classes,
                mean=knn.memory_.mean,
                device=knn.memory_.device,
                raw=arrays["X_train"],
            )
        head, state = _head.head_from_bytes(arrays["head"])
        self.knn_ = knn
        # The head's classes: the memory may know one more after a failed
        # partial_fit (a class with no samples left).
        self.classes_ = (
            labels_from_json(meta["classes"]) if "classes" in meta else knn.classes_
        )
        self.n_features_in_ = knn.n_features_in_
        if "feature_names_in" in meta:
            names = np.asarray(meta["feature_names_in"], dtype=object)
            if names.shape != (self.n_features_in_,):
                raise ValueError("feature_names_in disagrees with n_features_in")
            self.feature_names_in_ = names
        self.head_ = head
        self.device_ = device_after_unpickling(
            meta["device"], owner=type(self).__name__
        )
        self._train_ids = arrays.get("train_ids", knn.sample_ids_)
        self.knn_train_proba_ = arrays.get("knn_train_proba")
        n = knn.memory_.n_samples
        if not np.array_equal(np.sort(self._train_ids), np.sort(knn.sample_ids_)):
            raise ValueError("train_ids are not the memory's sample ids")
        if self.knn_train_proba_ is not None and self.knn_train_proba_.shape != (n,):
            raise ValueError("knn_train_proba is not one value per memory sample")
        self._train_rows = None  # a file from before skknn kept them
        if "train_X" in arrays:
            rows = arrays["train_X"]
            if rows.dtype != np.float32 or rows.shape != (n, self.n_features_in_):
                raise ValueError(
                    f"train_X is {rows.dtype} of shape {rows.shape}, not float32 "
                    f"rows of the memory's {n} samples x {self.n_features_in_} features"
                )
            self._train_rows = RowBuffer(rows)
        _head.check_restored(head, state, self.n_features_in_, len(self.classes_))
        self._generator_state = torch.from_numpy(arrays["generator_state"].copy())
        torch.Generator().set_state(self._generator_state)  # refuses a bad state
        self._check_params()
        self.loss_curve_ = meta["loss_curve"]
        self.validation_scores_ = meta["validation_scores"]
        self.best_epoch_ = meta["best_epoch"]
        self.n_iter_ = meta["n_iter"]
        self.solver_ = meta.get("solver", "sgd")  # format 1: always SGD
        self._lock()

    def __setstate__(self, state):
        super().__setstate__(state)
        if "device_" in self.__dict__:
            self.device_ = device_after_unpickling(
                str(self.device_), owner=type(self).__name__
            )
