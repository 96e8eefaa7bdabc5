"""Model zoo: closed-form parameter counts, shapes, build errors, weight files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdistill.errors import KdistillError
from kdistill.models import (
    ZOO,
    build_model,
    count_params,
    load_run_model,
    load_weights,
    model_spec,
    save_weights,
)

DIGITS = (1, 8, 8)


def _linear(i: int, o: int) -> int:
    return i * o + o


def _conv_bn(i: int, o: int) -> int:
    return i * o * 3 * 3 + 2 * o  # conv3x3 without bias, BatchNorm weight + bias


# --- parameter counts -------------------------------------------------------------------------

def test_mlp_one_hidden_layer_param_count():
    model = build_model("mlp", {"hidden": [16]}, DIGITS, 10)
    assert count_params(model) == 64 * 16 + 16 + 16 * 10 + 10
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_mlp_two_hidden_layers_param_count():
    model = build_model("mlp", {"hidden": [32, 8]}, DIGITS, 10)
    assert count_params(model) == (64 * 32 + 32) + (32 * 8 + 8) + (8 * 10 + 10)


def test_mlp_dropout_adds_no_params_and_no_hidden_is_linear():
    assert count_params(build_model("mlp", {"hidden": [16], "dropout": 0.5}, DIGITS, 10)) == _linear(64, 16) + _linear(16, 10)
    assert count_params(build_model("mlp", {"hidden": []}, (3, 4, 4), 5)) == _linear(48, 5)


def test_cnn_param_count():
    model = build_model("cnn", {"channels": [4, 8]}, DIGITS, 10)
    expected = (1 * 4 * 9 + 2 * 4) + (4 * 8 * 9 + 2 * 8) + (8 * 10 + 10)
    assert expected == 438
    assert count_params(model) == expected


def test_cnn_param_count_variants():
    two_convs = build_model("cnn", {"channels": [4, 8], "convs_per_stage": 2}, DIGITS, 10)
    assert count_params(two_convs) == _conv_bn(1, 4) + _conv_bn(4, 4) + _conv_bn(4, 8) + _conv_bn(8, 8) + _linear(8, 10)
    with_hidden = build_model("cnn", {"channels": [4, 8], "hidden": 12}, (3, 32, 32), 7)
    assert count_params(with_hidden) == _conv_bn(3, 4) + _conv_bn(4, 8) + _linear(8, 12) + _linear(12, 7)


# --- forward shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "shape,channels,classes",
    [((1, 8, 8), [4, 8], 10), ((3, 32, 32), [4, 8], 10), ((1, 8, 8), [2, 4, 4, 4, 4], 3), ((3, 32, 32), [4], 100)],
)
def test_cnn_output_shape(shape, channels, classes):
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": channels}, shape, classes)
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()
    model.eval()
    assert model(x[:1]).shape == (1, classes)


@pytest.mark.parametrize(
    "shape,channels,spatial",
    [((1, 8, 8), [4, 8], 2), ((1, 8, 8), [2, 2, 2, 2, 2], 1), ((3, 32, 32), [4, 4, 4], 4)],
)
def test_cnn_pools_while_the_map_is_at_least_2_wide(shape, channels, spatial):
    model = build_model("cnn", {"channels": channels}, shape, 10)
    feats = model.stages(torch.randn(2, *shape))
    assert feats.shape == (2, channels[-1], spatial, spatial)


def test_mlp_output_shape():
    model = build_model("mlp", {"hidden": [16]}, (3, 32, 32), 10)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


# --- build errors -----------------------------------------------------------------------------

def test_build_model_unknown_kwarg_names_it_and_lists_allowed():
    with pytest.raises(KdistillError) as info:
        build_model("mlp", {"hidden": [16], "depth": 3}, DIGITS, 10)
    msg = str(info.value)
    assert "model.depth" in msg
    assert "'mlp'" in msg
    assert "arguments: hidden, dropout" in msg
    assert "input_shape" not in msg  # the shape arguments are not the user's to set


def test_build_model_unknown_kwarg_cnn_lists_its_arguments():
    with pytest.raises(KdistillError) as info:
        build_model("cnn", {"widths": [4]}, DIGITS, 10, where="student")
    msg = str(info.value)
    assert "student.widths" in msg
    for arg in ("channels", "convs_per_stage", "hidden", "dropout"):
        assert arg in msg


def test_build_model_unknown_name_lists_known():
    with pytest.raises(KdistillError) as info:
        build_model("resnet18", {}, DIGITS, 10)
    msg = str(info.value)
    assert "'resnet18'" in msg
    assert f"known: {', '.join(sorted(ZOO))}" in msg


def test_build_model_bad_values_are_kdistill_errors():
    with pytest.raises(KdistillError, match="cnn"):
        build_model("cnn", {"channels": [4]}, (64,), 10)  # not an image
    with pytest.raises(KdistillError, match="mlp"):
        build_model("mlp", {"hidden": ["wide"]}, DIGITS, 10)


# --- weights on disk --------------------------------------------------------------------------

def _trained_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn", {"channels": [4, 8]}, DIGITS, 10)
    model.train()
    model(torch.randn(5, *DIGITS))  # move BatchNorm running statistics away from their defaults
    return model


def test_save_load_weights_round_trip(tmp_path):
    source, target = _trained_cnn(0), _trained_cnn(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in source.state_dict().items())
    path = tmp_path / "w.safetensors"
    save_weights(source, path)
    assert path.is_file()
    assert not path.with_name(path.name + ".tmp").exists()
    load_weights(target, path)
    src_state, tgt_state = source.state_dict(), target.state_dict()
    assert src_state.keys() == tgt_state.keys()
    for key in src_state:
        assert torch.equal(src_state[key], tgt_state[key]), key
        assert src_state[key].dtype == tgt_state[key].dtype, key


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(KdistillError, match="not found"):
        load_weights(_trained_cnn(0), tmp_path / "absent.safetensors")


@pytest.mark.parametrize("payload", [b"\x00garbage\xff" * 10, b"", b"\xff" * 8 + b"{}"])
def test_load_weights_corrupt_file(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    model = _trained_cnn(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KdistillError, match="corrupt"):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_wrong_architecture(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(build_model("mlp", {"hidden": [16]}, DIGITS, 10), path)
    with pytest.raises(KdistillError, match="do not fit"):  # same keys, other shapes
        load_weights(build_model("mlp", {"hidden": [8]}, DIGITS, 10), path)
    with pytest.raises(KdistillError, match="do not fit"):  # every shape fits, but a layer is missing
        load_weights(build_model("mlp", {"hidden": [16, 16]}, DIGITS, 10), path)


def test_load_run_model_rebuilds_equal_model(tmp_path):
    kwargs = {"channels": [4, 8], "hidden": 6}
    torch.manual_seed(3)
    model = build_model("cnn", kwargs, DIGITS, 10)
    model.train()
    model(torch.randn(8, *DIGITS))
    model.eval()
    classes = [str(c) for c in range(10)]
    spec = model_spec("cnn", kwargs, DIGITS, classes)
    (tmp_path / "model.json").write_text(json.dumps(spec))
    save_weights(model, tmp_path / "model.safetensors")

    loaded, loaded_spec = load_run_model(tmp_path)
    assert loaded_spec == spec
    assert not loaded.training
    x = torch.randn(4, *DIGITS)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        fresh = build_model("cnn", kwargs, DIGITS, 10).eval()  # differently initialised
        assert not torch.allclose(fresh(x), expected)


def test_load_run_model_errors(tmp_path):
    with pytest.raises(KdistillError, match="not found"):
        load_run_model(tmp_path / "nope")
    with pytest.raises(KdistillError, match="model.json"):
        load_run_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(KdistillError, match="corrupt model description"):
        load_run_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(model_spec("mlp", {"hidden": [4]}, DIGITS, ["a", "b"])))
    with pytest.raises(KdistillError, match="not found"):  # no weights file yet
        load_run_model(tmp_path)
