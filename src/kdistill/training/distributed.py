"""Several processes, one run: what the engine needs from torch.distributed, and nothing when alone.

`torchrun --nproc_per_node N -m kdistill distill CONFIG` (and `accelerate launch`, which starts
processes the same way) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`init_from_env` joins the process group (NCCL on CUDA, gloo on the CPU). Every process then
holds the same student (parameters broadcast from rank 0), takes its own slice of every
global batch (`data.batch_size` is the global batch, so a config means the same thing on 1 or
N processes), and gradients are averaged with one all-reduce per optimiser step. The frozen
teacher is replicated for inference only: no DDP wrapper, no gradient, no communication.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """This process's place in the group: rank, world size, local rank (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of n samples (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on: one GPU per process, whatever index the config named."""
        return torch.device("cuda", self.local_rank) if self.active and device.type == "cuda" else device

    def keep_slice(self, batch: Batch, logits: torch.Tensor | None) -> tuple[Batch, torch.Tensor | None]:
        """This rank's slice of a global batch (and of its cached teacher logits); the whole batch when alone."""
        if not self.active:
            return batch, logits
        part = self.shard(batch.labels.shape[0])
        mixed = None if batch.mixed is None else tuple(t[part] for t in batch.mixed)
        return batch._replace(inputs=batch.inputs[part], labels=batch.labels[part], index=batch.index[part], mixed=mixed), \
            None if logits is None else logits[part]

    def accuracy(self, correct: int, total: int, device: torch.device) -> float:
        """Correct predictions summed over the ranks, over `total` (the whole split's size)."""
        return self.sum([correct], device)[0] / total

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere, as DDP's broadcast_buffers does."""
        if self.active:
            for tensor in module.buffers():
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Mean of each gradient over the ranks, in one flat all-reduce (a missing gradient counts as zero)."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def sum(self, values: list[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sum of `values` over the ranks (float64)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; a KdistillError there is raised on every rank (only rank 0 prints it),
        so no process is left waiting at a barrier for one that failed."""
        if not self.active:
            return fn()
        result, message = None, None
        if self.is_main:
            try:
                result = fn()
            except KdistillError as exc:
                message = str(exc)
        box = [message]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise KdistillError(box[0])
        return result

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (picklable objects; tensors come back on the CPU)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order (a list of one when alone)."""
        if not self.active:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def current() -> Context:
    """The context of this process: from the initialised process group, else alone."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Context()


def launched() -> bool:
    """True when a launcher (torchrun, accelerate) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> Context:
    """Join the process group the launcher described (once); alone, do nothing (but say so when `accelerate
    launch` started this process alone: its `--cpu` and MULTI_CPU modes start one process, whatever
    `--num_processes` says)."""
    if not launched():
        if any(key.startswith("ACCELERATE_") for key in os.environ) and "RANK" not in os.environ:
            sys.stderr.write("kdistill: warning: started by accelerate launch as a single process (no WORLD_SIZE): "
                             "`--cpu` and a MULTI_CPU config start one process; for several, use torchrun "
                             "--nproc_per_node N, or accelerate launch --multi_gpu --num_processes N (with "
                             "train.device=cpu for CPU processes)\n")
        return Context()
    if not dist.is_available():
        raise KdistillError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise KdistillError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start several processes with "
                                "`torchrun --nproc_per_node N -m kdistill ...`")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # A long wait is normal (rank 0 building the teacher cache while the others wait): 2 h, not the 10 min default.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
