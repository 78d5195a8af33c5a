"""Throughput of TorchFeatureExtractor against the bare EfficientNet-Lite0 module.

Both sides embed the same pre-resized 224x224 images with the same batch size:

- ``bare``: ``model.extract_features(x).mean((2, 3))`` in a loop over batches of an
  already normalised float32 (n, 3, 224, 224) tensor on the device: the floor.
- ``bare (channels_last)``: the same tensor in channels-last memory order. The
  extractor's uint8 HWC path feeds the network channels-last tensors (the NCHW
  view of an NHWC array), which oneDNN convolutions run faster on the CPU, so
  this is the like-for-like floor for that path.
- ``extractor (uint8 HWC)``: ``TorchFeatureExtractor.transform`` on the (n, 224, 224,
  3) uint8 array, so it also pays for conversion, scaling, normalisation, the
  host-to-device copy and the NumPy output.
- ``extractor (float CHW)``: the same on float32 (n, 3, 224, 224) pixels in [0, 1].

Runs are interleaved; each extractor run is divided by the bare run of the same
round and the median of these paired ratios is reported, since ratios survive
machine noise better than times. A last row times the extractor with the network
replaced by a pooling layer: its own overhead, small and stable. Target: extractor
within 1.1x of the bare module.

Usage::

    python benchmarks/bench_features.py --n 128 --batch-size 32 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import sklearn
import torch

from skknn.features import TorchFeatureExtractor, register_model
from skknn.features._registry import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD


def _photos(n: int) -> np.ndarray:
    """n distinct 224x224 crops of skimage photos (random pixels without skimage)."""
    try:
        from skimage import data
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    crops = []
    for i in range(n):
        image = sources[i % len(sources)]
        top = (i * 7) % (image.shape[0] - 224)
        left = (i * 13) % (image.shape[1] - 224)
        crops.append(image[top : top + 224, left : left + 224])
    return np.stack(crops)


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(device: str, n: int, batch_size: int, repeats: int) -> None:
    images = _photos(n)
    floats_chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2)) / np.float32(255)
    extractor = TorchFeatureExtractor(
        model="efficientnet-lite0", batch_size=batch_size, device=device
    ).fit(images[:1])
    model = extractor.model_
    dev = extractor.device_
    mean = torch.tensor(EFFICIENTNET_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE_STD).view(1, 3, 1, 1)
    normalised = ((torch.from_numpy(floats_chw) - mean) / std).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    channels_last = normalised.contiguous(memory_format=torch.channels_last)

    def bare_loop(tensor: torch.Tensor) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = tensor[start : start + batch_size]
                outs.append(model.extract_features(batch).mean(dim=(2, 3)))
        out = torch.cat(outs)
        sync()
        return out

    def bare() -> torch.Tensor:
        return bare_loop(normalised)

    def bare_cl() -> torch.Tensor:
        return bare_loop(channels_last)

    def ext_uint8() -> np.ndarray:
        return extractor.transform(images)

    def ext_float() -> np.ndarray:
        return extractor.transform(floats_chw)

    # Each extractor path against the bare run with the same memory order.
    floor = {
        "bare": "bare",
        "bare (channels_last)": "bare",
        "extractor (uint8 HWC)": "bare (channels_last)",
        "extractor (float CHW)": "bare",
    }
    runs = {
        "bare": bare,
        "bare (channels_last)": bare_cl,
        "extractor (uint8 HWC)": ext_uint8,
        "extractor (float CHW)": ext_float,
    }
    # Same embeddings, or the timing compares different work.
    reference = bare().float().cpu().numpy()
    for name in ("extractor (uint8 HWC)", "extractor (float CHW)"):
        np.testing.assert_allclose(runs[name](), reference, rtol=1e-3, atol=1e-4)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drifting load hits every method
        for name, fn in runs.items():
            times[name].append(_best(fn, 1))

    # The extractor's own work (decoding, scaling, normalising, pooling, copying)
    # with the network replaced by a pooling layer: small and stable, it bounds
    # the ratio even when other processes make the full timings noisy.
    register_model(
        "bench-no-network",
        _no_network,
        input_size=224,
        mean=EFFICIENTNET_LITE_MEAN,
        std=EFFICIENTNET_LITE_STD,
        overwrite=True,
    )
    pipeline_only = {}
    for label, X in (("uint8 HWC", images), ("float CHW", floats_chw)):
        no_net = TorchFeatureExtractor(
            model="bench-no-network", batch_size=batch_size, device=device
        ).fit(X[:1])
        pipeline_only[label] = _best(lambda: (no_net.transform(X), sync()), repeats)

    print(f"\ndevice={dev}  n={n}  batch_size={batch_size}  {repeats} interleaved runs")
    print(
        f"{'method':<24}{'best s':>8}{'images/s':>10}{'median ratio':>14}"
        "  (paired, against)"
    )
    for name, seconds in times.items():
        against = floor[name]
        ratios = np.array(seconds) / np.array(times[against])
        print(
            f"{name:<24}{min(seconds):>8.3f}{n / min(seconds):>10.1f}"
            f"{np.median(ratios):>14.3f}  ({against})"
        )
    bare_s = min(times["bare"])
    for label, seconds in pipeline_only.items():
        print(
            f"extractor without network, {label}: {1e3 * seconds / n:.2f} ms/image "
            f"= {100 * seconds / bare_s:.1f}% of the bare network time"
        )


def _no_network() -> torch.nn.Module:
    return torch.nn.AdaptiveAvgPool2d(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="images per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, sklearn {sklearn.__version__}, numpy "
        f"{np.__version__}, python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads"
    )
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\ncuda: not available, skipped")
            continue
        bench(device, args.n, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
