"""mixup / cutmix (kdistill.data.augment.Mix): the mixed image, the mixed label term, and the teacher cache's
function matching (the student sees exactly the mixed image the teacher labelled)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, write_yaml
from kdistill.config import CacheConfig, DataConfig
from kdistill.data import load_dataset
from kdistill.data.augment import Mix, build_augmentation
from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods.base import labeled_cross_entropy
from kdistill.training.teacher_cache import build_cache, cache_fingerprint
from kdistill.training.teachers import load_teacher


def test_mixup_and_cutmix_against_an_explicit_computation():
    g = torch.Generator().manual_seed(0)
    images, partners = torch.randn(16, 1, 8, 8, generator=g), torch.randn(16, 1, 8, 8, generator=g)
    mixup = Mix("mixup", 0.4, 1.0, 8, 8)
    params = mixup.draw(16, torch.Generator().manual_seed(1))
    assert sorted(params[:, 0].long().tolist()) == list(range(16))  # partners: a permutation
    lam = params[:, 1]
    assert bool(((lam > 0) & (lam < 1)).all())
    out = mixup.apply(images, partners, params)
    for i in range(16):
        assert torch.allclose(out[i], float(lam[i]) * images[i] + (1 - float(lam[i])) * partners[i], atol=1e-6)

    cutmix = Mix("cutmix", 1.0, 1.0, 8, 8)
    params = cutmix.draw(16, torch.Generator().manual_seed(2))
    out = cutmix.apply(images, partners, params)
    for i in range(16):
        y0, x0, y1, x1 = (int(v) for v in params[i, 2:])
        expected = images[i].clone()
        expected[:, y0:y1, x0:x1] = partners[i, :, y0:y1, x0:x1]
        assert torch.equal(out[i], expected)
        assert float(params[i, 1]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 64)  # lambda: the own pixels' share
    some = Mix("mixup", 1.0, 0.5, 8, 8).draw(2000, torch.Generator().manual_seed(3))[:, 1]
    assert 0.4 < float((some == 1.0).float().mean()) < 0.6  # probability 0.5: about half are left unmixed


def test_the_mixed_label_term_against_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=g)
    labels, partner_labels = torch.randint(0, 4, (10,), generator=g), torch.randint(0, 4, (10,), generator=g)
    labels[3] = -1  # an unlabelled sample: only its partner's label counts, with weight 1 - lambda
    lam = torch.rand(10, generator=g)
    batch = Batch(logits, labels, torch.arange(10), mixed=(partner_labels, lam))
    total, weight = 0.0, 0.0
    for i in range(10):
        log_p = torch.log_softmax(logits[i], -1)
        if labels[i] >= 0:
            total += float(lam[i]) * -float(log_p[labels[i]])
            weight += float(lam[i])
        total += (1 - float(lam[i])) * -float(log_p[partner_labels[i]])
        weight += 1 - float(lam[i])
    assert float(labeled_cross_entropy(logits, batch)) == pytest.approx(total / weight, rel=1e-6)
    unmixed = Batch(logits, labels.clamp(min=0), torch.arange(10), mixed=(partner_labels, torch.ones(10)))
    assert float(labeled_cross_entropy(logits, unmixed)) == pytest.approx(float(F.cross_entropy(logits, labels.clamp(min=0))), rel=1e-6)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_the_cache_stores_each_views_mix_and_the_student_sees_what_the_teacher_labelled(tmp_path, teacher_run, kind):
    digits = load_dataset(DataConfig(name="digits"))
    teacher = load_teacher(teacher_run)
    augmenter = build_augmentation(["random-crop", "hflip", {"name": kind, "alpha": 0.5}], digits.input_shape)
    cfg = CacheConfig(views=2, dtype="float32", seed=3)
    fp = cache_fingerprint(teacher, digits.name, digits.train, digits.classes, augmenter, cfg)
    assert fp["augment"][-1] == {"name": kind, "alpha": 0.5, "probability": 1.0}
    cache = build_cache(tmp_path / "c", teacher, digits.train, digits.num_classes, augmenter, cfg, fp, torch.device("cpu"),
                        progress=False)
    index = torch.tensor([5, 700, 3, 1000, 42])
    batch = Batch(digits.train.inputs[index], digits.train.labels[index], index)
    shown, logits = cache.targets(batch, torch.Generator().manual_seed(9))
    assert not torch.equal(shown.inputs, augmenter.apply(batch.inputs, torch.zeros(5, 3, dtype=torch.long)))
    fresh = teacher(shown.inputs)
    assert torch.allclose(logits, fresh, atol=1e-5)  # the teacher's logits on exactly the image the student gets
    partner_labels, lam = shown.mixed
    stored = torch.from_numpy(np.asarray(cache.mix[index.numpy()], dtype=np.float64))  # (5, views, 6)
    for i in range(5):  # each sample's lambda and partner are those of one of its stored views
        views = [v for v in range(2) if float(stored[i, v, 1]) == pytest.approx(float(lam[i]))]
        assert views and int(partner_labels[i]) == int(digits.train.labels[int(stored[i, views[0], 0])])


def test_mix_settings_are_checked():
    for entry, needle in (([{"name": "mixup", "alpha": 0}], "alpha > 0"), (["mixup", "hflip"], "last in the list"),
                          ([{"name": "cutmix", "beta": 1}], "unknown key 'beta'"), ([{"name": "hflip"}], "names a mix")):
        with pytest.raises(KdistillError, match=needle):
            build_augmentation(entry, (1, 8, 8))


def test_mixed_distillation_through_the_cli_cached_and_live(tmp_path, distill_config):
    for mode, extra in (("cached", {"teacher_outputs": "cached", "cache": {"views": 2, "dir": str(tmp_path / "cache")}}),
                        ("live", {})):
        cfg = {**distill_config, "data": {**distill_config["data"], "augment": ["hflip", {"name": "cutmix", "alpha": 1.0}]},
               "distill": {**distill_config["distill"], **extra}, "out": str(tmp_path / mode)}
        result = run_cli("distill", str(write_yaml(tmp_path / f"{mode}.yaml", cfg)), "-q")
        assert result.returncode == 0, result.stderr
        line = json.loads((tmp_path / mode / "metrics.jsonl").read_text().splitlines()[-1])
        assert math.isfinite(line["ce"]) and math.isfinite(line["kd"])
    refused = run_cli("distill", str(write_yaml(tmp_path / "tf.yaml", {**cfg, "teacher": None, "distill": {"method": "tf_kd"},
                                                                       "out": str(tmp_path / "tf")})), "-q")
    assert refused.returncode == 2 and "gives every image two labels" in refused.stderr
