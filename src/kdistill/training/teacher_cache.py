"""Teacher output cache: the teacher's logits for every training sample, computed once.

The teacher never changes during distillation, so its outputs can be stored instead of
recomputed every epoch (FKD, Shen & Xing, ECCV 2022, stores soft labels per augmented crop;
DistillKit stores top-k log-probabilities). For every training sample the cache holds
`views` augmented versions: the augmentation choices of each view (crop offsets, flip) and
the teacher's logits on exactly that image. Each epoch the engine draws one stored view per
sample, re-creates the image from the stored choices, and shows it to the student, so the
student and the teacher see the same pixels. With `distill.cache.views_per_image: K` it draws
K distinct views of every image instead, in the same batch, from one decoded copy (FKD's
multi-crop sampling): a streamed image is read from disk once for K training samples.

On disk (a directory, numpy `.npy` files read as memory maps):

    header.json         format, fingerprint, shapes, "complete": true once fully written
    logits.npy          (N, views, C) float16/float32         (dense)
    topk_logprobs.npy   (N, views, k) log-probabilities        (top_k)
    topk_index.npy      (N, views, k) int32 class indices      (top_k)
    rest_logmass.npy    (N, views)   float32 log of the probability mass outside the top k
    params.npy          (N, views, P) int16 augmentation choices (P = 0 without augmentation)
    mix.npy             (N, views, 6) float64 partner index, lambda and pasted box (mixup / cutmix only)

A cache is built in a sibling `<dir>.building-<host>-<pid>` directory and renamed into place only
when complete, so an interrupted build never looks like a cache; a directory without a
complete header (or with files of the wrong shape) is detected and rebuilt. The fingerprint
(teacher weights hash, data set identity and content hash of the training split,
augmentation, views, seed, dtype, top_k, teacher precision) must equal the current
config's: a mismatch is an error that names what differs, or a rebuild when asked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from kdistill.config import CacheConfig
from kdistill.data.augment import Augmenter
from kdistill.data.splits import Batch, Split
from kdistill.data.streaming import in_chunks, is_streamed, take
from kdistill.digests import tensors_sha256
from kdistill.errors import KdistillError
from kdistill.ownership import FOLDER, MANIFEST, Owned, pid_alive
from kdistill.training.rundir import write_text_atomic
from kdistill.training.teachers import FrozenTeacher

CACHE_FORMAT = 1
HEADER = "header.json"
T = TypeVar("T")
CACHE_ROOT = "teacher-cache"  # default location, inside the teacher's run directory


def split_sha256(split: Split) -> str:
    """Content hash of a split (inputs and labels, in order): the cache's data identity."""
    if is_streamed(split.inputs):  # the files' identity (paths, sizes, times), not a read of every image
        return tensors_sha256(split.labels) + split.inputs.sha256()
    return tensors_sha256(split.inputs, split.labels)


def cache_fingerprint(teacher: FrozenTeacher, data_name: str, train: Split, classes: list[str],
                      augmenter: Augmenter | None, cfg: CacheConfig) -> dict[str, Any]:
    """Everything the stored logits depend on; two caches are interchangeable iff these are equal."""
    return {
        "format": CACHE_FORMAT,
        "teacher_sha256": teacher.weights_sha256,
        "teacher_model": {k: teacher.spec.get(k) for k in ("name", "kwargs")},
        "teacher_precision": teacher.precision,
        "data": {"name": data_name, "split": "train", "samples": len(train), "classes": classes,
                 "content_sha256": split_sha256(train)},
        "augment": augmenter.describe() if augmenter is not None else [],
        "views": cfg.views,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "top_k": cfg.top_k,
        **({"teacher_input": teacher.spec["teacher_input"]} if teacher.spec.get("teacher_input") else {}),
    }


def default_cache_dir(teacher_dir: str | Path, fingerprint: dict[str, Any]) -> Path:
    """`<teacher>/teacher-cache/<data>-v<views>[-top<k>]-<hash of the fingerprint>`: one folder per
    teacher, data content and setting, so different settings never share (or rebuild) a folder."""
    tag = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    top = f"-top{fingerprint['top_k']}" if fingerprint["top_k"] else ""
    return Path(teacher_dir) / CACHE_ROOT / f"{fingerprint['data']['name']}-v{fingerprint['views']}{top}-{tag}"


