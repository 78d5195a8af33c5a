"""Tests for skknn.features.TorchFeatureExtractor (and its per-batch path in
``skknn.features._image_pipeline``)."""

from __future__ import annotations

import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skknn._device import DeviceWarning
from skknn.features import TorchFeatureExtractor

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)


# Module-level so that pickle can find them by reference.
def unseeded_linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def not_a_module():
    return "not a module"


class Tokens(nn.Module):
    """(n, C, H, W) -> (n, H*W, C): a token sequence, like a ViT block output."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class DictOutput(nn.Module):
    def forward(self, x):
        return {"meta": "ignored", "features": x.mean(dim=(2, 3))}


# --- sklearn contract -------------------------------------------------------------


@parametrize_with_checks([TorchFeatureExtractor(model="identity", batch_size=7)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_identity_passes_2d_through_as_float32():
    X = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    est = TorchFeatureExtractor(model="identity").fit(X)
    Xt = est.transform(X)
    assert Xt.dtype == np.float32
    np.testing.assert_array_equal(Xt, X.astype(np.float32))
    assert est.n_features_in_ == 3
    assert est.embedding_dim_ == 3


def test_feature_names_out(images):
    est = TorchFeatureExtractor(model="tiny-cnn")
    with pytest.raises(NotFittedError):
        est.get_feature_names_out()
    est.fit(images)
    names = est.get_feature_names_out()
    assert len(names) == 16
    assert names[0] == "torchfeatureextractor0"
    assert names[-1] == "torchfeatureextractor15"


def test_refit_on_images_forgets_n_features_in(images):
    est = TorchFeatureExtractor(model="identity").fit(np.ones((3, 4)))
    assert est.n_features_in_ == 4
    est.fit(images)
    assert not hasattr(est, "n_features_in_")
    assert est.embedding_dim_ == 3 * 32 * 32


# --- input layouts ----------------------------------------------------------------


def _layouts(images, tmp_path):
    """The same uint8 HWC images in every accepted form."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"img{i}.png"  # PNG: lossless, so pixels survive
        Image.fromarray(image).save(path)
        paths.append(path)
    floats = images.astype(np.float32) / 255
    return {
        "uint8 HWC": images,
        "uint8 CHW": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
        "float HWC": floats,
        "float64 CHW": floats.transpose(0, 3, 1, 2).astype(np.float64),
        "paths": paths,
        "str paths": [str(p) for p in paths],
        "PIL": [Image.fromarray(image) for image in images],
        "array list": list(images),
    }


