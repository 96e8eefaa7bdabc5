"""The teacher output cache: stored logits equal a fresh teacher pass on the same view, fingerprints,
interrupted builds, top-k, and distillation from the cache through the engine and the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_distill, REPO, run_cli, tree_digest, write_yaml
from kdistill.ownership import MANIFEST
from kdistill.config import CacheConfig, DataConfig, DistillRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.data.augment import build_augmentation, hflip, random_crop
from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods.base import METHODS, Method, register
from kdistill.runner import run_cache_teacher, run_distill
from kdistill.training.engine import EpochPlan
from kdistill.training.teacher_cache import TeacherCache, build_cache, cache_fingerprint, open_cache, open_or_build_cache
from kdistill.training.teachers import load_teacher

AUG = ["random-crop", "hflip"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def _build(path: Path, teacher_run: Path, digits, augment: list[str], **cache_kw):
    teacher = load_teacher(teacher_run)
    augmenter = build_augmentation(augment, digits.input_shape)
    cfg = CacheConfig(**cache_kw)
    fp = cache_fingerprint(teacher, digits.name, digits.train, digits.classes, augmenter, cfg)
    cache = build_cache(path, teacher, digits.train, digits.num_classes, augmenter, cfg, fp, torch.device("cpu"), progress=False)
    return cache, teacher, augmenter, cfg, fp


def test_stored_logits_equal_a_fresh_teacher_pass_on_the_same_view(tmp_path, teacher_run, digits):
    cache, teacher, augmenter, cfg, _ = _build(tmp_path / "c", teacher_run, digits, AUG, views=3, dtype="float32", seed=5)
    n = len(digits.train)
    for v in range(3):
        # Independent re-creation of view v: the same generator through the plain augmentation functions.
        g = torch.Generator().manual_seed(5 * 1_000_003 + v)
        expected_images = hflip(random_crop(digits.train.inputs, g), g)
        stored = torch.from_numpy(np.asarray(cache.params[:, v], dtype=np.int64))
        assert torch.equal(augmenter.apply(digits.train.inputs, stored), expected_images)
        fresh = teacher(expected_images[:300])  # a different batch size from the build's
        assert torch.allclose(torch.from_numpy(np.array(cache.logits[:300, v])), fresh, atol=1e-5)
    assert cache.logits.shape == (n, 3, 10) and cache.logits.dtype == np.float32
    # Views differ from each other (augmentation really varies).
    assert not np.array_equal(cache.params[:, 0], cache.params[:, 1])


def test_float16_cache_is_the_teacher_pass_rounded(tmp_path, teacher_run, digits):
    cache, teacher, *_ = _build(tmp_path / "c", teacher_run, digits, [], views=1)
    assert cache.logits.dtype == np.float16 and cache.params.shape == (len(digits.train), 1, 0)
    fresh = teacher(digits.train.inputs).half()
    assert torch.allclose(torch.from_numpy(np.array(cache.logits[:, 0])).float(), fresh.float(), atol=2e-3)


def test_targets_draw_a_view_per_sample_and_recreate_its_image(tmp_path, teacher_run, digits):
    cache, teacher, augmenter, *_ = _build(tmp_path / "c", teacher_run, digits, AUG, views=4, dtype="float32")
    idx = torch.tensor([7, 0, 99, 7, 500])
    batch = Batch(digits.train.inputs[idx], digits.train.labels[idx], idx)
    out, logits = cache.targets(batch, torch.Generator().manual_seed(3))
    views = torch.randint(4, (5,), generator=torch.Generator().manual_seed(3))
    for row, (i, v) in enumerate(zip(idx.tolist(), views.tolist())):
        params = torch.from_numpy(np.asarray(cache.params[i, v], dtype=np.int64))[None]
        image = augmenter.apply(digits.train.inputs[i:i + 1], params)
        assert torch.equal(out.inputs[row:row + 1], image)
        assert torch.allclose(logits[row], teacher(image)[0], atol=1e-5)
    assert torch.equal(out.labels, batch.labels) and torch.equal(out.index, idx)


def test_views_per_image_shows_each_image_in_distinct_stored_views(tmp_path, teacher_run, digits):
    """FKD's multi-crop batches: each image of the batch becomes K rows in place, K distinct stored views, each
    the re-created image the teacher labelled with that view's stored logits."""
    built, teacher, augmenter, *_ = _build(tmp_path / "c", teacher_run, digits, AUG, views=4, dtype="float32")
    marked = np.load(built.path / "logits.npy", mmap_mode="r+")  # two views of an 8x8 digit may share a crop and flip:
    marked[:, :, 0] = np.arange(4)  # class 0's stored logit names the view, so each row's view can be read back
    marked.flush()
    cache = TeacherCache(built.path, built.header, augmenter, digits.train, views_per_image=3)
    idx = torch.tensor([7, 0, 99, 500])
    batch = Batch(digits.train.inputs[idx], digits.train.labels[idx], idx)
    seen: dict[int, set[int]] = {}
    for draw in range(30):
        out, logits = cache.targets(batch, torch.Generator().manual_seed(draw))
        assert out.inputs.shape[0] == logits.shape[0] == 12
        for row in range(12):
            i = int(idx[row // 3])
            assert int(out.index[row]) == i and int(out.labels[row]) == int(digits.train.labels[i])
            view = int(logits[row, 0])
            assert np.array_equal(np.asarray(cache.logits[i, view]), logits[row].numpy())  # that view's stored logits
            params = torch.from_numpy(np.asarray(cache.params[i, view], dtype=np.int64))[None]
            assert torch.equal(out.inputs[row:row + 1], augmenter.apply(digits.train.inputs[i:i + 1], params))
            seen.setdefault(draw * 4 + row // 3, set()).add(view)
    assert all(len(views) == 3 for views in seen.values())  # an image's K views are distinct
    for image in range(4):  # and over the draws every stored view of an image comes up
        assert set().union(*(seen[draw * 4 + image] for draw in range(30))) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="between 1 and the cache's 4 views"):
        TeacherCache(built.path, built.header, augmenter, digits.train, views_per_image=5)


def test_top_k_keeps_the_k_largest_probabilities_and_spreads_the_rest(tmp_path, teacher_run, digits):
    k = 3
    cache, teacher, *_ = _build(tmp_path / "c", teacher_run, digits, [], top_k=k, dtype="float32")
    rows = np.arange(20)
    dense = cache.stored_logits(rows, np.zeros(20, dtype=np.int64))
    probs = torch.softmax(teacher(digits.train.inputs[:20]).double(), dim=-1)
    got = torch.softmax(dense.double(), dim=-1)
    for r in range(20):  # explicit per-row check
        order = sorted(range(10), key=lambda c: -float(probs[r, c]))
        top, others = order[:k], order[k:]
        for c in top:
            assert math.isclose(float(got[r, c]), float(probs[r, c]), rel_tol=1e-4, abs_tol=1e-7)
        leftover = 1.0 - sum(float(probs[r, c]) for c in top)
        for c in others:
            assert math.isclose(float(got[r, c]), leftover / (10 - k), rel_tol=1e-3, abs_tol=1e-7)
        assert math.isclose(float(got[r].sum()), 1.0, rel_tol=1e-6)
    assert cache.topk_index.shape == (len(digits.train), 1, k)


def _cached_config(distill_config: dict, tmp_path: Path, **cache) -> dict:
    cfg = json.loads(json.dumps(distill_config))
    cfg["distill"].update(teacher_outputs="cached", cache={"dir": str(tmp_path / "cache"), **cache})
    return cfg


def test_cached_views_1_trains_like_live_distillation(tmp_path, distill_config):
    """Without augmentation and with float32 storage, the cache gives the live teacher's logits: same training."""
    live = validate_config({**distill_config, "out": str(tmp_path / "live")}, DistillRunConfig)
    cached = validate_config({**_cached_config(distill_config, tmp_path, dtype="float32"), "out": str(tmp_path / "cached")},
                             DistillRunConfig)
    run_distill(live, progress=False)
    run_distill(cached, progress=False)
    a = [json.loads(l) for l in (tmp_path / "live" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):
        assert math.isclose(x["kd"], y["kd"], rel_tol=1e-4) and math.isclose(x["ce"], y["ce"], rel_tol=1e-4)
    wa, wb = load_file(tmp_path / "live" / "model.safetensors"), load_file(tmp_path / "cached" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_cached_distillation_with_views_resumes_exactly(tmp_path, distill_config, monkeypatch):
    raw = _cached_config(distill_config, tmp_path, views=3)
    raw["data"]["augment"] = AUG
    raw["train"]["epochs"] = 3
    straight = validate_config({**raw, "out": str(tmp_path / "straight")}, DistillRunConfig)
    run_distill(straight, progress=False)

    resumed = validate_config({**raw, "out": str(tmp_path / "resumed")}, DistillRunConfig)
    interrupt_distill(resumed, monkeypatch, 1 + 17 + 5)  # dry run + one epoch (17 batches) + 5 batches
    run_distill(resumed, progress=False)
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_views_per_image_trains_k_samples_per_image_and_resumes_exactly(tmp_path, distill_config, monkeypatch):
    raw = _cached_config(distill_config, tmp_path, views=3, views_per_image=2)
    raw["data"]["augment"] = AUG
    raw["train"]["epochs"] = 2
    straight = validate_config({**raw, "out": str(tmp_path / "straight")}, DistillRunConfig)
    run_distill(straight, progress=False)
    n = len(load_dataset(straight.data).train)
    epochs = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [e["samples"] for e in epochs] == [2 * n, 2 * n] and all(e["views_per_image"] == 2 for e in epochs)
    header = json.loads((tmp_path / "cache" / "header.json").read_text())
    assert "views_per_image" not in json.dumps(header["fingerprint"])  # how the cache is read, not what it holds

    batches = EpochPlan.of(2 * n, 64, 1, 1).batches  # 32 images of 2 views each per batch
    assert batches == math.ceil(n / 32)
    resumed = validate_config({**raw, "out": str(tmp_path / "resumed")}, DistillRunConfig)
    interrupt_distill(resumed, monkeypatch, 1 + batches + 5)  # dry run + one epoch + 5 batches
    run_distill(resumed, progress=False)
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_mismatch_is_refused_and_rebuild_replaces(tmp_path, teacher_run, distill_config):
    teacher_copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher_copy)
    raw = _cached_config({**distill_config, "teacher": str(teacher_copy)}, tmp_path)
    cfg_path = write_yaml(tmp_path / "kd.yaml", raw)
    first = run_cli("cache-teacher", str(cfg_path), "-q")
    assert first.returncode == 0, first.stderr
    before = tree_digest(tmp_path / "cache")

    # The teacher is retrained in place (other weights): the cache no longer describes it.
    from kdistill.models import load_run_model, save_weights
    model, _ = load_run_model(teacher_copy)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    save_weights(model, teacher_copy / "model.safetensors")
    for args in (("cache-teacher", str(cfg_path)), ("distill", str(cfg_path), "-q")):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("kdistill: error: teacher cache") and "teacher_sha256" in result.stderr
        assert "--rebuild" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(tmp_path / "cache") == before  # nothing overwritten
    assert not (tmp_path / "student").exists()

    # Another setting pointed at the same folder is named too.
    views = run_cli("cache-teacher", str(cfg_path), "data.augment=[hflip]", "distill.cache.views=2")
    assert views.returncode == 2 and "views 1 (cache) vs 2 (now)" in views.stderr

    rebuilt = run_cli("cache-teacher", str(cfg_path), "--rebuild", "-q")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert tree_digest(tmp_path / "cache") != before
    assert run_cli("distill", str(cfg_path), "-q").returncode == 0


def test_interrupted_build_leaves_nothing_that_passes_for_a_cache(tmp_path, teacher_run, digits, monkeypatch):
    from kdistill.training.teachers import FrozenTeacher

    original, calls = FrozenTeacher.__call__, {"n": 0}

    def dying_call(self, inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, inputs)

    monkeypatch.setattr(FrozenTeacher, "__call__", dying_call)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "c", teacher_run, digits, [], views=2, batch_size=256)
    monkeypatch.setattr(FrozenTeacher, "__call__", original)
    assert list(tmp_path.iterdir()) == []  # neither the cache nor its work folder


def _open_args(teacher_run, digits, **kw):
    teacher = load_teacher(teacher_run)
    cfg = CacheConfig(**kw)
    fp = cache_fingerprint(teacher, digits.name, digits.train, digits.classes, None, cfg)
    return teacher, cfg, fp


@pytest.mark.parametrize("damage", ["incomplete-header", "truncated-logits", "no-header-json"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, teacher_run, digits, damage, capsys):
    path = tmp_path / "c"
    _build(path, teacher_run, digits, [])
    header = json.loads((path / "header.json").read_text())
    if damage == "incomplete-header":
        (path / "header.json").write_text(json.dumps({**header, "complete": False}))
    elif damage == "truncated-logits":
        np.save(path / "logits.npy", np.zeros((5, 1, 10), dtype=np.float16))
    else:
        (path / "header.json").write_text("{ cut sh")
    teacher, cfg, fp = _open_args(teacher_run, digits)
    assert open_cache(path, fp, None) is None
    cache, built = open_or_build_cache(path, teacher, digits.train, 10, None, cfg, fp, torch.device("cpu"), progress=False)
    assert built and "incomplete" in capsys.readouterr().err
    assert cache.logits.shape == (len(digits.train), 1, 10)
    assert json.loads((path / "header.json").read_text())["complete"] is True


def test_sigkilled_build_is_rebuilt_by_the_next_command(tmp_path, teacher_run, distill_config):
    """A real cache-teacher process killed mid-build: no cache appears, and the next run cleans up and builds."""
    teacher_copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher_copy)
    raw = _cached_config({**distill_config, "teacher": str(teacher_copy)}, tmp_path, views=400, batch_size=64)
    raw["data"]["augment"] = AUG
    cfg_path = write_yaml(tmp_path / "kd.yaml", raw)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kdistill", "cache-teacher", str(cfg_path), "-q"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("cache.building-*/logits.npy")):
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the build finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cache").exists() and list(tmp_path.glob("cache.building-*"))

    result = run_cli("cache-teacher", str(cfg_path), "distill.cache.views=2", "-q")
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("cache.building-*"))
    assert json.loads((tmp_path / "cache" / "header.json").read_text())["complete"] is True


def test_default_location_is_inside_the_teacher_run_and_goes_with_an_overwrite(tmp_path, teacher_run, distill_config):
    teacher_copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher_copy)
    raw = json.loads(json.dumps(distill_config))
    raw.update(teacher=str(teacher_copy))
    raw["distill"]["teacher_outputs"] = "cached"
    cfg_path = write_yaml(tmp_path / "kd.yaml", raw)
    result = run_cli("distill", str(cfg_path), "-q")
    assert result.returncode == 0, result.stderr
    caches = [p for p in (teacher_copy / "teacher-cache").iterdir() if p.name != MANIFEST]  # beside its manifest
    assert len(caches) == 1 and caches[0].name.startswith("digits-v1-")
    assert "teacher cache" in result.stderr
    # The second student reuses it (nothing rebuilt).
    again = run_cli("distill", str(cfg_path), "-q", "--overwrite")
    assert again.returncode == 0 and "built in" not in again.stderr
    # Retraining the teacher in place with --overwrite removes caches of the old weights.
    teacher_cfg = write_yaml(tmp_path / "t.yaml", {"name": "t", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]},
                                                   "train": {"epochs": 1}, "out": str(teacher_copy)})
    assert run_cli("train", str(teacher_cfg), "--overwrite", "-q").returncode == 0
    assert not (teacher_copy / "teacher-cache").exists()


