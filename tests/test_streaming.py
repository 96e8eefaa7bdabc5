"""Images streamed from disk (kdistill.data.streaming; data.in_memory, manifests): the streamed split holds
the in-memory inputs exactly, a streamed run trains the same student and a streamed cache re-creates the
teacher's views; bad files and manifests are one line naming file and row, and change nothing on disk."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tree_digest, write_yaml
from kdistill.config import DataConfig, DistillRunConfig, TrainRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.data.augment import build_augmentation
from kdistill.data.splits import iterate_batches
from kdistill.data.streaming import ImageFiles, is_streamed
from kdistill.errors import KdistillError
from kdistill.models import build_model, model_spec
from kdistill.training import distributed
from kdistill.training.teacher_source import TeacherSource
from kdistill.runner import distill_setup, distill_student, run_distill, run_train
from test_cli_errors import assert_user_error, cli
from test_data import write_imagefolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    write_imagefolder(root, classes=("ant", "bee", "cat"), counts={"train": 20, "val": 6, "test": 6}, size=(10, 9))
    return root


def data_cfg(root: Path, **more) -> dict:
    return {"name": "imagefolder", "root": str(root), "batch_size": 16, **more}


def test_a_streamed_split_holds_the_in_memory_inputs(folder):
    held = load_dataset(DataConfig(**data_cfg(folder, in_memory=True)))
    assert "held in memory" in held.notes[0]
    streamed = load_dataset(DataConfig(**data_cfg(folder, in_memory=False, workers=2)))
    assert "streamed from disk by 2 worker(s)" in streamed.notes[0]
    assert is_streamed(streamed.train.inputs) and not is_streamed(held.train.inputs)
    assert streamed.input_shape == held.input_shape and streamed.classes == held.classes
    np.testing.assert_allclose(streamed.normalization["mean"], held.normalization["mean"], rtol=1e-9)
    np.testing.assert_allclose(streamed.normalization["std"], held.normalization["std"], rtol=1e-9)
    for name in ("train", "val", "test"):
        torch.testing.assert_close(streamed.split(name).inputs[:], held.split(name).inputs, rtol=0, atol=1e-6)
        assert torch.equal(streamed.split(name).labels, held.split(name).labels)
    order = [torch.tensor([5, 1, 7]), torch.tensor([0, 59])]
    for chunk, batch in zip(order, streamed.train.inputs.batches(order)):
        torch.testing.assert_close(batch, held.train.inputs[chunk], rtol=0, atol=1e-6)


def test_auto_streams_above_the_memory_limit(tmp_path, capsys):
    root = tmp_path / "big"
    write_imagefolder(root, classes=("a", "b"), counts={"train": 15, "val": 2}, size=(100, 100))  # 3.4 MB decoded
    held = load_dataset(DataConfig(**data_cfg(root, memory_limit_mb=4)))
    assert not is_streamed(held.train.inputs)
    assert "(3 MB decoded; data.in_memory=auto, data.memory_limit_mb=4): held in memory" in held.notes[0]
    data = load_dataset(DataConfig(**data_cfg(root, memory_limit_mb=3)))
    assert is_streamed(data.train.inputs)
    assert "data.in_memory=auto, data.memory_limit_mb=3): streamed from disk" in data.notes[0]
    # the run prints it, once its other checks have passed
    raw = {"name": "s", "data": data_cfg(root, memory_limit_mb=3), "model": {"name": "mlp", "hidden": [4]},
           "train": {"epochs": 1}, "out": str(tmp_path / "run")}
    code, _, err = cli(capsys, "train", write_yaml(tmp_path / "s.yaml", raw), "-q")
    assert code == 0 and "streamed from disk" in err


@pytest.mark.parametrize("augment", [[], ["random-crop", "hflip"]])
def test_a_streamed_run_trains_the_in_memory_student(folder, tmp_path, augment):
    rows = {}
    for in_memory in (True, False):
        raw = {"name": "s", "seed": 0, "data": data_cfg(folder, in_memory=in_memory, workers=1, augment=augment),
               "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 2, "lr": 3e-3},
               "out": str(tmp_path / str(in_memory))}
        rows[in_memory] = run_train(validate_config(raw, TrainRunConfig), progress=False)
    held, streamed = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("True", "False"))
    for key in held:
        torch.testing.assert_close(held[key], streamed[key], rtol=1e-4, atol=1e-5)
    assert rows[True]["accuracy"] == rows[False]["accuracy"]


def test_a_streamed_cache_recreates_the_teachers_views(folder, tmp_path):
    teacher = {"name": "t", "seed": 0, "data": data_cfg(folder, in_memory=True), "model": {"name": "cnn", "channels": [4]},
               "train": {"epochs": 1}, "out": str(tmp_path / "teacher")}
    run_train(validate_config(teacher, TrainRunConfig), progress=False)
    students = {}
    for in_memory in (True, False):
        raw = {"name": "kd", "seed": 0, "data": data_cfg(folder, in_memory=in_memory, augment=["random-crop", "hflip"]),
               "teacher": str(tmp_path / "teacher"), "student": {"name": "mlp", "hidden": [8]},
               "distill": {"method": "kd", "teacher_outputs": "cached", "cache": {"views": 2, "dtype": "float32",
                                                                               "dir": str(tmp_path / f"cache-{in_memory}")}},
               "train": {"epochs": 2}, "out": str(tmp_path / f"kd-{in_memory}")}
        students[in_memory] = run_distill(validate_config(raw, DistillRunConfig), progress=False)
        cached = np.load(tmp_path / f"cache-{in_memory}" / "logits.npy")
        students[f"logits-{in_memory}"] = cached
    np.testing.assert_allclose(students["logits-True"], students["logits-False"], rtol=1e-4, atol=1e-4)
    assert students[True]["accuracy"] == students[False]["accuracy"]
    header = json.loads((tmp_path / "cache-False" / "header.json").read_text())
    assert header["fingerprint"]["data"]["content_sha256"] != json.loads(
        (tmp_path / "cache-True" / "header.json").read_text())["fingerprint"]["data"]["content_sha256"]


def test_views_per_image_decode_each_streamed_image_once_for_all_its_views(folder, tmp_path):
    """FKD on the streaming path: with distill.cache.views_per_image 2 an epoch trains on 2 views of every
    image, and each training image is read from disk once."""
    teacher = {"name": "t", "seed": 0, "data": data_cfg(folder, in_memory=True), "model": {"name": "mlp", "hidden": [4]},
               "train": {"epochs": 1}, "out": str(tmp_path / "teacher")}
    run_train(validate_config(teacher, TrainRunConfig), progress=False)
    raw = {"name": "kd", "seed": 0, "data": data_cfg(folder, in_memory=False, workers=0, augment=["random-crop", "hflip"]),
           "teacher": str(tmp_path / "teacher"), "student": {"name": "mlp", "hidden": [8]},
           "distill": {"method": "kd", "teacher_outputs": "cached",
                       "cache": {"views": 3, "views_per_image": 2, "dir": str(tmp_path / "cache")}},
           "train": {"epochs": 2}, "out": str(tmp_path / "kd")}
    cfg = validate_config(raw, DistillRunConfig)
    data, teacher_model, method = distill_setup(cfg)
    decoded = {"n": 0}
    decode = data.train.inputs.decode

    def counted(path):
        decoded["n"] += 1
        return decode(path)

    data.train.inputs.decode = counted  # workers=0: the epoch's images are decoded in this process
    at_epoch_end = []
    student = build_model("mlp", {"hidden": [8]}, data.input_shape, data.num_classes)
    spec = model_spec("mlp", {"hidden": [8]}, data.input_shape, data.classes)
    distill_student(cfg, student, spec, method, teacher_model, data, progress=False,
                    on_epoch_end=lambda record: at_epoch_end.append((decoded["n"], record["samples"])))
    (first, _), (second, samples) = at_epoch_end
    assert second - first == len(data.train) == 60 and samples == 2 * 60


def test_a_process_decodes_only_the_rows_of_its_slice(folder):
    """Under torchrun each process decodes only the images its slice of the global batch is made from; the
    other rows are zeros, and the decoded ones are the in-memory images."""
    held = load_dataset(DataConfig(**data_cfg(folder, in_memory=True)))
    streamed = load_dataset(DataConfig(**data_cfg(folder, in_memory=False, workers=0)))
    decoded = {"n": 0}
    decode = streamed.train.inputs.decode

    def counted(path):
        decoded["n"] += 1
        return decode(path)

    streamed.train.inputs.decode = counted
    rank1 = distributed.Context(rank=1, world=2)
    for per_image in (1, 3):
        cache = SimpleNamespace(views_per_image=per_image)
        source = TeacherSource(None, cache, None, needs_teacher=True)
        rows = lambda n: source.image_rows(n, rank1.shard)  # noqa: E731
        decoded["n"], wanted = 0, 0
        batches = zip(iterate_batches(held.train, 7, shuffle=True, generator=torch.Generator().manual_seed(1)),
                      iterate_batches(streamed.train, 7, shuffle=True, generator=torch.Generator().manual_seed(1), rows=rows))
        for whole, part in batches:
            n = len(whole.index)
            mine = rows(n)
            drawn = rank1.shard(n * per_image)  # rank 1's drawn rows show images mine.start .. mine.stop - 1
            assert mine.start == drawn.start // per_image and mine.stop == (drawn.stop - 1) // per_image + 1
            assert torch.equal(part.index, whole.index) and torch.equal(part.labels, whole.labels)
            torch.testing.assert_close(part.inputs[mine], whole.inputs[mine], rtol=0, atol=1e-6)
            others = torch.ones(n, dtype=torch.bool)
            others[mine] = False
            assert not part.inputs[others].any()
            wanted += len(range(n)[mine])
        assert decoded["n"] == wanted < len(held.train)
    mixing = build_augmentation(["hflip", "mixup"], held.input_shape)
    assert TeacherSource(None, None, mixing, needs_teacher=False).image_rows(8, rank1.shard) == slice(0, 8)


def test_a_bad_image_met_while_streaming_is_one_line(folder, tmp_path, capsys):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(folder, root)
    victim = sorted((root / "val" / "bee").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # header intact, pixels cut off
    raw = {"name": "s", "data": data_cfg(root, in_memory=False, workers=1), "model": {"name": "mlp", "hidden": [8]},
           "train": {"epochs": 1}, "out": str(tmp_path / "run")}
    code, _, err = cli(capsys, "train", write_yaml(tmp_path / "s.yaml", raw))
    assert "Traceback" not in err
    assert code == 2 and err.strip().splitlines()[-1].startswith("kdistill: error:") and str(victim) in err, err


# ---------------------------------------------------------------- manifests


def write_manifests(folder: Path, where: Path, fmt: str = "csv") -> dict[str, Path]:
    where.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "val", "test"):
        rows = [(str(Path("..") / folder.name / split / c.name / f.name) if where.parent == folder.parent else str(f), c.name)
                for c in sorted((folder / split).iterdir()) for f in sorted(c.iterdir())]
        path = where / f"{split}.{fmt}"
        if fmt == "csv":
            path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
        else:
            path.write_text("".join(json.dumps({"path": p, "label": label}) + "\n" for p, label in rows))
        files[split] = path
    return files


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_manifest_loads_what_the_folder_holds(folder, tmp_path, fmt):
    files = write_manifests(folder, folder.parent / f"lists-{fmt}", fmt)
    listed = load_dataset(DataConfig(name="manifest", **{k: str(v) for k, v in files.items()}, in_memory=False))
    tree = load_dataset(DataConfig(**data_cfg(folder, in_memory=True)))
    assert listed.classes == tree.classes and listed.name == "manifest"
    for name in ("train", "val", "test"):
        torch.testing.assert_close(listed.split(name).inputs[:], tree.split(name).inputs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case,needle", [
    ("missing-file", "row 3: image not found"), ("unknown-label", "row 2: label 'wasp' is not one of train's"),
    ("no-header", "must name the columns path and label"), ("bad-json", "line 1: not JSON"),
    ("no-manifest", "manifest file not found"), ("empty", "no rows"),
])
def test_bad_manifests_are_one_line(folder, tmp_path, capsys, case, needle):
    files = write_manifests(folder, folder.parent / f"lists-{case}")
    if case == "missing-file":
        lines = files["train"].read_text().splitlines()
        lines[2] = "nowhere/x.png," + lines[2].split(",")[1]
        files["train"].write_text("\n".join(lines) + "\n")
    elif case == "unknown-label":
        lines = files["val"].read_text().splitlines()
        lines[1] = lines[1].split(",")[0] + ",wasp"
        files["val"].write_text("\n".join(lines) + "\n")
    elif case == "no-header":
        files["train"].write_text("\n".join(files["train"].read_text().splitlines()[1:]) + "\n")
    elif case == "bad-json":
        files["val"] = files["val"].with_suffix(".jsonl")
        files["val"].write_text("{not json\n")
    elif case == "no-manifest":
        files["test"] = tmp_path / "absent.csv"
    elif case == "empty":
        files["train"].write_text("path,label\n")
    lists = folder.parent / f"lists-{case}"
    before = (tree_digest(folder), tree_digest(lists))
    raw = {"name": "m", "data": {"name": "manifest", **{k: str(v) for k, v in files.items()}},
           "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1}, "out": str(tmp_path / "run")}
    code, _, err = cli(capsys, "train", write_yaml(tmp_path / "m.yaml", raw))
    assert_user_error(code, err, needle)
    assert not (tmp_path / "run").exists() and (tree_digest(folder), tree_digest(lists)) == before


def test_stream_settings_are_checked(tmp_path, capsys):
    for data, needle in (({"name": "digits", "in_memory": False}, "always held in memory"),
                         ({"name": "digits", "train": "x.csv"}, "for data.name: manifest only"),
                         ({"name": "manifest", "train": "x.csv"}, "needs data.train and data.val"),
                         ({"name": "digits", "workers": -1}, "data.workers")):
        raw = {"name": "m", "data": data, "model": {"name": "mlp"}, "out": str(tmp_path / "run")}
        code, _, err = cli(capsys, "train", write_yaml(tmp_path / "m.yaml", raw))
        assert_user_error(code, err, needle)


def test_image_files_decode_in_workers_and_here_alike(folder):
    data = load_dataset(DataConfig(**data_cfg(folder, in_memory=False, workers=2)))
    files: ImageFiles = data.train.inputs
    here = files[torch.tensor([3, 0, 9])]
    [there] = list(files.batches([torch.tensor([3, 0, 9])]))
    assert torch.equal(here, there) and files[3].shape == files.shape[1:]
    assert len(files.subset(torch.tensor([1, 2]))) == 2
    with pytest.raises(KdistillError):
        ImageFiles([folder / "missing.png"], files.decode, files.image_shape, files.scale, files.shift, 0)[0]


# ---------------------------------------------------------------- hf-disk images


def write_hf_images(folder: Path, out: Path, class_label: bool = True) -> Path:
    """The imagefolder's images as a DatasetDict (Image feature; ClassLabel or string labels), saved to disk."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    classes = sorted(p.name for p in (folder / "train").iterdir())
    splits = {}
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        images, labels = [], []
        for c in classes:
            for f in sorted((folder / ours / c).iterdir()):
                images.append(Image.open(f).copy())
                labels.append(classes.index(c) if class_label else c)
        label = datasets.ClassLabel(names=classes) if class_label else datasets.Value("string")
        features = datasets.Features({"picture": datasets.Image(), "kind": label})
        splits[theirs] = datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("class_label,in_memory", [(True, True), (True, False), (False, False)])