@pytest.mark.parametrize("model", ["identity", "tiny-cnn"])
def test_every_layout_gives_the_same_embedding(model, images, tmp_path):
    layouts = _layouts(images, tmp_path)
    est = TorchFeatureExtractor(model=model).fit(images)
    reference = est.transform(images)
    assert reference.dtype == np.float32
    assert reference.shape == (5, 3 * 32 * 32 if model == "identity" else 16)
    for name, X in layouts.items():
        np.testing.assert_allclose(
            est.transform(X), reference, rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_identity_embedding_is_chw_pixels_in_unit_range(images):
    est = TorchFeatureExtractor(model="identity").fit(images)
    expected = images.transpose(0, 3, 1, 2).reshape(5, -1) / 255
    np.testing.assert_allclose(est.transform(images), expected, rtol=1e-6)


def test_greyscale_becomes_three_equal_channels(images, tmp_path):
    from PIL import Image

    grey = images[..., 0]
    est = TorchFeatureExtractor(model="identity").fit(grey)
    out = est.transform(grey).reshape(5, 3, 32, 32)
    np.testing.assert_allclose(out[:, 0], grey / 255, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    path = tmp_path / "grey.png"
    Image.fromarray(grey[0], mode="L").save(path)
    for X in (grey[..., None], grey[:, None], rgb):
        np.testing.assert_array_equal(est.transform(X), est.transform(grey))
    np.testing.assert_array_equal(est.transform([path]), est.transform(grey[:1]))


def test_resizing_to_image_size(images):
    est = TorchFeatureExtractor(model="identity", image_size=(8, 16)).fit(images)
    assert est.input_size_ == (8, 16)
    out = est.transform(images)
    assert out.shape == (5, 3 * 8 * 16)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
        size=(8, 16),
        mode="bilinear",
        antialias=True,
    )
    np.testing.assert_allclose(out, expected.reshape(5, -1).numpy(), atol=1e-6)
    # Differently sized images in one list are all resized to image_size.
    mixed = [images[0], images[1, :20, :24]]
    assert est.transform(mixed).shape == (2, 3 * 8 * 16)


def test_tiny_cnn_applies_its_normalisation(images):
    est = TorchFeatureExtractor(model="tiny-cnn", device="cpu").fit(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = est.model_((x - 0.5) / 0.5).mean(dim=(2, 3))
    np.testing.assert_allclose(est.transform(images), expected.numpy(), atol=1e-6)


# --- pooling, layers, batching, dtype ---------------------------------------------


def test_pooling_modes(images):
    out = {
        pooling: TorchFeatureExtractor(model="tiny-cnn", pooling=pooling)
        .fit(images)
        .transform(images)
        for pooling in ("avg", "max", "none")
    }
    assert out["avg"].shape == out["max"].shape == (5, 16)
    assert out["none"].shape == (5, 16 * 8 * 8)
    maps = out["none"].reshape(5, 16, 8, 8)
    np.testing.assert_allclose(out["avg"], maps.mean(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(out["max"], maps.max(axis=(2, 3)), rtol=1e-6)
    assert not np.allclose(out["avg"], out["max"])


def test_pooling_of_token_sequences(images):
    est = TorchFeatureExtractor(model=Tokens, pooling="avg").fit(images)
    # Tokens turns pixels into tokens: the token average is the channel mean.
    expected = images.astype(np.float32).mean(axis=(1, 2)) / 255
    np.testing.assert_allclose(est.transform(images), expected, rtol=1e-5)
    est.set_params(pooling="none").fit(images)
    assert est.transform(images).shape == (5, 32 * 32 * 3)


def test_dict_output_uses_its_first_tensor(images):
    out = TorchFeatureExtractor(model=DictOutput).fit_transform(images)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)) / 255, rtol=1e-5)


def test_layer_hook_captures_intermediate_output(images):
    est = TorchFeatureExtractor(model="tiny-cnn", layer="conv1", device="cpu")
    est.fit(images)
    out = est.transform(images)
    assert out.shape == (5, 8)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    expected = est.model_.conv1(x).mean(dim=(2, 3))
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)
    last = TorchFeatureExtractor(model="tiny-cnn", layer="relu2").fit(images)
    default = TorchFeatureExtractor(model="tiny-cnn").fit(images)
    np.testing.assert_allclose(last.transform(images), default.transform(images))


def test_unknown_layer_is_refused(images):
    est = TorchFeatureExtractor(model="tiny-cnn", layer="conv3")
    with pytest.raises(ValueError, match=r"must name a submodule.*'conv3'.*conv1"):
        est.fit(images)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_batch_size_does_not_change_outputs(batch_size, images):
    reference = TorchFeatureExtractor(model="tiny-cnn", batch_size=5)
    reference = reference.fit(images).transform(images)
    est = TorchFeatureExtractor(model="tiny-cnn", batch_size=batch_size).fit(images)
    np.testing.assert_allclose(est.transform(images), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        est.transform(list(images)), reference, rtol=1e-5, atol=1e-6
    )


def test_bfloat16_compute_returns_float32(images):
    reference = TorchFeatureExtractor(model="tiny-cnn").fit(images).transform(images)
    est = TorchFeatureExtractor(model="tiny-cnn", dtype="bfloat16").fit(images)
    assert next(est.model_.parameters()).dtype == torch.bfloat16
    out = est.transform(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=0.05, atol=0.02)


def test_progress_bar_writes_to_stderr(images, capsys):
    est = TorchFeatureExtractor(model="tiny-cnn", progress=True, batch_size=2)
    est.fit(images).transform(images)
    assert "3/3" in capsys.readouterr().err


# --- input errors -----------------------------------------------------------------


