"""The model zoo of `kdistill.models`: closed-form parameter counts, shapes, build errors, weight files; the
CIFAR models: parameter counts (closed form and published), shapes, taps, errors; and the lazily imported
`timm:` / `torchvision:` models (faked: neither package is needed)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

import kdistill.models as zoo
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
CIFAR, FMNIST = (3, 32, 32), (1, 28, 28)
NEW_MODELS = ["seed_large_cnn", "seed_small_cnn", "resnet20", "resnet56", "resnet8x4", "resnet32x4", "wrn_40_2", "wrn_16_2"]


def _linear(i: int, o: int) -> int:
    return i * o + o


def _conv_bn(i: int, o: int, k: int = 3) -> int:
    return i * o * k * k + 2 * o  # conv without bias, BatchNorm weight + bias


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


# --- closed-form parameter counts ------------------------------------------------------------

def _vgg(stages: list[list[int]], c: int, k: int) -> int:
    total, width = 0, c
    for stage in stages:
        for out in stage:
            total += _conv_bn(width, out)
            width = out
    return total + _linear(width, k)


def _resnet(depth: int, widths: list[int], c: int, k: int) -> int:
    n = (depth - 2) // 6
    stem, *stages = widths
    total, width = _conv_bn(c, stem), stem
    for out in stages:
        for b in range(n):
            total += _conv_bn(width, out) + _conv_bn(out, out)
            if b == 0 and width != out:
                total += _conv_bn(width, out, k=1)  # option-B projection shortcut
            width = out
    return total + _linear(width, k)


def _wrn(depth: int, widen: int, c: int, k: int) -> int:
    n = (depth - 4) // 6
    total, width = c * 16 * 9, 16  # stem conv, no BatchNorm after it (pre-activation)
    for out in (16 * widen, 32 * widen, 64 * widen):
        for _ in range(n):
            total += 2 * width + width * out * 9 + 2 * out + out * out * 9  # BN, conv, BN, conv
            if width != out:
                total += width * out  # 1x1 shortcut, no bias
            width = out
    return total + 2 * width + _linear(width, k)  # final BN + head


FORMULA = {
    "seed_large_cnn": lambda c, k: _vgg([[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], c, k),
    "seed_small_cnn": lambda c, k: _vgg([[32, 32], [64, 64], [128] * 3], c, k),
    "resnet20": lambda c, k: _resnet(20, [16, 16, 32, 64], c, k),
    "resnet56": lambda c, k: _resnet(56, [16, 16, 32, 64], c, k),
    "resnet8x4": lambda c, k: _resnet(8, [32, 64, 128, 256], c, k),
    "resnet32x4": lambda c, k: _resnet(32, [32, 64, 128, 256], c, k),
    "wrn_40_2": lambda c, k: _wrn(40, 2, c, k),
    "wrn_16_2": lambda c, k: _wrn(16, 2, c, k),
}

# name: (classes, exact count on 3x32x32, published/seed reference, tolerance)
REFERENCE = {
    "seed_large_cnn": (10, 14_724_042, 14.7e6, 0.03),
    "seed_small_cnn": (10, 436_458, 0.44e6, 0.05),
    "resnet20": (100, 278_324, 0.28e6, 0.02),
    "resnet56": (100, 861_620, 0.86e6, 0.02),
    "resnet8x4": (100, 1_233_540, 1.23e6, 0.02),
    "resnet32x4": (100, 7_433_860, 7.43e6, 0.02),
    "wrn_40_2": (100, 2_255_156, 2.26e6, 0.02),
    "wrn_16_2": (100, 703_284, 0.70e6, 0.02),
}


@pytest.mark.parametrize("name", NEW_MODELS)
def test_param_count_matches_reference_and_formula(name):
    classes, exact, reference, tol = REFERENCE[name]
    count = count_params(build_model(name, {}, CIFAR, classes))
    assert count == exact == FORMULA[name](3, classes)
    assert abs(count - reference) / reference <= tol


@pytest.mark.parametrize("name", ["seed_small_cnn", "resnet20", "resnet8x4", "wrn_16_2"])
def test_param_count_formula_other_shapes(name):
    assert count_params(build_model(name, {}, FMNIST, 10)) == FORMULA[name](1, 10)
    assert count_params(build_model(name, {}, (3, 64, 64), 7)) == FORMULA[name](3, 7)  # size-independent


def test_dropout_adds_no_parameters():
    assert count_params(build_model("wrn_16_2", {"dropout": 0.3}, CIFAR, 100)) == 703_284
    assert count_params(build_model("seed_small_cnn", {"dropout": 0.0}, CIFAR, 10)) == 436_458


# --- forward shapes and taps -----------------------------------------------------------------

@pytest.mark.parametrize("name", NEW_MODELS)
@pytest.mark.parametrize("shape,classes", [(CIFAR, 100), (FMNIST, 10)])
def test_forward_shape(name, shape, classes):
    torch.manual_seed(0)
    model = build_model(name, {}, shape, classes)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NEW_MODELS)
def test_default_taps_name_real_modules_with_sensible_outputs(name):
    torch.manual_seed(0)
    model = build_model(name, {}, CIFAR, 10).eval()
    taps = type(model).default_taps
    assert model.default_taps == taps
    modules = dict(model.named_modules())
    stages = [k for k in taps if k.startswith("stage")]
    assert stages == [f"stage{i}" for i in range(1, len(stages) + 1)] and len(stages) >= 3
    assert "embedding" in taps
    for tap, module_name in taps.items():
        assert module_name in modules, (tap, module_name)
    for i, stage in enumerate(stages, start=1):
        assert taps[stage] == f"layer{i}"

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [modules[m].register_forward_hook(lambda mod, inp, out, t=t: seen.__setitem__(t, (out, out.clone())))
             for t, m in taps.items()]
    with torch.no_grad():
        logits = model(torch.randn(2, *CIFAR))
    for h in hooks:
        h.remove()
    for tap, (live, copy) in seen.items():
        assert torch.equal(live, copy), f"{tap} output was modified in place after the tap"
    for stage in stages:
        assert seen[stage][0].dim() == 4 and seen[stage][0].shape[0] == 2
    widths = [seen[s][0].shape[1] for s in stages]
    assert widths == sorted(widths)  # stages never get narrower
    embedding = seen["embedding"][0]
    assert embedding.shape == (2, model.embedding_dim)
    head = getattr(model, "fc", None) or model.classifier
    with torch.no_grad():
        assert torch.allclose(head(embedding), logits, atol=1e-5)  # the embedding is what the head sees


def test_resnet_stage_resolutions_on_cifar():
    model = build_model("resnet8x4", {}, CIFAR, 100)
    x = torch.randn(2, *CIFAR)
    x = model.relu(model.bn1(model.conv1(x)))
    shapes = []
    for layer in (model.layer1, model.layer2, model.layer3):
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert len(model.layer1) == 1 and len(build_model("resnet32x4", {}, CIFAR, 100).layer1) == 5
    assert len(build_model("resnet56", {}, CIFAR, 100).layer3) == 9
    assert len(build_model("wrn_40_2", {}, CIFAR, 100).layer2) == 6


def test_existing_models_taps_and_unchanged_state_dicts():
    mlp = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    assert mlp.default_taps == {"embedding": "features"}
    assert list(mlp.state_dict()) == ["features.1.weight", "features.1.bias", "classifier.weight", "classifier.bias"]
    cnn = build_model("cnn", {"channels": [4, 8, 8]}, (1, 8, 8), 10)
    assert cnn.default_taps == {"stage1": "stages.0", "stage2": "stages.1", "stage3": "stages.2", "embedding": "pool"}
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [k for i in range(3) for k in [f"stages.{i}.0.weight"] + [f"stages.{i}.1.{b}" for b in bn]]
    assert list(cnn.state_dict()) == expected + ["classifier.0.weight", "classifier.0.bias"]
    modules = dict(cnn.named_modules())
    assert all(m in modules for m in cnn.default_taps.values())
    assert all(m in dict(mlp.named_modules()) for m in mlp.default_taps.values())


def test_wrn_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model("wrn_16_2", {"dropout": 0.5}, CIFAR, 10)
    x = torch.randn(2, *CIFAR)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_resnet8x4_one_optimizer_step():
    torch.manual_seed(0)
    model = build_model("resnet8x4", {}, CIFAR, 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(2, *CIFAR), torch.tensor([3, 7])
    before = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after = nn.functional.cross_entropy(model(x), y)
    assert after.item() < before.item()


# --- build errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW_MODELS)
def test_unknown_kwarg_is_named(name):
    with pytest.raises(KdistillError) as info:
        build_model(name, {"width": 3}, CIFAR, 10, where="student")
    msg = str(info.value)
    assert "student.width" in msg and repr(name) in msg
    assert "input_shape" not in msg and "num_classes" not in msg


def test_unknown_kwarg_lists_arguments_or_none():
    with pytest.raises(KdistillError, match=r"arguments: dropout\)"):
        build_model("wrn_40_2", {"drop": 0.1}, CIFAR, 10)
    with pytest.raises(KdistillError, match="takes no arguments"):
        build_model("resnet20", {"depth": 32}, CIFAR, 10)


def test_bad_values_and_non_images_are_kdistill_errors():
    with pytest.raises(KdistillError, match="dropout"):
        build_model("wrn_16_2", {"dropout": 1.5}, CIFAR, 10)
    for name in ("seed_small_cnn", "resnet20", "wrn_16_2"):
        with pytest.raises(KdistillError, match="image"):
            build_model(name, {}, (64,), 10)


def test_zoo_lists_every_model():
    assert set(NEW_MODELS) | {"mlp", "cnn"} == set(ZOO)
    with pytest.raises(KdistillError) as info:
        build_model("resnet18", {}, CIFAR, 10)
    assert "timm:NAME" in str(info.value)


# --- timm: and torchvision: ------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["timm", "torchvision"])
def test_missing_package_names_the_extra(monkeypatch, prefix):
    monkeypatch.setitem(sys.modules, prefix, None)  # `import prefix` now fails, installed or not
    monkeypatch.delitem(sys.modules, f"{prefix}.models", raising=False)
    with pytest.raises(KdistillError) as info:
        build_model(f"{prefix}:resnet18", {}, CIFAR, 10)
    assert str(info.value) == f"model '{prefix}:resnet18' needs {prefix}: pip install 'kdistill[{prefix}]'"


def test_broken_package_is_a_kdistill_error(monkeypatch):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(zoo, "importlib", types.SimpleNamespace(import_module=broken))
    with pytest.raises(KdistillError, match="does not import.*nms"):
        build_model("torchvision:resnet18", {}, CIFAR, 10)


class _Tiny(nn.Module):
    def __init__(self, in_chans: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        if name != "tiny":
            raise RuntimeError(f"Unknown model ({name})")
        return _Tiny(kwargs["in_chans"], kwargs["num_classes"])

    module = types.ModuleType("timm")
    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return _Tiny(3, kwargs["num_classes"])

    package, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    models.get_model = get_model
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_timm_model_is_built_untrained_with_data_shape(fake_timm):
    model = build_model("timm:tiny", {"drop_rate": 0.1}, FMNIST, 10)
    assert fake_timm == [("tiny", {"pretrained": False, "num_classes": 10, "in_chans": 1, "drop_rate": 0.1})]
    assert model(torch.randn(2, *FMNIST)).shape == (2, 10)
    with pytest.raises(KdistillError, match="cannot build 'timm:nope'.*Unknown model"):
        build_model("timm:nope", {}, CIFAR, 10)
    with pytest.raises(KdistillError, match=r"model\.pretrained: set by kdistill"):
        build_model("timm:tiny", {"pretrained": True}, CIFAR, 10)
    with pytest.raises(KdistillError, match="names no model"):
        build_model("timm:", {}, CIFAR, 10)


def test_torchvision_model_is_built_untrained(fake_torchvision):
    model = build_model("torchvision:tiny", {}, CIFAR, 100)
    assert fake_torchvision == [("tiny", {"weights": None, "num_classes": 100})]
    assert model(torch.randn(2, *CIFAR)).shape == (2, 100)
    with pytest.raises(KdistillError, match="3-channel.*timm:tiny"):
        build_model("torchvision:tiny", {}, FMNIST, 10)


def test_external_model_round_trips_through_model_json(fake_timm, tmp_path):
    torch.manual_seed(0)
    model = build_model("timm:tiny", {}, FMNIST, 3).eval()
    spec = model_spec("timm:tiny", {}, FMNIST, ["a", "b", "c"])
    (tmp_path / "model.json").write_text(json.dumps(spec))
    save_weights(model, tmp_path / "model.safetensors")
    loaded, loaded_spec = load_run_model(tmp_path)
    assert loaded_spec == spec and loaded_spec["name"] == "timm:tiny"
    x = torch.randn(2, *FMNIST)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