def test_an_hf_disk_image_set_loads_what_the_folder_holds(folder, tmp_path, class_label, in_memory):
    root = write_hf_images(folder, tmp_path / "hf", class_label)
    hf = load_dataset(DataConfig(name="hf-disk", root=str(root), image_column="picture", label_column="kind",
                                 in_memory=in_memory, workers=1))
    tree = load_dataset(DataConfig(**data_cfg(folder, in_memory=True)))
    assert hf.classes == tree.classes and is_streamed(hf.train.inputs) == (not in_memory)
    for name in ("train", "val", "test"):
        torch.testing.assert_close(hf.split(name).inputs[:], tree.split(name).inputs, rtol=0, atol=1e-6)
        assert torch.equal(hf.split(name).labels, tree.split(name).labels)


def test_hf_disk_errors_are_one_line(folder, tmp_path, capsys):
    root = write_hf_images(folder, tmp_path / "hf")
    for data, needle in (({"image_column": "photo", "label_column": "kind"}, "no column 'photo'"),
                         ({"image_column": "kind", "label_column": "kind"}, "not a readable image"),
                         ({"root": str(tmp_path / "nothing")}, "not a saved Hugging Face dataset")):
        raw = {"name": "h", "data": {"name": "hf-disk", "root": str(root), **data}, "model": {"name": "mlp"},
               "train": {"epochs": 1}, "out": str(tmp_path / "run")}
        code, _, err = cli(capsys, "train", write_yaml(tmp_path / "h.yaml", raw))
        assert_user_error(code, err, needle)
        assert not (tmp_path / "run").exists()