def test_input_errors(images):
    est = TorchFeatureExtractor(model="identity").fit(images)
    with pytest.raises(TypeError, match=r"uint8.*Got dtype int64"):
        est.transform(images.astype(np.int64))
    with pytest.raises(ValueError, match="expected 1 or 3 channels"):
        est.transform(np.zeros((2, 5, 6, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="X has 5 dimensions"):
        est.transform(np.zeros((1, 2, 3, 4, 5)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        est.transform(np.full((1, 32, 32, 3), np.nan, dtype=np.float32))
    # NaN is refused in later batches too, after a range warning was given.
    bad = np.full((2, 32, 32, 3), 2.0, dtype=np.float32)
    bad[1, 0, 0, 0] = np.inf
    with (
        pytest.raises(ValueError, match="NaN or infinity"),
        pytest.warns(UserWarning, match="reaches 2"),
    ):
        est.set_params(batch_size=1).transform(bad)
    est.set_params(batch_size=64)
    with pytest.warns(UserWarning, match=r"pixels in \[0, 1\].*255"):
        est.transform(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"different sizes.*set image_size"):
        est.transform([images[0], images[1, :16]])
    with pytest.raises(ValueError, match="fitted on input giving 3072"):
        est.transform(images[:, :16])
    with pytest.raises(TypeError, match=r"X\[1\] is a int"):
        est.transform([images[0], 3])


def test_single_colour_image_warns_it_is_read_as_a_batch():
    est = TorchFeatureExtractor(model="identity")
    with pytest.warns(
        UserWarning, match=r"read as 20 greyscale images.*X\[np.newaxis\]"
    ):
        est.fit(np.zeros((20, 30, 3), dtype=np.uint8))


def test_model_that_cannot_take_x_fails_at_fit():
    with pytest.raises(ValueError, match="could not embed the first sample"):
        TorchFeatureExtractor(model="tiny-cnn").fit(np.ones((3, 4)))


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"model": "nope"}, ValueError, r"Unknown model 'nope'. Registered models"),
        ({"model": "tiny_cnn"}, ValueError, "Did you mean 'tiny-cnn'"),
        ({"model": 3}, TypeError, "'model' parameter .* Got 3 instead"),
        ({"model": not_a_module}, TypeError, "must return a torch.nn.Module"),
        ({"pooling": "mean"}, ValueError, "'pooling' parameter .* Got 'mean'"),
        ({"batch_size": 0}, ValueError, r"'batch_size' .* \[1, inf\). Got 0"),
        ({"dtype": "float64"}, ValueError, "'dtype' parameter .* Got 'float64'"),
        ({"image_size": (3, 0)}, ValueError, "'image_size' parameter"),
        ({"layer": 2}, TypeError, "'layer' parameter"),
        ({"progress": "yes"}, TypeError, "'progress' parameter"),
        ({"device": "tpu"}, ValueError, "'device' parameter"),
    ],
)
def test_parameter_errors(params, error, match, images):
    est = TorchFeatureExtractor(**{"model": "tiny-cnn", **params})
    with pytest.raises(error, match=match):
        est.fit(images)


def test_explicit_cuda_without_cuda_is_refused(images, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        TorchFeatureExtractor(model="tiny-cnn", device="cuda").fit(images)


# --- pickling ---------------------------------------------------------------------


def _dumps(est) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(est, buffer)
    return buffer.getvalue()


def _loads(data: bytes):
    return joblib.load(io.BytesIO(data))


def test_joblib_round_trip_of_a_registered_name(images):
    est = TorchFeatureExtractor(model="tiny-cnn", layer="conv2").fit(images)
    assert "model_" not in est.__getstate__()
    data = _dumps(est)
    assert b"Conv2d" not in data  # no module was pickled
    loaded = _loads(data)
    assert loaded.model_ is not est.model_
    assert not loaded.model_.training
    assert not any(p.requires_grad for p in loaded.model_.parameters())
    np.testing.assert_array_equal(loaded.transform(images), est.transform(images))


def test_joblib_round_trip_keeps_an_unseeded_factorys_weights():
    X = np.random.default_rng(1).random((3, 4, 4, 3)).astype(np.float32)
    est = TorchFeatureExtractor(model=unseeded_linear).fit(X)
    state = est.__getstate__()
    assert "model_" not in state
    assert set(state["_factory_weights"]) == {"1.weight", "1.bias"}
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))


