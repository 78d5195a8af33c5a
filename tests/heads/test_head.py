"""JOINT's head in ``skknn.heads._head``: building, growth, inference."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from skknn.heads import _head

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- build_head ---------------------------------------------------------------


def test_build_head_init():
    head = _head.build_head(256, 300, generator=gen(0), prior_pi=0.01)
    assert isinstance(head.layers[0], torch.nn.Linear)
    assert len(head.layers) == 1
    assert head.n_classes == 300
    assert not head.training
    bias = head.output_layer.bias.detach()
    assert torch.allclose(bias, torch.full((300,), -math.log(99.0)))
    # Kaiming-normal, fan_in, ReLU gain: std = sqrt(2 / 256); 76,800 draws.
    std = head.output_layer.weight.detach().std().item()
    assert std == pytest.approx(math.sqrt(2 / 256), rel=0.02)
    assert all(t.dtype == torch.float32 for t in head.state_dict().values())


def test_build_head_mlp_shape_and_hidden_bias():
    head = _head.build_head(8, 3, (32, 16), generator=gen(0))
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    shapes = [tuple(m.weight.shape) for m in head.layers if hasattr(m, "weight")]
    assert shapes == [(32, 8), (16, 32), (3, 16)]
    assert torch.count_nonzero(head.layers[0].bias) == 0
    assert torch.count_nonzero(head.layers[2].bias) == 0
    assert head(torch.zeros(2, 8)).shape == (2, 3)


def test_build_head_is_deterministic_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = _head.build_head(10, 4, (6,), generator=gen(7)).state_dict()
    b = _head.build_head(10, 4, (6,), generator=gen(7)).state_dict()
    c = _head.build_head(10, 4, (6,), generator=gen(8)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])


def test_standardisation_buffers():
    g = np.random.default_rng(0)
    X = (g.normal(size=(50, 5)) * [1, 2, 3, 4, 5] + 7).astype(np.float32)
    x_mean, x_scale = _head.input_stats(X)
    head = _head.build_head(5, 3, generator=gen(0), x_mean=x_mean, x_scale=x_scale)
    names = {n for n, _ in head.named_parameters()}
    assert names == {"layers.0.weight", "layers.0.bias"}
    assert {"x_mean", "x_scale"} <= set(head.state_dict())
    Xt = torch.from_numpy(X)
    plain = head.layers(torch.from_numpy((X - x_mean) / x_scale))
    assert torch.allclose(head(Xt), plain, atol=1e-5)
    # The standardised inputs have mean 0 and std 1.
    Z = head.standardize(Xt)
    assert torch.allclose(Z.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(Z.std(0, unbiased=False), torch.ones(5), atol=1e-5)


def test_input_stats_constant_column_gets_unit_scale():
    X = np.c_[np.arange(6.0), np.full(6, 3.0)].astype(np.float32)
    x_mean, x_scale = _head.input_stats(X)
    assert x_scale[1] == 1.0
    assert x_mean[1] == 3.0
    assert x_mean.dtype == x_scale.dtype == np.float32


def test_build_head_rejects_bad_input():
    with pytest.raises(ValueError, match="x_scale"):
        _head.build_head(3, 2, generator=gen(), x_scale=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="x_mean"):
        _head.build_head(3, 2, generator=gen(), x_mean=np.zeros(4))
    with pytest.raises(ValueError, match="prior_pi"):
        _head.build_head(3, 2, generator=gen(), prior_pi=1.0)


@pytest.mark.parametrize("hidden", [(), (7, 5)])
def test_state_dict_round_trip_weights_only(hidden):
    head = _head.build_head(
        4, 3, hidden, generator=gen(), x_mean=np.ones(4), x_scale=np.full(4, 2.0)
    )
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = _head.head_from_state_dict(state)
    assert loaded.hidden_layer_sizes == hidden
    X = torch.randn(5, 4, generator=gen(1))
    assert torch.equal(loaded(X), head(X))


# -- expand_outputs -----------------------------------------------------------


@pytest.mark.parametrize("hidden", [(), (6,)])
def test_expand_outputs_keeps_old_rows(hidden):
    head = _head.build_head(
        5, 3, hidden, generator=gen(0), x_mean=np.arange(5.0), x_scale=np.ones(5)
    )
    with torch.no_grad():
        head.output_layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    where = np.array([4, 0, 2])
    new = _head.expand_outputs(head, where, 6, generator=gen(1))
    old_out, new_out = head.output_layer, new.output_layer
    assert new.n_classes == 6
    assert new_out.weight.shape == (6, new_out.in_features)
    assert torch.equal(new_out.weight[torch.from_numpy(where)], old_out.weight)
    assert torch.equal(new_out.bias[torch.from_numpy(where)], old_out.bias)
    fresh = torch.tensor([1, 3, 5])
    assert torch.allclose(new_out.bias[fresh], torch.full((3,), -math.log(99.0)))
    assert torch.count_nonzero(new_out.weight[fresh]) > 0
    # The input side and the original head are untouched.
    assert torch.equal(new.x_mean, head.x_mean)
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key])
        if not key.startswith(f"layers.{len(head.layers) - 1}."):
            assert torch.equal(new.state_dict()[key], value)
    X = torch.randn(4, 5, generator=gen(2))
    assert torch.allclose(new(X)[:, where], head(X))


def test_add_output_rows_appends():
    head = _head.build_head(4, 3, generator=gen(0))
    new = _head.add_output_rows(head, 2, generator=gen(1))
    assert torch.equal(new.output_layer.weight[:3], head.output_layer.weight)
    assert new.n_classes == 5


@pytest.mark.parametrize(
    ("where", "match"),
    [([0, 0, 1], "same row"), ([0, 1, 9], r"\[0, 4\)"), ([0, 1], "3 integers")],
)
def test_expand_outputs_rejects_bad_mapping(where, match):
    head = _head.build_head(4, 3, generator=gen(0))
    with pytest.raises(ValueError, match=match):
        _head.expand_outputs(head, np.array(where), 4, generator=gen(1))


# -- predict_logits -----------------------------------------------------------


def test_predict_logits_matches_forward_in_blocks():
    head = _head.build_head(
        5, 4, (8,), generator=gen(0), x_mean=np.ones(5), x_scale=np.full(5, 3.0)
    )
    X = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
    out = _head.predict_logits(head, X, device=CPU, batch_size=4)
    assert out.dtype == np.float32
    assert out.shape == (23, 4)
    with torch.no_grad():
        expected = head(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="n_samples, 5"):
        _head.predict_logits(head, X[:, :3], device=CPU)


def test_predict_logits_float64_matches_a_float64_reference():
    head = _head.build_head(
        7, 3, (), generator=gen(1), x_mean=np.full(7, 0.5), x_scale=np.full(7, 2.0)
    )
    X = np.random.default_rng(1).normal(size=(30, 7)).astype(np.float32)
    out = _head.predict_logits(head, X, device=CPU, batch_size=8, dtype=torch.float64)
    assert out.dtype == np.float64
    sd = {k: v.double().numpy() for k, v in head.state_dict().items()}
    W = next(v for k, v in sd.items() if k.endswith("weight"))
    b = next(v for k, v in sd.items() if k.endswith("bias"))
    ref = ((X.astype(np.float64) - 0.5) / 2.0) @ W.T + b
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    # The head itself stays float32 and where it was.
    assert next(head.parameters()).dtype == torch.float32
