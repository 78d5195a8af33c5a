"""Frozen torch backbones as scikit-learn transformers: images in, embeddings out.

:class:`TorchFeatureExtractor` turns images (arrays, file paths or PIL images) into
fixed-length float32 embeddings with a pretrained network, so that a kNN memory can
be built on them inside an ordinary sklearn ``Pipeline``. The backbone is frozen:
``fit`` only loads and checks it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from tqdm import tqdm

from skknn._device import device_after_unpickling, resolve_device
from skknn._memory_params import MEMORY_PARAMETER_CONSTRAINTS, MEMORY_PARAMETER_HINTS
from skknn._param_validation import Interval, StrOptions, check_params
from skknn.features._image_pipeline import (
    ArraySource,
    BatchPipeline,
    ItemSource,
    TabularSource,
    is_image_item,
)
from skknn.features._registry import (
    ModelSpec,
    accepts_rows,
    as_size,
    available_models,
    get_model_spec,
    register_model,
)
from skknn.io import register_params

__all__ = ["TorchFeatureExtractor", "available_models", "register_model"]

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_POOLINGS = ("avg", "max", "none")


# --- the estimator ----------------------------------------------------------------


@register_params
class TorchFeatureExtractor(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Embed images with a frozen, pretrained torch backbone.

    ``fit`` loads the backbone (nothing is trained); ``transform`` decodes, resizes
    and normalises the images batch by batch, runs the backbone under
    ``torch.inference_mode()`` in eval mode and returns float32 embeddings.

    Parameters
    ----------
    model : str, callable or torch.nn.Module, default="efficientnet-lite0"
        The backbone:

        - a registered name (see :func:`available_models` and
          :func:`register_model`): ``"efficientnet-lite0"`` (ImageNet-pretrained,
          1280-d, 224 px), ``"tiny-cnn"`` (seeded random 16-d CNN for examples),
          ``"identity"`` (flattens; 2-D ``X`` passes through as float32);
        - ``"torchvision:<name>"``, ``"timm:<name>"`` or
          ``"hub:<owner>/<repo>[:<ref>]:<entrypoint>"`` (e.g.
          ``"hub:facebookresearch/dinov2:dinov2_vits14"``): pretrained models of
          those libraries, loaded only from their local caches;
        - a zero-argument callable returning an ``nn.Module``: images get no
          normalisation and no resizing unless ``image_size`` is set (use
          :func:`register_model` to declare both);
        - an ``nn.Module`` instance: used as is, not copied: ``fit`` puts *that*
          module in eval mode, freezes it and moves it to ``device`` and
          ``dtype``, and joblib pickles it whole, on its device.
    layer : str, default=None
        Name of a submodule (as in ``model.named_modules()``) whose output is the
        embedding, captured by a forward hook; the forward pass stops there. If the
        submodule runs several times, its first output is used. None: the model's
        own embedding (for ``"efficientnet-lite0"``, ``extract_features``).
    pooling : {"avg", "max", "none"}, default="avg"
        Reduction of a 4-D feature map (n, C, H, W) over H and W, or of a 3-D
        token sequence (n, T, D) over T; ``"none"`` flattens. 2-D outputs are
        returned as they are.
    image_size : int or (int, int), default=None
        Size images are resized to (bilinear, antialiased, no crop). None: the
        registered model's input size, or no resizing if it has none.
    batch_size : int, default=64
        Images decoded and embedded at a time; bounds memory.
    device : str, default="auto"
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    dtype : {"float32", "float16", "bfloat16"}, default="float32"
        Compute dtype of the backbone; the embeddings are float32 regardless.
    progress : bool, default=False
        Show a tqdm progress bar over batches in ``transform``.

    Attributes
    ----------
    model_ : torch.nn.Module
        The loaded backbone, in eval mode with ``requires_grad=False``.
    device_ : torch.device
        Device the backbone runs on.
    input_size_ : tuple of (int, int) or None
        Size images are resized to, None for no resizing.
    embedding_dim_ : int
        Number of output features.
    n_features_in_ : int
        Number of features of 2-D ``X`` seen in ``fit`` (set only for 2-D input).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features of 2-D ``X`` with string column names.

    See Also
    --------
    register_model : Add a named backbone with its preprocessing.

    Notes
    -----
    Accepted ``X``:

    - uint8 (0-255), uint16, bool or float arrays of images shaped (n, H, W)
      (greyscale), (n, H, W, C) or (n, C, H, W) with C in {1, 3, 4}; when both
      readings fit, channels last is assumed. 4 channels are RGBA: the alpha
      channel is dropped, as Pillow's ``convert("RGB")`` does for RGBA files
      (composite onto a background first if transparency matters). **Float
      pixels are assumed to lie in [0, 1]** (a warning is raised above 1);
    - a list of file paths, PIL images or single-image arrays (sizes may differ);
    - a 2-D array (n, d): passed to the model unchanged as float32, with no image
      preprocessing (for tabular models and the ``"identity"`` model; registered
      image models refuse it).

    An empty list or array is refused by ``fit`` (it embeds one sample to learn
    the embedding size); ``transform`` returns an empty (0, `embedding_dim_`)
    array.

    Greyscale images are repeated over 3 channels. A single (H, W, 3) image must be
    wrapped, ``X[np.newaxis]`` or ``[image]``: a 3-D array is a batch. Images are
    squashed to ``image_size`` (no crop): crop beforehand to keep aspect ratios.

    Batches keep the memory order of the input: (n, H, W, C) arrays, paths and PIL
    images reach the model as channels-last tensors (an NCHW view of NHWC
    memory), which oneDNN convolutions run about 1.4x faster on the CPU than
    (n, C, H, W) input. A custom model must therefore not call ``.view()`` on its
    raw input; ``.reshape()`` works in both orders.

    EfficientNet-Lite0 is normalised as in its TensorFlow reference,
    ``(x - 127/255) / (128/255)`` for ``x`` in [0, 1] (``MEAN_RGB = 127``,
    ``STDDEV_RGB = 128`` on 0-255 pixels), not with the ImageNet statistics.

    Pickling keeps the specification, not the module, when ``model`` is a name or
    a callable: unpickling reloads the weights (a callable's weights are stored
    with the estimator, since a factory may be unseeded) onto the saved device, or
    the CPU with a :class:`~skknn._device.DeviceWarning` if it is missing.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn.features import TorchFeatureExtractor
    >>> images = np.random.default_rng(0).integers(
    ...     0, 256, size=(4, 48, 48, 3), dtype=np.uint8)
    >>> extractor = TorchFeatureExtractor(model="tiny-cnn").fit(images)
    >>> extractor.transform(images).shape
    (4, 16)
    >>> extractor.get_feature_names_out()[:2]
    array(['torchfeatureextractor0', 'torchfeatureextractor1'], dtype=object)
    >>> TorchFeatureExtractor(model="identity").fit_transform([[1, 2], [3, 4]])
    array([[1., 2.],
           [3., 4.]], dtype=float32)
    """

    _parameter_constraints: dict = {
        # a name must be registered, a factory must return a torch.nn.Module
        # (itself callable): both checked after the table
        "model": [str, callable],
        # the layer must exist in the model: checked once it is loaded
        "layer": [str, None],
        "pooling": [StrOptions(set(_POOLINGS))],
        # a (height, width) pair's values are checked after the table
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": MEMORY_PARAMETER_CONSTRAINTS["device"],
        "dtype": [StrOptions(set(_DTYPES))],
        "progress": ["boolean"],
    }

    @property
    def _parameter_hints(self) -> dict:
        """What to pass instead (see _param_validation); a property, as the
        registered models are those registered by now."""
        return {
            "model": (
                f"Pass a registered model name (one of {available_models()} or a "
                "'torchvision:', 'timm:' or 'hub:' name), a callable returning a "
                "torch.nn.Module, or a torch.nn.Module."
            ),
            "device": MEMORY_PARAMETER_HINTS["device"],
        }

    def __init__(
        self,
        model: str | Callable[[], nn.Module] | nn.Module = "efficientnet-lite0",
        *,
        layer: str | None = None,
        pooling: str = "avg",
        image_size: int | tuple[int, int] | None = None,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "float32",
        progress: bool = False,
    ) -> None:
        self.model = model
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.progress = progress

    # -- parameters and model -------------------------------------------------------

    def _check_params(self) -> tuple[ModelSpec | None, tuple[int, int] | None]:
        check_params(self)
        # Beyond the table: a model name must be registered (the registry
        # suggests close names), and a (height, width) pair holds ints >= 1.
        spec = get_model_spec(self.model) if isinstance(self.model, str) else None
        owner = type(self).__name__
        image_size = as_size(self.image_size, f"The 'image_size' parameter of {owner}")
        return spec, image_size

    def _load_model(
        self,
        spec: ModelSpec | None,
        device: torch.device,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> nn.Module:
        owner = type(self).__name__
        if isinstance(self.model, nn.Module):
            model = self.model
        else:
            factory = spec.factory if spec is not None else self.model
            model = factory()
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"The 'model' factory of {owner} must return a torch.nn.Module. "
                    f"Got {type(model).__name__} instead."
                )
            if weights is not None:
                model.load_state_dict(weights)
        model.eval()
        model.requires_grad_(False)
        return model.to(device=device, dtype=_DTYPES[self.dtype])

    def _pipeline(self) -> BatchPipeline:
        return BatchPipeline(
            model=self.model_,
            device=self.device_,
            dtype=_DTYPES[self.dtype],
            input_size=self.input_size_,
            mean=self._mean,
            std=self._std,
            hook_layer=self._hook_layer,
            method=self._embedding_method,
            pooling=self.pooling,
        )

    # -- input ----------------------------------------------------------------------

    def _source(self, X: Any, *, reset: bool):
        """Wrap X in a batch source; 2-D input goes through ``validate_data``."""
        if isinstance(X, (list, tuple)) and (not len(X) or is_image_item(X[0])):
            # [] holds no rows and no images: 0 samples, not a 1-D array.
            return ItemSource(X)
        ndim = getattr(X, "ndim", None)
        if ndim is None and isinstance(X, (list, tuple)):
            array = np.asarray(X)  # nested lists of pixels
            ndim, X = array.ndim, (array if array.ndim in (3, 4) else X)
        if ndim in (3, 4) and not hasattr(X, "tocsr"):
            return ArraySource(np.asarray(X))
        if ndim is not None and ndim > 4:
            raise ValueError(
                f"X has {ndim} dimensions; expected 2 (tabular), 3 (n, H, W) or 4 "
                "(n, H, W, C) / (n, C, H, W)."
            )
        if ndim == 2 and not reset and not accepts_rows(self.model):
            raise ValueError(self._rows_message(getattr(X, "shape", None)))
        X = validate_data(self, X, dtype=np.float32, reset=reset)
        return TabularSource(X)

    def _rows_message(self, shape) -> str:
        """Why 2-D X does not suit an image model, and the shapes it takes."""
        return (
            f"X is 2-D (shape {shape}): 2-D X is read as rows of features "
            "(n_samples, n_features) and passed to the model unchanged, for models "
            f"that take vectors such as model='identity'. model={self.model!r} "
            "takes images: an (n, H, W), (n, H, W, C) or (n, C, H, W) array or a "
            "list of images; one greyscale image (H, W) goes as X[np.newaxis]."
        )

    def _dim_message(self, source, width: int) -> str:
        """The embedding width differs from fit's: say what the input was."""
        if isinstance(source, TabularSource):
            given = f"X (rows of {source.X.shape[1]} features, passed unchanged)"
        else:
            given = "X (images)"
        identity = ""
        if isinstance(self.model, str) and self.model == "identity":
            identity = (
                " model='identity' flattens its input: 2-D rows (n, d) give d "
                "features, images give 3 * H * W (greyscale repeated over 3 "
                "channels, after resizing to image_size)."
            )
        return (
            f"{given} gives {width}-dimensional embeddings, but "
            f"{type(self).__name__} was fitted on input giving "
            f"{self.embedding_dim_}: give X in the form and size fit had." + identity
        )

    # -- fit / transform ------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> TorchFeatureExtractor:
        """Load and check the backbone; nothing is trained.

        One sample of ``X`` is embedded to check that the model accepts it and to
        learn the embedding size.

        Parameters
        ----------
        X : array-like or list
            Images or 2-D data, in any form :meth:`transform` accepts.
        y : None
            Ignored.

        Returns
        -------
        self : TorchFeatureExtractor
            The fitted extractor.
        """
        owner = type(self).__name__
        spec, image_size = self._check_params()
        device = resolve_device(self.device, owner=owner)
        source = self._source(X, reset=True)
        if source.n == 0:
            raise ValueError(
                f"{owner}.fit got an empty X ({type(X).__name__} of 0 samples); it "
                "embeds one sample to learn the embedding size: give at least one "
                "image or row."
            )
        model = self._load_model(spec, device)

        hook_layer = self.layer
        method = None
        input_size = None
        if spec is not None:
            input_size = spec.input_size
            hook_layer = hook_layer if hook_layer is not None else spec.embedding_layer
            method = spec.embedding_method
        modules = dict(model.named_modules())
        if hook_layer is not None and hook_layer not in modules:
            close = difflib.get_close_matches(hook_layer, list(modules), n=3)
            raise ValueError(
                f"The 'layer' parameter of {owner} must name a submodule of the model "
                f"(see model.named_modules()). Got {hook_layer!r}; close names: "
                f"{close}; first names: {list(modules)[1:6]}."
            )
        if method is not None and not callable(getattr(model, method, None)):
            raise ValueError(f"The model has no method {method!r} to embed with.")

        pipe = BatchPipeline(
            model=model,
            device=device,
            dtype=_DTYPES[self.dtype],
            input_size=image_size if image_size is not None else input_size,
            mean=spec.mean if spec is not None else None,
            std=spec.std if spec is not None else None,
            hook_layer=hook_layer,
            method=method,
            pooling=self.pooling,
        )
        try:
            with torch.inference_mode():
                probe = pipe.embed(source.batch(0, 1, pipe))
        except RuntimeError as exc:
            tabular = isinstance(source, TabularSource)
            rows = self._rows_message(source.X.shape) if tabular else ""
            raise ValueError(
                f"{owner}: the model could not embed the first sample of X "
                f"({type(X).__name__}): {exc}. {rows}"
            ) from exc

        # Validated: commit the fitted state.
        if not isinstance(source, TabularSource):
            for stale in ("n_features_in_", "feature_names_in_"):
                self.__dict__.pop(stale, None)
        self.model_ = model
        self.device_ = device
        self.input_size_ = pipe.input_size
        self._mean, self._std = pipe.mean, pipe.std
        self._hook_layer, self._embedding_method = hook_layer, method
        self.embedding_dim_ = int(probe.shape[1])
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed ``X``.

        Parameters
        ----------
        X : array-like or list
            Images as (n, H, W), (n, H, W, C) or (n, C, H, W) arrays (uint8 0-255
            or float 0-1), a list of file paths, PIL images or single-image arrays,
            or a 2-D array passed to the model unchanged.

        Returns
        -------
        embeddings : ndarray of shape (n_samples, `embedding_dim_`), dtype float32
            One row per sample.
        """
        check_is_fitted(self)
        source = self._source(X, reset=False)
        pipe = self._pipeline()
        out = np.empty((source.n, self.embedding_dim_), dtype=np.float32)
        starts = range(0, source.n, self.batch_size)
        bar = tqdm(
            starts, disable=not self.progress, desc=type(self).__name__, unit="batch"
        )
        with torch.inference_mode():
            for start in bar:
                stop = min(start + self.batch_size, source.n)
                emb = pipe.embed(source.batch(start, stop, pipe))
                if emb.shape[1] != self.embedding_dim_:
                    raise ValueError(self._dim_message(source, emb.shape[1]))
                out[start:stop] = emb.float().cpu().numpy()
        return out

    # -- for training the backbone (skknn.finetune) ---------------------------------

    def decode(self, X: Any) -> torch.Tensor:
        """The model's input for ``X``: every image decoded, resized and
        normalised, on the backbone's device (no embedding).

        Parameters
        ----------
        X : array-like or list
            Images, as :meth:`transform` takes them.

        Returns
        -------
        inputs : torch.Tensor of shape (n_samples, C, H, W)
            What :meth:`embed_inputs` takes.
        """
        check_is_fitted(self)
        source = self._source(X, reset=False)
        pipe = self._pipeline()
        parts = [
            source.batch(s, min(s + self.batch_size, source.n), pipe)
            for s in range(0, source.n, self.batch_size)
        ]
        return torch.cat(parts) if parts else torch.empty(0)

    def embed_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings of decoded inputs, with gradients where the backbone has
        them (call it under ``torch.inference_mode()`` for inference).

        Parameters
        ----------
        inputs : torch.Tensor of shape (n_samples, C, H, W)
            As :meth:`decode` gives them.

        Returns
        -------
        embeddings : torch.Tensor of shape (n_samples, `embedding_dim_`)
            In the compute dtype, on the backbone's device.
        """
        check_is_fitted(self)
        return self._pipeline().embed(inputs)

    def fitted_state(self) -> dict:
        """What :meth:`fit` learnt besides the weights, as JSON-able values.

        Returns
        -------
        state : dict
            Device, input size, normalisation, captured layer, embedding method
            and width: with :meth:`from_fitted_state`, a fitted extractor is
            rebuilt without embedding a probe image.
        """
        check_is_fitted(self)
        return {
            "device": str(self.device_),
            "input_size": None if self.input_size_ is None else list(self.input_size_),
            "mean": None if self._mean is None else list(self._mean),
            "std": None if self._std is None else list(self._std),
            "hook_layer": self._hook_layer,
            "method": self._embedding_method,
            "embedding_dim": int(self.embedding_dim_),
        }

    def from_fitted_state(
        self, state: dict, device=None, weights: dict | None = None
    ) -> TorchFeatureExtractor:
        """Become fitted from :meth:`fitted_state`, the backbone loaded anew.

        Parameters
        ----------
        state : dict
            As :meth:`fitted_state` gave it.
        device : str or torch.device, default=None
            Where the backbone goes; the saved device when None.
        weights : dict of str to torch.Tensor, default=None
            A state dict loaded over the pretrained weights (a trained backbone).

        Returns
        -------
        self : TorchFeatureExtractor
            The fitted extractor.
        """
        spec, _ = self._check_params()
        device = torch.device(state["device"] if device is None else device)
        model = self._load_model(spec, device)
        if weights is not None:
            model.load_state_dict(weights)
        self.model_, self.device_ = model, device
        size = state["input_size"]
        self.input_size_ = None if size is None else tuple(size)
        self._mean = None if state["mean"] is None else tuple(state["mean"])
        self._std = None if state["std"] is None else tuple(state["std"])
        self._hook_layer, self._embedding_method = state["hook_layer"], state["method"]
        self.embedding_dim_ = int(state["embedding_dim"])
        return self

    @property
    def _n_features_out(self) -> int:
        # Read by ClassNamePrefixFeaturesOutMixin.get_feature_names_out; raising
        # AttributeError before fit makes it raise NotFittedError.
        return self.embedding_dim_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Embeddings are float32 whatever the input dtype.
        tags.transformer_tags.preserves_dtype = ["float32"]
        # (n, H, W) greyscale image batches are valid input; 2-D rows only for
        # models that embed vectors (sklearn skips its 2-D checks for the rest).
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = accepts_rows(self.model)
        return tags

    # -- pickling -------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        if "model_" in state and not isinstance(self.model, nn.Module):
            # A name or factory rebuilds the module on load: no pickled module code,
            # and no CUDA tensors that a CPU-only machine could not unpickle.
            model = state.pop("model_")
            if not isinstance(self.model, str):
                # A factory may be unseeded: keep its weights, on the CPU.
                state["_factory_weights"] = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in model.state_dict().items()
                }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.pop("_factory_weights", None)
        super().__setstate__(state)
        if "device_" in state and "model_" not in state:
            owner = type(self).__name__
            self.device_ = device_after_unpickling(str(self.device_), owner=owner)
            spec = get_model_spec(self.model) if isinstance(self.model, str) else None
            self.model_ = self._load_model(spec, self.device_, weights=weights)