def test_joblib_round_trip_of_a_module_instance(images):
    module = Tokens()
    est = TorchFeatureExtractor(model=module).fit(images)
    assert est.model_ is module  # shared, not cloned
    loaded = _loads(_dumps(est))
    assert loaded.model_ is loaded.model  # pickled whole, identity kept
    np.testing.assert_array_equal(loaded.transform(images), est.transform(images))


def test_unpickling_a_cuda_model_without_cuda_falls_back_to_cpu(images, monkeypatch):
    # Fitted on the CPU (also on a GPU machine): the state only claims CUDA.
    est = TorchFeatureExtractor(model="tiny-cnn", device="cpu").fit(images)
    expected = est.transform(images)
    state = est.__getstate__()
    state["device_"] = torch.device("cuda:0")  # as if fitted on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = TorchFeatureExtractor.__new__(TorchFeatureExtractor)
    with pytest.warns(DeviceWarning, match="loaded onto the CPU"):
        loaded.__setstate__(state)
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.transform(images), expected)


# --- CUDA -------------------------------------------------------------------------


@pytest.mark.requires_cuda
@requires_cuda
def test_cuda_matches_cpu(images):
    cpu = TorchFeatureExtractor(model="tiny-cnn", device="cpu").fit(images)
    gpu = TorchFeatureExtractor(model="tiny-cnn", device="cuda").fit(images)
    assert gpu.device_.type == "cuda"
    # cuDNN convolutions run in TF32 by torch's default (allow_tf32): a 10-bit
    # mantissa, 7.8e-4 relative measured on an H200. Without it, float32 agrees.
    np.testing.assert_allclose(
        gpu.transform(images), cpu.transform(images), rtol=3e-3, atol=1e-4
    )
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        np.testing.assert_allclose(
            gpu.transform(images), cpu.transform(images), rtol=1e-4, atol=1e-5
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeviceWarning)
        loaded = _loads(_dumps(gpu))
    assert loaded.device_.type == "cuda"
    np.testing.assert_array_equal(loaded.transform(images), gpu.transform(images))


@pytest.mark.parametrize(
    ("model", "two_d"),
    [("efficientnet-lite0", False), ("tiny-cnn", False), ("identity", True)],
)
def test_tags_say_which_input_the_model_takes(model, two_d):
    from sklearn.utils import get_tags

    tags = get_tags(TorchFeatureExtractor(model))
    assert tags.input_tags.two_d_array is two_d
    assert tags.input_tags.three_d_array


def test_the_default_extractor_passes_the_estimator_checks():
    """sklearn's checks feed 2-D rows; an image backbone's tags say it takes
    none, so sklearn skips those checks instead of failing 20 of them."""
    from sklearn.exceptions import SkipTestWarning
    from sklearn.utils.estimator_checks import check_estimator

    with pytest.warns(SkipTestWarning):
        results = check_estimator(TorchFeatureExtractor(), on_fail=None)
    assert [r for r in results if r["status"] == "failed"] == []


def test_decode_embed_inputs_and_fitted_state_agree_with_transform(images):
    from sklearn.base import clone

    ext = TorchFeatureExtractor("tiny-cnn").fit(images)
    with torch.inference_mode():
        E = ext.embed_inputs(ext.decode(images)).float().cpu().numpy()
    np.testing.assert_allclose(E, ext.transform(images), rtol=1e-6, atol=1e-6)
    rebuilt = clone(ext).from_fitted_state(ext.fitted_state())
    np.testing.assert_array_equal(rebuilt.transform(images), ext.transform(images))
    weights = {k: v * 0 for k, v in ext.model_.state_dict().items()}
    zeroed = clone(ext).from_fitted_state(ext.fitted_state(), weights=weights)
    assert not np.array_equal(zeroed.transform(images), ext.transform(images))
