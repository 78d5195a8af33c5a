"""The per-batch path of :class:`~skknn.features.TorchFeatureExtractor`: inputs
(2-D rows, image arrays, file paths, PIL images) decoded into pixel tensors one
batch at a time, then resized, normalised, run through the model (or up to a
captured layer) and pooled into embeddings.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ArraySource",
    "BatchPipeline",
    "ItemSource",
    "TabularSource",
    "is_image_item",
]


def _check_pixel_dtype(dtype: np.dtype, where: str) -> None:
    ok = dtype.kind in "bf" or dtype in (np.dtype(np.uint8), np.dtype(np.uint16))
    if not ok:
        raise TypeError(
            f"{where} must hold uint8 (0-255), uint16 (0-65535), bool or float "
            f"(0-1) pixels. Got dtype {dtype} instead."
        )


def _channels_last(shape: tuple[int, ...], where: str) -> bool:
    """Whether an image (or batch) of this shape has its channels last.

    Channels are 1, 3 or 4 (RGBA, whose alpha :func:`_drop_alpha` removes). When
    both readings are possible (an image 1 or 3 pixels wide) the NumPy/PIL
    convention, channels last, wins; 4 is tried only after 1 and 3, so that an
    RGB image 4 pixels wide, (3, H, 4), keeps its reading.
    """
    for channels in ((1, 3), (4,)):
        if shape[-1] in channels:
            return True
        if shape[-3] in channels:
            return False
    raise ValueError(
        f"{where} has shape {shape}: expected 1 or 3 channels (greyscale, RGB) or "
        "4 (RGBA, alpha dropped), first (..., C, H, W) or last (..., H, W, C)."
    )


def _drop_alpha(x: torch.Tensor) -> torch.Tensor:
    """(n, 4, H, W) RGBA -> (n, 3, H, W) RGB: the alpha channel is dropped, as
    Pillow's ``convert("RGB")`` does for RGBA files and PIL images, so an array
    and the file it came from give the same embedding."""
    return x[:, :3] if x.shape[1] == 4 else x


def is_image_item(obj: Any) -> bool:
    if isinstance(obj, (str, os.PathLike)):
        return True
    if isinstance(obj, np.ndarray):
        return obj.ndim in (2, 3)
    # Only PIL images reach here; checking sys.modules avoids importing Pillow,
    # an optional dependency, for array input.
    pil_image = sys.modules.get("PIL.Image")
    return pil_image is not None and isinstance(obj, pil_image.Image)


def _pil_to_array(image) -> np.ndarray:
    # "L" (greyscale) stays one channel and is expanded after resizing, 3x cheaper;
    # palette, RGBA, CMYK, 16-bit... are converted by Pillow's own rules.
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def _read_image(path: str | os.PathLike) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Reading images from file paths needs Pillow: `pip install pillow`."
        ) from exc
    with Image.open(path) as image:
        return _pil_to_array(image)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of ``array`` (a copy only when torch cannot share it)."""
    if array.dtype == np.uint16:
        # torch has no general uint16 arithmetic; scale here, in float32.
        array = array.astype(np.float32) / np.float32(65535.0)
    if not array.flags.writeable:
        # torch.from_numpy warns on read-only memory (memmaps): copy the batch.
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass
class BatchPipeline:
    """Everything a batch goes through: fitted state and checked parameters."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    input_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    hook_layer: str | None
    method: str | None
    pooling: str

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) raw pixels on the CPU -> normalised float32 on the device."""
        # Move before converting: uint8 crosses to a GPU in a quarter of the bytes.
        x = _drop_alpha(x).to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        else:
            x = x.to(torch.float32)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(
                x,
                size=self.input_size,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> pooled (n, d) embedding in the compute dtype."""
        if x.ndim == 4 and x.device.type == "cuda":
            # One memory layout whatever the input's: cuDNN picks its kernels
            # (and their TF32 rounding) by layout, so (H, W, C) and (C, H, W)
            # images gave embeddings 8e-4 apart; channels_last is also the
            # faster one (1.4x on an H200).
            x = x.to(self.dtype, memory_format=torch.channels_last)
        else:
            x = x.to(self.dtype)
        if self.hook_layer is not None:
            out = _capture(self.model, self.hook_layer, x)
        elif self.method is not None:
            out = getattr(self.model, self.method)(x)
        else:
            out = self.model(x)
        return _pool(_first_tensor(out), self.pooling)


class _StopForward(Exception):
    """Raised by the capture hook: later layers are not needed."""


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> Any:
    """Output of submodule ``layer`` during ``model(x)``, stopping the forward there."""
    captured: list[Any] = []

    def hook(module, inputs, output):
        captured.append(output)
        # Nothing after this layer is used: stop instead of computing the rest.
        raise _StopForward

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(
            f"Layer {layer!r} was not called during the model's forward pass, so it "
            "has no output to capture."
        )
    return captured[0]


def _first_tensor(out: Any) -> torch.Tensor:
    """Modules may return tuples or dicts: their first tensor is the output."""
    if isinstance(out, torch.Tensor):
        return out
    values = list(out.values()) if isinstance(out, dict) else out
    if isinstance(values, (tuple, list)):
        for value in values:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"The model returned {type(out).__name__}, which holds no tensor to use as "
        "an embedding."
    )


def _pool(out: torch.Tensor, pooling: str) -> torch.Tensor:
    """(n, ...) -> (n, d). 4-D maps pool over H, W; 3-D token sequences over tokens."""
    if out.ndim in (3, 4) and pooling != "none":
        dims = (2, 3) if out.ndim == 4 else (1,)
        return out.mean(dim=dims) if pooling == "avg" else out.amax(dim=dims)
    return out.reshape(out.shape[0], -1)


class TabularSource:
    """2-D X: rows go to the model unchanged (no image preprocessing)."""

    def __init__(self, X: np.ndarray):
        self.X = X
        self.n = X.shape[0]

    def batch(self, start: int, stop: int, pipe: BatchPipeline) -> torch.Tensor:
        return _to_tensor(self.X[start:stop]).to(pipe.device)


class ArraySource:
    """An (n, H, W), (n, H, W, C) or (n, C, H, W) array; decoded per batch."""

    def __init__(self, X: np.ndarray):
        _check_pixel_dtype(X.dtype, "Image arrays")
        if X.ndim == 3 and X.shape[-1] in (3, 4) and X.shape[1] > 4:
            warnings.warn(
                f"X has shape {X.shape} and is read as {X.shape[0]} greyscale images "
                f"of {X.shape[1]}x{X.shape[2]} pixels. Pass one colour image as "
                "X[np.newaxis] or [image].",
                UserWarning,
                stacklevel=4,
            )
        self.channels_last = X.ndim == 4 and _channels_last(X.shape, "X")
        self.X = X
        self.n = X.shape[0]
        self.warned_range = False

    def batch(self, start: int, stop: int, pipe: BatchPipeline) -> torch.Tensor:
        x = _to_tensor(self.X[start:stop])
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif self.channels_last:
            x = x.permute(0, 3, 1, 2)
        if x.is_floating_point():
            self.warned_range = _check_float_pixels(x, self.warned_range)
        return pipe.preprocess(x)


class ItemSource:
    """A list of paths, PIL images or single-image arrays; decoded per batch."""

    def __init__(self, items: Sequence[Any]):
        self.items = items
        self.n = len(items)
        self.warned_range = False

    def batch(self, start: int, stop: int, pipe: BatchPipeline) -> torch.Tensor:
        images = []
        for i in range(start, stop):
            item = self.items[i]
            if isinstance(item, (str, os.PathLike)):
                array = _read_image(item)
            elif isinstance(item, np.ndarray):
                array = item
            elif is_image_item(item):
                array = _pil_to_array(item)
            else:
                raise TypeError(
                    f"X[{i}] is a {type(item).__name__}; a list X must hold file "
                    "paths, PIL images or single-image arrays."
                )
            where = f"X[{i}]"
            _check_pixel_dtype(array.dtype, where)
            if array.ndim == 2:
                x = _to_tensor(array)[None, None]
            elif array.ndim == 3:
                x = _to_tensor(array)[None]
                if _channels_last(array.shape, where):
                    x = x.permute(0, 3, 1, 2)
            else:
                raise ValueError(
                    f"{where} has shape {array.shape}; one image is (H, W), "
                    "(H, W, C) or (C, H, W)."
                )
            if x.is_floating_point():
                self.warned_range = _check_float_pixels(x, self.warned_range)
            images.append(pipe.preprocess(x))
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"Images X[{start}:{stop}] have different sizes {sorted(shapes)} and "
                "the model has no input size: set image_size to resize them."
            )
        return torch.cat(images)


def _check_float_pixels(x: torch.Tensor, warned: bool) -> bool:
    """Reject NaN/inf; warn, unless ``warned``, about floats that look like 0-255.

    Returns whether a warning has been given, so a transform warns once.
    """
    if not torch.isfinite(x).all():
        raise ValueError("Input X contains NaN or infinity.")
    top = float(x.max()) if x.numel() else 0.0
    if top > 1.0 + 1e-3 and not warned:
        warnings.warn(
            f"Float images are read as pixels in [0, 1], but X reaches {top:g}. "
            "Divide 0-255 floats by 255 or pass uint8.",
            UserWarning,
            stacklevel=5,
        )
        return True
    return warned
