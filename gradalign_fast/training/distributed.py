"""DistributedDataParallel training under `torchrun` (gloo on CPU, nccl on CUDA).

`python -m torch.distributed.run --nproc_per_node N -m gradalign_fast train ...` starts N
processes; each trains on its share (batch_size / N) of every global batch, and DDP averages
the gradients, so the update equals the single-process one on the global batch. GradAlign's
double backward works under DDP: the input gradients are taken with torch.autograd.grad (which
fires none of DDP's parameter hooks) and the parameters' gradients, of both the loss and the
regulariser, come from the one backward of train_step; find_unused_parameters stays off.
SyncBatchNorm (sync_bn) is CUDA-only in torch and its backward is not twice differentiable, so
the trainer allows it only on CUDA and with single-backprop methods (FGSM, FGSM-RS, N-FGSM, PGD).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False  # this module initialised the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> DistInfo:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1 in the environment);
    a single process otherwise. On CUDA each process uses GPU LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        started = True
    return DistInfo(rank, world, local, started)


def device_for(device: str, info: DistInfo) -> torch.device:
    """The process's device: cuda:LOCAL_RANK for CUDA under torchrun, else `device`."""
    d = torch.device(device)
    if d.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return d


def wrap(model: nn.Module, info: DistInfo, sync_bn: bool = False) -> nn.Module:
    """DDP(model) (SyncBatchNorm first, if asked) under torchrun; the model itself otherwise."""
    if not info.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    p = next(model.parameters())
    ids = [p.device.index] if p.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sampler(dataset, info: DistInfo, seed: int):
    """The DistributedSampler of this rank (shuffled with `seed` + epoch), or None."""
    if not info.enabled:
        return None
    return torch.utils.data.DistributedSampler(dataset, info.world_size, info.rank,
                                               shuffle=True, seed=seed)


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. stop on catastrophic overfitting)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def destroy_process_group() -> None:
    """dist.destroy_process_group() after a garbage collection: DDP models left in reference
    cycles hold gloo work objects whose tensors, destroyed later by gloo's threads during
    interpreter shutdown, aborted the process at exit ("terminate called without an active
    exception", ~1 exit in 10 here; the pattern of pytorch/pytorch PR 179291)."""
    gc.collect()
    dist.destroy_process_group()


def cleanup(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        destroy_process_group()