@pytest.mark.parametrize("overrides, message", [
    (["distill.cache.views=3"], "distill.cache.views=3 needs data.augment"),
    (["distill.cache.top_k=10"], "distill.cache.top_k=10 must be smaller than the number of classes (10)"),
    (["distill.alpha=1.0"], "does not use the teacher"),
    (["distill.cache.views=0"], "distill.cache.views"),
    (["distill.cache.dtype=int8"], "distill.cache.dtype"),
    (["distill.teacher_outputs=disk"], "distill.teacher_outputs"),
    (["distill.cache.views_per_image=2"], "distill.cache.views_per_image=2 needs at least that many stored views; "
                                          "distill.cache.views is 1"),
    (["distill.cache.views=3", "distill.cache.views_per_image=3"], "data.batch_size=64 must be a multiple of "
                                                                   "distill.cache.views_per_image=3"),
    (["distill.teacher_outputs=live", "distill.cache.views_per_image=2"], "set distill.teacher_outputs=cached"),
])
def test_bad_cache_settings_are_one_line_errors(tmp_path, distill_config, overrides, message):
    cfg_path = write_yaml(tmp_path / "kd.yaml", _cached_config(distill_config, tmp_path))
    for command in ("cache-teacher", "distill"):
        result = run_cli(command, str(cfg_path), *overrides)
        if command == "distill" and overrides == ["distill.alpha=1.0"]:
            assert result.returncode == 0  # plain CE distil run: no teacher, no cache needed
            continue
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("kdistill: error:") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_a_foreign_folder_is_never_used_or_deleted_as_a_cache(tmp_path, distill_config):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    raw = _cached_config(distill_config, tmp_path)
    raw["distill"]["cache"]["dir"] = str(mine)
    cfg_path = write_yaml(tmp_path / "kd.yaml", raw)
    for extra in ([], ["--rebuild"]):
        result = run_cli("cache-teacher", str(cfg_path), *extra)
        assert result.returncode == 2 and "holds other files" in result.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    # Nor may the cache live inside the student's run directory.
    inside = run_cli("distill", str(cfg_path), f"distill.cache.dir={tmp_path / 'student' / 'c'}")
    assert inside.returncode == 2 and "overlaps the run directory" in inside.stderr


