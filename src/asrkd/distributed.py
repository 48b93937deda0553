"""Data-parallel training over processes with torch.distributed (gloo on CPU, NCCL on GPUs).

Every process reads the same batches (same sampler, same seed) and trains on its share of each
batch: the cuts are dealt to the processes by duration, longest first, so the shares hold about
equal audio. Each process weighs its loss by its share of the batch's audio and the gradients
are summed across processes in one all-reduce, so the update is the one-process update on the
whole batch up to rounding (the losses are per-frame averages; dropout masks differ). That
all-reduce also carries a "not finite" flag and the loss terms, so every process skips the same
bad batches and the main process logs the whole batch's loss. Only the main process (rank 0)
evaluates on dev, writes checkpoints, metrics and the model files; the others wait for it.

Two ways in:
- `train.processes: N` (asrkd train/demo): asrkd starts N processes on this machine itself.
- `torchrun --nproc-per-node N --nnodes M ... $(which asrkd) train CONFIG`: torchrun sets
  RANK/WORLD_SIZE/MASTER_ADDR; asrkd joins that group (several machines sharing a disk for
  out_dir and the manifests). train.processes must then be 1.

Why not torch's DistributedDataParallel wrapper: it needs every process to run forward and
backward on every step, but a batch of one long cut has no share for the second process; an
explicit all-reduce lets that process add zeros instead.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=30)  # rank 0 may evaluate on dev while the others wait


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World | None:
    """The World torchrun describes in the environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return None
    return World(
        rank=int(os.environ["RANK"]),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(world: World, device: torch.device, init_method: str = "env://") -> None:
    """Join the process group (no-op for a single process)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=init_method, rank=world.rank, world_size=world.size, timeout=TIMEOUT
    )
    log.info("process %d of %d joined (%s)", world.rank, world.size, backend)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def share_of_batch(durations: Sequence[float], world: World) -> list[int]:
    """Indices of the cuts this process trains on: longest first, each to the process with the
    least audio so far (ties to the lower rank). Deterministic, so shares never overlap."""
    totals = [0.0] * world.size
    mine = []
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        rank = min(range(world.size), key=lambda r: (totals[r], r))
        totals[rank] += durations[i]
        if rank == world.rank:
            mine.append(i)
    return sorted(mine)


def sum_gradients(params: Sequence[torch.nn.Parameter], extras: Tensor, world: World) -> Tensor:
    """All-reduce (sum) the gradients of `params` (missing ones count as zeros, and are set)
    together with the 1-D float tensor `extras` in one message; returns the summed extras."""
    if not world.distributed:
        return extras
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad.reshape(-1) for p in params]
    # extras in the gradients' dtype: torch.cat would otherwise promote the whole message
    flat = torch.cat(grads + [extras.to(device=grads[0].device, dtype=grads[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n
    return flat[offset:].to("cpu", torch.float64)


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Give every process rank 0's parameters and buffers."""
    if not world.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def launch(fn: Callable[..., None], n_processes: int, *args) -> None:
    """Run fn(world, init_method, *args) in `n_processes` new processes on this machine and wait;
    an exception in any of them is raised here (torch.multiprocessing names the process)."""
    import torch.multiprocessing as mp

    init_method = f"tcp://127.0.0.1:{free_port()}"
    mp.start_processes(
        _entry, args=(fn, n_processes, init_method, args), nprocs=n_processes, start_method="spawn"
    )


def _entry(rank: int, fn: Callable[..., None], size: int, init_method: str, args: tuple) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING  # one copy of the progress messages
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fn(World(rank=rank, size=size, local_rank=rank), init_method, *args)
