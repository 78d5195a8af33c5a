"""Where computation runs: torch devices and what FAISS can do on this machine.

Every device decision in skknn goes through this module, so "auto", explicit CUDA
requests and the CPU fallback after unpickling behave the same in every estimator.
"""

from __future__ import annotations

import functools
import warnings

import torch


class DeviceWarning(UserWarning):
    """Warned when a model saved on a GPU is loaded where that GPU is missing.

    The model is loaded onto the CPU instead.

    Examples
    --------
    >>> from skknn import DeviceWarning
    >>> issubclass(DeviceWarning, UserWarning)
    True
    """


def resolve_device(
    device: str | torch.device, *, owner: str = "estimator"
) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a ``torch.device``.

    ``"auto"`` picks the first CUDA device when one is present, else the CPU. An
    explicit CUDA request on a machine without CUDA is an error, not a silent
    fallback: the user asked for something this machine cannot give.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(
            f"The 'device' parameter of {owner} must be a str such as 'auto', "
            f"'cpu' or 'cuda:0'. Got {device!r} instead."
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"The 'device' parameter of {owner} must be 'auto', 'cpu', 'cuda' or "
            f"'cuda:N'. Got {device!r} instead."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{owner} was asked for device={device!r} but CUDA is not available "
                "on this machine. Use device='auto' or 'cpu'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"{owner} was asked for device={device!r} but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif resolved.type != "cpu":
        raise ValueError(
            f"The 'device' parameter of {owner} must be 'auto', 'cpu', 'cuda' or "
            f"'cuda:N'. Got {device!r} instead."
        )
    return resolved


def device_after_unpickling(saved: str, *, owner: str = "estimator") -> torch.device:
    """The device to restore a pickled model onto: the saved one if it still exists.

    A model fitted on a GPU machine and loaded on a CPU-only one falls back to the
    CPU with a :class:`DeviceWarning` instead of failing (as skorch does).
    """
    device = torch.device(saved)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"{owner} was saved on {saved!r}, but CUDA is not available here; "
            "it was loaded onto the CPU.",
            DeviceWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return device


def faiss_available() -> bool:
    """True when the ``faiss`` module can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use: 0 unless FAISS is built with GPU support *and*
    a GPU is present.

    The two are separate checks: ``faiss-gpu`` imports fine on a machine without a
    GPU, and ``index_cpu_to_all_gpus`` then silently returns an empty index.
    """
    try:
        import faiss
    except ImportError:
        return 0
    if "GPU" not in faiss.get_compile_options().split() and not hasattr(
        faiss, "StandardGpuResources"
    ):
        return 0
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def import_faiss(owner: str = "skknn"):
    """Import FAISS or explain how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            f"{owner} needs FAISS for this index. Install it with "
            "`pip install skknn[cpu]` (faiss-cpu) or `pip install skknn[gpu]` "
            "(faiss-gpu), never both; or use index='exact' (torch search)."
        ) from exc
    return faiss


def resolve_engine(index: str, device: torch.device) -> str:
    """The store engine for a ``KNNVoter.index`` on ``device`` (decided where the
    memory lives: in this process, or on each Dask worker for a sharded one)."""
    if index != "auto":
        return index
    if not faiss_available():
        return "exact"
    if device.type == "cuda" and faiss_gpu_count() == 0:
        return "exact"  # torch on the GPU beats FAISS on the CPU
    return "auto"  # the store picks by its size (flat, or compact codes)