def test_feature_methods_are_told_to_use_a_live_teacher(tmp_path, distill_config):
    @register
    class _FeatureProbe(Method):
        name = "feature-probe-test"
        reads_teacher_features = True

        def forward(self, batch, student_logits, teacher_logits):
            return {"ce": torch.nn.functional.cross_entropy(student_logits, batch.labels)}

    try:
        raw = _cached_config(distill_config, tmp_path)
        raw["distill"] = {"method": "feature-probe-test", "teacher_outputs": "cached", "cache": {"dir": str(tmp_path / "c")}}
        with pytest.raises(KdistillError, match="intermediate features.*teacher_outputs=live"):
            run_distill(validate_config(raw, DistillRunConfig), progress=False)
        assert not (tmp_path / "student").exists() and not (tmp_path / "c").exists()
    finally:
        METHODS.pop("feature-probe-test", None)


def test_bf16_teacher_precision_runs_live_and_cached(tmp_path, distill_config):
    raw = _cached_config(distill_config, tmp_path)
    raw["distill"]["teacher_precision"] = "bf16"
    raw["train"]["epochs"] = 1
    cache = run_cache_teacher(validate_config(raw, DistillRunConfig), progress=False)
    assert cache.header["fingerprint"]["teacher_precision"] == "bf16"
    teacher = load_teacher(distill_config["teacher"], precision="bf16")
    out = teacher(torch.zeros(3, 1, 8, 8))
    assert out.dtype == torch.float32 and out.shape == (3, 10)
    raw["distill"]["teacher_outputs"] = "live"
    row = run_distill(validate_config(raw, DistillRunConfig), progress=False)
    assert 0.0 <= row["accuracy"] <= 1.0


