"""The CIFAR model zoo: parameter counts (closed form and published), shapes, taps, errors,
and the lazily imported `timm:` / `torchvision:` models (faked: neither package is needed)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

import kdistill.models as zoo
from kdistill.errors import KdistillError
from kdistill.models import ZOO, build_model, count_params, load_run_model, model_spec, save_weights

CIFAR, FMNIST = (3, 32, 32), (1, 28, 28)
NEW_MODELS = ["seed_large_cnn", "seed_small_cnn", "resnet20", "resnet56", "resnet8x4", "resnet32x4", "wrn_40_2", "wrn_16_2"]


# --- closed-form parameter counts ------------------------------------------------------------

def _linear(i: int, o: int) -> int:
    return i * o + o


def _conv_bn(i: int, o: int, k: int = 3) -> int:
    return i * o * k * k + 2 * o  # conv without bias, BatchNorm weight + bias


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
