"""Offline teacher logits for causal LMs: the teacher's top-k next-token log-probabilities at every training
position, computed once and read as memory maps by every student that distils from them.

On disk (the folder life cycle of kdistill.training.teacher_cache: built aside, renamed into place when complete,
fingerprinted, recorded in manifests):

    header.json         format, fingerprint, array shapes, bytes per token, "complete": true once written
    topk_logprobs.npy   (blocks, block_size, k) float16/float32 log-probabilities at the cache's temperature
    topk_index.npy      (blocks, block_size, k) uint16 token ids (int32 for vocabularies over 65,536)
    rest_logmass.npy    (blocks, block_size) float32: log of the probability mass outside the k tokens

The losses read a row as `TopK`: the k tokens plus one tail bin with the leftover mass (kdistill.losses.
tokens), so the tail is counted exactly, not renormalised away. The fingerprint holds the teacher's weights
hash, its tokenizer's hash, the training blocks' content hash and shape, k, the temperature and the dtype:
a cache built for anything else is refused with what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kdistill.errors import KdistillError
from kdistill.lm.data import Blocks
from kdistill.lm.models import final_hidden, head_of, tokenizer_sha256
from kdistill.losses.tokens import top_k_of
from kdistill.ownership import Owned
from kdistill.training.teacher_cache import CACHE_ROOT, open_or_build, write_cache_folder

LM_CACHE_FORMAT = 1
ARRAYS = ("topk_logprobs.npy", "topk_index.npy", "rest_logmass.npy")


def lm_cache_fingerprint(teacher_sha256: str, tokenizer: Any, data_name: str, train: Blocks, top_k: int,
                         temperature: float, dtype: str) -> dict[str, Any]:
    """Everything the stored log-probabilities depend on (`teacher_sha256`: kdistill.digests.weights_sha256)."""
    return {"format": LM_CACHE_FORMAT, "task": "causal-lm", "teacher_sha256": teacher_sha256,
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "data": {"name": data_name, "blocks": len(train), "block_size": int(train.input_ids.shape[1]),
                     "content_sha256": train.sha256()},
            "top_k": top_k, "temperature": temperature, "dtype": dtype}


def default_lm_cache_dir(teacher_dir: Path, fingerprint: dict[str, Any]) -> Path | None:
    """`<teacher>/teacher-cache/<data>-lm-top<k>-<hash>` when the teacher folder is kdistill's (an import-gguf
    folder or a run, whose manifest records `teacher-cache/`); None for a user's folder, never written into."""
    recorded = Owned(teacher_dir).entries() or {}
    if CACHE_ROOT not in recorded:
        return None
    tag = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return Path(teacher_dir) / CACHE_ROOT / f"{fingerprint['data']['name']}-lm-top{fingerprint['top_k']}-{tag}"


class LMTeacherCache:
    """An opened, complete causal-LM cache."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = header
        self.logprobs, self.ids, self.tail = (np.load(self.path / name, mmap_mode="r") for name in ARRAYS)

    def rows(self, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block `block`'s (L, k) log-probabilities (float32), (L, k) token ids (int64) and (L,) tail log-mass."""
        return (torch.from_numpy(np.array(self.logprobs[block], dtype=np.float32)),
                torch.from_numpy(np.array(self.ids[block], dtype=np.int64)),
                torch.from_numpy(np.array(self.tail[block], dtype=np.float32)))

    @property
    def temperature(self) -> float:
        """The temperature the stored log-probabilities were taken at."""
        return float(self.header["fingerprint"]["temperature"])

    @property
    def bytes_per_token(self) -> float:
        return float(self.header["bytes_per_token"])

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def build_lm_cache(path: Path, teacher: Any, train: Blocks, vocab_size: int, fingerprint: dict[str, Any],
                   batch_size: int, device: torch.device, progress: bool = True, chunk: int = 1024) -> LMTeacherCache:
    """Run the teacher over the training blocks once and store the top-k of every position (`chunk` positions'
    logits at a time)."""
    k, temperature = int(fingerprint["top_k"]), float(fingerprint["temperature"])
    if k > vocab_size:
        raise KdistillError(f"distill.cache.top_k={k} is larger than the vocabulary ({vocab_size})")
    n, length = train.input_ids.shape
    value_type = np.float16 if fingerprint["dtype"] == "float16" else np.float32
    id_type = np.uint16 if vocab_size <= 1 << 16 else np.int32
    arrays = {"topk_logprobs.npy": (value_type, (n, length, k)), "topk_index.npy": (id_type, (n, length, k)),
              "rest_logmass.npy": (np.float32, (n, length))}
    per_token = k * (np.dtype(value_type).itemsize + np.dtype(id_type).itemsize) + 4
    header = {"format": LM_CACHE_FORMAT, "fingerprint": fingerprint, "vocab_size": vocab_size,
              "arrays": {name: list(shape) for name, (_, shape) in arrays.items()}, "bytes_per_token": per_token,
              "created_by": "kdistill cache-teacher", "device": str(device)}
    head, bias = head_of(teacher)

    def fill(maps: dict[str, np.ndarray]) -> None:
        teacher.to(device).eval()
        bar = tqdm(total=n * length, desc="teacher cache", unit="token", leave=False, disable=None if progress else True)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                hidden = final_hidden(teacher, train.input_ids[start:stop].to(device))
                for row in range(stop - start):  # `chunk` positions' (chunk × vocabulary) logits at a time
                    for piece in range(0, length, chunk):
                        where = slice(piece, min(piece + chunk, length))
                        top = top_k_of(torch.nn.functional.linear(hidden[row, where], head, bias), k, temperature)
                        maps["topk_logprobs.npy"][start + row, where] = top.logprobs.cpu().numpy().astype(value_type)
                        maps["topk_index.npy"][start + row, where] = top.ids.cpu().numpy().astype(id_type)
                        maps["rest_logmass.npy"][start + row, where] = top.tail_logmass.cpu().numpy()
                bar.update((stop - start) * length)
        bar.close()

    return LMTeacherCache(path, write_cache_folder(Path(path), header, arrays, fill))


def open_or_build_lm_cache(path: Path, teacher: Any, train: Blocks, vocab_size: int, fingerprint: dict[str, Any],
                           batch_size: int, device: torch.device, *, rebuild: bool = False, progress: bool = True,
                           chunk: int = 1024) -> tuple[LMTeacherCache, bool]:
    """The matching cache at `path`, built if absent, interrupted or (with `rebuild`) mismatched; (cache, built?)."""
    return open_or_build(path, fingerprint, lambda header: LMTeacherCache(Path(path), header),
                         lambda: build_lm_cache(path, teacher, train, vocab_size, fingerprint, batch_size, device, progress,
                                                chunk),
                         rebuild=rebuild)