def _differences(found: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            shown = [str(x)[:12] + "..." if isinstance(x, str) and len(x) > 16 else json.dumps(x) for x in (a, b)]
            out.append(f"{prefix}{key} {shown[0]} (cache) vs {shown[1]} (now)")
    return out


class TeacherCache:
    """An opened, complete cache: draws stored views of each sample and returns (augmented batch, teacher logits).

    `views_per_image` K > 1 is FKD's multi-crop sampling (Shen & Xing, ECCV 2022): each image of a batch is
    shown in K distinct stored views, side by side in the same batch, all re-created from the one decoded
    copy, so the engine feeds the cache batches of batch_size / K images."""

    def __init__(self, path: Path, header: dict[str, Any], augmenter: Augmenter | None, train: Split | None = None,
                 views_per_image: int = 1):
        self.path = Path(path)
        self.header = header
        self.augmenter = augmenter
        self.train = train  # the split whose images are partners of mixed views
        self.mix = np.load(self.path / "mix.npy", mmap_mode="r") if header.get("mix_columns") else None
        if self.mix is not None and (train is None or augmenter is None or augmenter.mix is None):
            raise ValueError("a cache of mixed views needs the training split and the mixing augmenter")
        self.views = int(header["fingerprint"]["views"])
        if not 1 <= views_per_image <= self.views:
            raise ValueError(f"views_per_image={views_per_image} must be between 1 and the cache's {self.views} views")
        self.views_per_image = views_per_image
        self.num_classes = int(header["num_classes"])
        self.top_k = header["fingerprint"]["top_k"]
        self.params = np.load(self.path / "params.npy", mmap_mode="r")
        if self.top_k:
            self.topk_logprobs = np.load(self.path / "topk_logprobs.npy", mmap_mode="r")
            self.topk_index = np.load(self.path / "topk_index.npy", mmap_mode="r")
            self.rest_logmass = np.load(self.path / "rest_logmass.npy", mmap_mode="r")
        else:
            self.logits = np.load(self.path / "logits.npy", mmap_mode="r")

    def stored_logits(self, index: np.ndarray, view: np.ndarray) -> torch.Tensor:
        """Teacher logits (B, C) float32 of the given samples' given views.

        With top_k, the dense row is rebuilt as log-probabilities: the k stored ones, and the
        leftover mass spread evenly over the other C - k classes (so softmax(row) sums to 1
        and matches the teacher's probabilities on its top k classes exactly, at T = 1).
        """
        if not self.top_k:
            return torch.from_numpy(np.asarray(self.logits[index, view], dtype=np.float32))
        values = torch.from_numpy(np.asarray(self.topk_logprobs[index, view], dtype=np.float32))
        where = torch.from_numpy(np.asarray(self.topk_index[index, view], dtype=np.int64))
        rest = torch.from_numpy(np.asarray(self.rest_logmass[index, view], dtype=np.float32))
        fill = rest - math.log(self.num_classes - self.top_k)
        dense = fill[:, None].expand(len(index), self.num_classes).clone()
        return dense.scatter_(1, where, values)

    def targets(self, batch: Batch, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
        """Pick stored views of each sample (drawn from `generator`; `views_per_image` distinct ones, each image
        repeated that many times, in place), re-create them, return them with their logits."""
        view = self._draw_views(batch.labels.shape[0], generator)
        if self.views_per_image > 1:
            batch = batch._replace(**{name: getattr(batch, name).repeat_interleave(self.views_per_image, dim=0)
                                      for name in ("inputs", "labels", "index")})
        index = batch.index.numpy()
        inputs = batch.inputs
        if self.augmenter is not None:
            params = torch.from_numpy(np.asarray(self.params[index, view], dtype=np.int64))
            inputs = self.augmenter.apply(inputs, params)
        if self.mix is not None:  # the very partner and mix the teacher saw in this view
            mix = torch.from_numpy(np.asarray(self.mix[index, view], dtype=np.float64))
            inputs, mixed = _mixed_view(self.augmenter, self.train, inputs, mix, view, self.params)
            return batch._replace(inputs=inputs, mixed=mixed), self.stored_logits(index, view)
        return batch._replace(inputs=inputs), self.stored_logits(index, view)

    def _draw_views(self, n: int, generator: torch.Generator) -> np.ndarray:
        """The view of each of the n * views_per_image samples: one drawn per image, or K distinct ones in a row."""
        if self.views_per_image > 1:  # a random permutation of the views per image, its first K
            order = torch.rand(n, self.views, generator=generator).argsort(dim=1)
            return order[:, : self.views_per_image].reshape(-1).numpy()
        return torch.randint(self.views, (n,), generator=generator).numpy() if self.views > 1 else np.zeros(n, dtype=np.int64)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def _mixed_view(augmenter: Augmenter, train: Split, inputs: torch.Tensor, mix: torch.Tensor, view: np.ndarray,
                params: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`inputs` (already cropped and flipped) mixed with their stored partners, each partner re-created with its
    own stored choices of the same view; and (partner labels, lambda)."""
    partner = mix[:, 0].long()
    others = take(train.inputs, partner)
    others = others if isinstance(others, torch.Tensor) else others[:]  # a streamed split: decode the partners
    own_params = torch.from_numpy(np.asarray(params[partner.numpy(), view], dtype=np.int64))
    others = augmenter.apply(others.to(inputs.device), own_params)
    return augmenter.mix.apply(inputs, others, mix), (train.labels[partner], mix[:, 1].float())


def _expected_shapes(header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    if "arrays" in header:  # a cache that lists its arrays (causal-LM caches)
        return {name: tuple(shape) for name, shape in header["arrays"].items()}
    fp = header["fingerprint"]
    n, v, c, k = fp["data"]["samples"], fp["views"], header["num_classes"], fp["top_k"]
    shapes = {"params.npy": (n, v, len(header["param_columns"]))}
    if header.get("mix_columns"):
        shapes["mix.npy"] = (n, v, len(header["mix_columns"]))
    if k:
        shapes.update({"topk_logprobs.npy": (n, v, k), "topk_index.npy": (n, v, k), "rest_logmass.npy": (n, v)})
    else:
        shapes["logits.npy"] = (n, v, c)
    return shapes


def _read_complete_header(path: Path) -> dict[str, Any] | None:
    """The header of a complete, intact cache directory; None when it is incomplete or damaged."""
    try:
        header = json.loads((path / HEADER).read_text())
        if not isinstance(header, dict) or not header.get("complete"):
            return None
        for name, shape in _expected_shapes(header).items():
            array = np.load(path / name, mmap_mode="r")
            if tuple(array.shape) != tuple(shape):
                return None
        return header
    except (OSError, ValueError, KeyError, TypeError):
        return None


CACHE_FILES = {HEADER, HEADER + ".tmp", "params.npy", "mix.npy", "logits.npy", "topk_logprobs.npy", "topk_index.npy",
               "rest_logmass.npy"}


def _array_names(top_k: int | None) -> list[str]:
    return ["params.npy"] + (["topk_logprobs.npy", "topk_index.npy", "rest_logmass.npy"] if top_k else ["logits.npy"])


def _check_replaceable(path: Path, rebuild: bool = False) -> None:
    """Only an empty folder or one holding kdistill's cache files may be read, and only one whose manifest
    records every file in it (kdistill.ownership) may be rebuilt over: never a user's folder."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise KdistillError(f"teacher cache {path} exists and is not a directory; set distill.cache.dir=<another dir>")
    if path.is_dir():
        try:
            entries = {p.name for p in path.iterdir()}
        except OSError as exc:
            raise KdistillError(f"teacher cache {path}: cannot read it ({exc.strerror or exc})") from None
        owned = Owned(path)
        recorded = owned.entries()
        cache = recorded is not None and set(recorded) <= CACHE_FILES and not owned.foreign()  # kdistill's, and a cache
        legacy = recorded is None and {HEADER, "params.npy"} <= entries <= CACHE_FILES  # a cache of an older kdistill
        if entries and not (cache or legacy):
            raise KdistillError(f"teacher cache {path} is a folder that holds other files, not a kdistill cache; "
                                "set distill.cache.dir=<another dir>")
        if entries and rebuild and not owned.is_owned():
            raise KdistillError(f"teacher cache {path} has no {MANIFEST} (built by an older kdistill), so kdistill will "
                                "not delete it; delete it yourself to rebuild it, or set distill.cache.dir=<another dir>")


def _work_dir(path: Path) -> Path:
    return path.with_name(f"{path.name}.building-{socket.gethostname()}-{os.getpid()}")


def _parent_record(path: Path) -> Owned | None:
    """The manifest of the folder that holds the cache, when that folder is kdistill's (a teacher run's
    `teacher-cache/`, or one the build creates); None for a user's folder (`distill.cache.dir`), which gets none."""
    parent = Owned(path.parent)
    return parent if parent.is_owned() or not path.parent.exists() else None


def _discard(folder: Path, parent: Owned | None) -> None:
    """Remove a cache (or work) folder kdistill wrote: exactly its recorded files, never a folder holding others."""
    if folder.is_dir() and not Owned(folder).foreign():
        Owned(folder).remove("teacher cache")
        folder.rmdir()
    if parent is not None and not folder.exists():
        parent.release(folder.name)


def _remove_stale_builds(path: Path) -> None:
    """Delete `<dir>.building-<host>-<pid>` folders (and `.old-` leftovers) of killed builds on this host
    (their process is gone), when they hold only what kdistill recorded; a build by another host on a shared
    file system is left alone."""
    if not path.parent.is_dir():
        return
    host = socket.gethostname()
    for kind in ("building", "old"):
        for entry in path.parent.glob(f"{path.name}.{kind}-{host}-*"):
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
                _discard(entry, _parent_record(path))


def write_cache_folder(path: Path, header: dict[str, Any], arrays: dict[str, tuple[Any, tuple[int, ...]]],
                       fill: Callable[[dict[str, np.ndarray]], None]) -> dict[str, Any]:
    """Build a cache folder at `path` (any task's): `arrays` (file name -> (dtype, shape)) are opened as memory
    maps in a sibling work folder, `fill(maps)` writes them, and the work folder replaces `path` only once the
    header says complete; an interruption or a refusal of the disk leaves nothing that could pass for a cache.
    Returns the completed header."""
    _check_replaceable(path, rebuild=True)
    _remove_stale_builds(path)
    work = _work_dir(path)
    started = time.perf_counter()
    header = {**header, "complete": False}
    parent = _parent_record(path)
    try:
        if parent is not None:
            parent.claim(work.name, path.name, kind=FOLDER)
        work.mkdir(parents=True)
        Owned(work).claim(HEADER, *arrays)
        write_text_atomic(work / HEADER, json.dumps(header, indent=2) + "\n")
        maps = {name: np.lib.format.open_memmap(work / name, mode="w+", dtype=dtype, shape=shape)
                for name, (dtype, shape) in arrays.items()}
        fill(maps)
        for array in maps.values():
            array.flush()
        del maps
        header.update(complete=True, seconds=round(time.perf_counter() - started, 3))
        write_text_atomic(work / HEADER, json.dumps(header, indent=2) + "\n")
        if path.exists():  # a stale or mismatched cache being rebuilt: swap it out, then delete it
            _check_replaceable(path, rebuild=True)
            old = path.with_name(f"{path.name}.old-{socket.gethostname()}-{os.getpid()}")
            if parent is not None:
                parent.claim(old.name, kind=FOLDER)
            path.replace(old)
            _discard(old, parent)
        work.replace(path)
        if parent is not None:
            parent.release(work.name)
    except OSError as exc:
        _discard(work, parent)
        raise KdistillError(f"cannot write the teacher cache at {path}: {exc.strerror or exc}; "
                            "set distill.cache.dir=<a writable directory>") from None
    except BaseException:
        _discard(work, parent)  # interrupted: leave nothing that could pass for a cache
        raise
    return header


def build_cache(path: Path, teacher: FrozenTeacher, train: Split, num_classes: int, augmenter: Augmenter | None,
                cfg: CacheConfig, fingerprint: dict[str, Any], device: torch.device, progress: bool = True) -> TeacherCache:
    """Run the teacher over `views` augmented passes of `train` and store logits + augmentation choices.

    View v's choices are drawn from a generator seeded with `cfg.seed * 1_000_003 + v`, for
    the whole split at once; the teacher runs in batches of `cfg.batch_size` on `device`.
    """
    path = Path(path)
    if cfg.top_k is not None and cfg.top_k >= num_classes:
        raise KdistillError(f"distill.cache.top_k={cfg.top_k} must be smaller than the number of classes ({num_classes})")
    n, views, k = len(train), cfg.views, cfg.top_k
    columns = list(augmenter.columns) if augmenter is not None else []
    mix = augmenter.mix if augmenter is not None else None
    header = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "num_classes": num_classes,
              "param_columns": columns, "created_by": "kdistill cache-teacher", "device": str(device),
              **({"mix_columns": list(mix.columns)} if mix is not None else {})}
    dtype = np.float16 if cfg.dtype == "float16" else np.float32
    arrays: dict[str, tuple[Any, tuple[int, ...]]] = {"params.npy": (np.int16, (n, views, len(columns)))}
    if mix is not None:
        arrays["mix.npy"] = (np.float64, (n, views, len(mix.columns)))
    if k:
        arrays |= {"topk_logprobs.npy": (dtype, (n, views, k)), "topk_index.npy": (np.int32, (n, views, k)),
                   "rest_logmass.npy": (np.float32, (n, views))}
    else:
        arrays["logits.npy"] = (dtype, (n, views, num_classes))

    def fill(maps: dict[str, np.ndarray]) -> None:
        teacher.to(device)
        bar = tqdm(total=n * views, desc="teacher cache", unit="sample", leave=False, disable=None if progress else True)
        for v in range(views):
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + v)
            params = augmenter.draw(n, generator) if augmenter is not None else torch.zeros(n, 0, dtype=torch.long)
            maps["params.npy"][:, v] = params.numpy().astype(np.int16)
            mixes = mix.draw(n, generator) if mix is not None else None  # partners: a permutation of the split
            if mixes is not None:
                maps["mix.npy"][:, v] = mixes.numpy()
            for start, inputs in in_chunks(train.inputs, cfg.batch_size):
                stop = start + inputs.shape[0]
                if augmenter is not None:
                    inputs = augmenter.apply(inputs, params[start:stop])
                if mixes is not None:
                    inputs, _ = _mixed_view(augmenter, train, inputs, mixes[start:stop], np.full(stop - start, v),
                                            maps["params.npy"])
                logits = teacher(inputs.to(device)).float().cpu()
                if k:
                    logprobs = torch.log_softmax(logits, dim=-1)
                    values, where = logprobs.topk(k, dim=-1)
                    maps["topk_logprobs.npy"][start:stop, v] = values.numpy().astype(dtype)
                    maps["topk_index.npy"][start:stop, v] = where.numpy().astype(np.int32)
                    maps["rest_logmass.npy"][start:stop, v] = torch.logsumexp(logprobs.scatter(1, where, float("-inf")), dim=-1).numpy()
                else:
                    maps["logits.npy"][start:stop, v] = logits.numpy().astype(dtype)
                bar.update(stop - start)
        bar.close()

    return TeacherCache(path, write_cache_folder(path, header, arrays, fill), augmenter, train, cfg.views_per_image)


def open_cache_header(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The header of the complete cache at `path` whose fingerprint matches; None when there is none (or only an
    interrupted one). A complete cache with a different fingerprint is a KdistillError naming what differs."""
    path = Path(path)
    if not path.exists():
        return None
    _check_replaceable(path)
    header = _read_complete_header(path)
    if header is None:
        return None
    if header.get("fingerprint") != fingerprint:
        diff = _differences(header.get("fingerprint") or {}, fingerprint)
        raise KdistillError(
            f"teacher cache {path} was built for another setting ({'; '.join(diff[:3])}); "
            "rebuild it with `kdistill cache-teacher CONFIG --rebuild`, or set distill.cache.dir=<another dir>"
        )
    return header


def open_cache(path: Path, fingerprint: dict[str, Any], augmenter: Augmenter | None) -> TeacherCache | None:
    """The matching vision cache at `path`, or None (see `open_cache_header`)."""
    header = open_cache_header(path, fingerprint)
    return TeacherCache(Path(path), header, augmenter) if header is not None else None


def open_or_build(path: Path, fingerprint: dict[str, Any], opened: Callable[[dict[str, Any]], T],
                  build: Callable[[], T], *, rebuild: bool = False) -> tuple[T, bool]:
    """The matching cache at `path` (`opened(header)`), else `build()` when it is absent, interrupted or (with
    `rebuild`) mismatched; returns (cache, built?)."""
    path = Path(path)
    _check_replaceable(path)
    if not rebuild:
        header = open_cache_header(path, fingerprint)
        if header is not None:
            return opened(header), False
        if path.exists() and any(path.iterdir()):
            print(f"kdistill: teacher cache {path} is incomplete (an interrupted build?); rebuilding it", file=sys.stderr)
    return build(), True


def open_or_build_cache(path: Path, teacher: FrozenTeacher, train: Split, num_classes: int, augmenter: Augmenter | None,
                        cfg: CacheConfig, fingerprint: dict[str, Any], device: torch.device, *,
                        rebuild: bool = False, progress: bool = True) -> tuple[TeacherCache, bool]:
    """The matching vision cache at `path`, built if absent, interrupted or (with `rebuild`) mismatched; (cache, built?)."""
    return open_or_build(path, fingerprint,
                         lambda header: TeacherCache(Path(path), header, augmenter, train, cfg.views_per_image),
                         lambda: build_cache(path, teacher, train, num_classes, augmenter, cfg, fingerprint, device, progress),
                         rebuild=rebuild)