def test_fp32_teacher_stays_fp32_inside_a_bf16_autocast(teacher_run, digits):
    teacher = load_teacher(teacher_run)
    x = digits.train.inputs[:16]
    plain = teacher(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = teacher(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_default_folders_differ_for_teachers_and_data(tmp_path, teacher_run, digits):
    from kdistill.training.teacher_cache import default_cache_dir

    cfg = CacheConfig()
    single = load_teacher(teacher_run)
    ensemble = load_teacher([str(teacher_run), str(teacher_run)])
    fp = lambda teacher, split: cache_fingerprint(teacher, "digits", split, digits.classes, None, cfg)  # noqa: E731
    half = type(digits.train)(digits.train.inputs[:500], digits.train.labels[:500])
    dirs = {default_cache_dir(teacher_run, fp(single, digits.train)), default_cache_dir(teacher_run, fp(ensemble, digits.train)),
            default_cache_dir(teacher_run, fp(single, half))}
    assert len(dirs) == 3 and all(d.parent == teacher_run / "teacher-cache" for d in dirs)


def test_a_folder_holding_only_a_header_json_is_not_taken_for_a_cache(tmp_path, teacher_run, digits):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "header.json").write_text('{"mine": true}')
    teacher, cfg, fp = _open_args(teacher_run, digits)
    with pytest.raises(KdistillError, match="holds other files"):
        open_or_build_cache(folder, teacher, digits.train, 10, None, cfg, fp, torch.device("cpu"), progress=False)
    assert (folder / "header.json").read_text() == '{"mine": true}'


def test_a_train_samples_budget_gets_a_cache_of_its_own_rows(tmp_path, teacher_run, distill_config):
    """data.train_samples: the cache holds the teacher's logits on exactly the subset the student trains on."""
    raw = _cached_config(distill_config, tmp_path, dtype="float32")
    raw["data"] = {**raw["data"], "train_samples": 300}
    run_distill(validate_config({**raw, "out": str(tmp_path / "kd")}, DistillRunConfig), progress=False)
    header = json.loads((tmp_path / "cache" / "header.json").read_text())
    subset = load_dataset(DataConfig.model_validate(raw["data"])).train
    stored = np.load(tmp_path / "cache" / "logits.npy")
    assert stored.shape[0] == len(subset) == 300 and header["fingerprint"]["data"]["samples"] == 300
    fresh = load_teacher(teacher_run)(subset.inputs)
    assert torch.allclose(torch.from_numpy(stored[:, 0]), fresh, atol=1e-5)