def test_an_hf_disk_set_with_an_empty_split_is_one_line(folder, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    image = Image.open(next((folder / "val").rglob("*.png"))).copy()
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"image": [], "label": []}, features=features),
                         validation=datasets.Dataset.from_dict({"image": [image] * 2, "label": [0, 1]}, features=features),
                         ).save_to_disk(str(tmp_path / "hf"))
    raw = {"name": "h", "data": {"name": "hf-disk", "root": str(tmp_path / "hf")}, "model": {"name": "mlp"},
           "train": {"epochs": 1}, "out": str(tmp_path / "run")}
    code, _, err = cli(capsys, "train", write_yaml(tmp_path / "h.yaml", raw))
    assert_user_error(code, err, "an empty split")
    assert not (tmp_path / "run").exists()


def test_a_manifest_whose_val_repeats_train_images_is_warned_about(folder, tmp_path):
    files = write_manifests(folder, folder.parent / "lists-shared")
    train_rows = files["train"].read_text().splitlines()
    files["val"].write_text(files["val"].read_text() + train_rows[1] + "\n")  # one training image listed in val too
    loaded = load_dataset(DataConfig(name="manifest", **{k: str(v) for k, v in files.items()}))
    warning = [n for n in loaded.notes if "also in the train manifest" in n]
    assert len(warning) == 1 and warning[0].startswith("kdistill: warning: 1 of the ") and " val images " in warning[0]
    clean = load_dataset(DataConfig(name="manifest", **{k: str(v) for k, v in write_manifests(
        folder, folder.parent / "lists-clean").items()}))
    assert not any("also in the train" in n for n in clean.notes)
