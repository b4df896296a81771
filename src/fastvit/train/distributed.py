"""Distributed data parallel helpers: process group setup under ``torchrun``, and SyncBN.

``torchrun`` (or any launcher following its protocol) sets RANK, WORLD_SIZE and LOCAL_RANK;
we read those, pick nccl on CUDA and gloo on CPU, and otherwise run as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from fastvit.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistEnv()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's CUDA device if there is one, else CPU."""
    if device == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group described by torchrun's variables, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistEnv(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialized_here = True
    return DistEnv(rank, world_size, local_rank, dev, initialized_here)


def cleanup_distributed(env: DistEnv) -> None:
    """Leave the process group if we created it."""
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few floats over all ranks (float64, on the rank's device)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: object, env: DistEnv, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again a sum over ranks (every rank's loss depends
    on every rank's contribution)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class GlooSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks, for CPU/gloo jobs.

    torch's SyncBatchNorm only runs on accelerators. This subclass computes the batch mean
    and (two-pass) variance over the global batch with autograd-aware all-reduces, so DDP on
    CPU trains exactly like one process with the global batch. It *is* a BatchNorm2d (same
    state dict), so reparameterization folds it like any other; outside training, or without
    a process group, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centered = x - mean.view(1, c, 1, 1)
        var = all_reduce(centered.pow(2).sum(dim=(0, 2, 3))) / n  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var.detach() * (n / (n - 1)).clamp(min=0)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased, m)
        y = centered * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d synchronise across ranks: torch's SyncBatchNorm on CUDA,
    :class:`GlooSyncBatchNorm2d` on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_gloo_bn(module)


def _to_gloo_bn(module: nn.Module) -> nn.Module:
    out = module
    if type(module) is nn.BatchNorm2d:
        out = GlooSyncBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        out.load_state_dict(module.state_dict())
        out.to(next(iter(module.state_dict().values())).device)
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_gloo_bn(child))
    return out


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm (torch's or our :class:`GlooSyncBatchNorm2d`) with a plain
    BatchNorm2d holding the same parameters and statistics: the inverse of
    :func:`convert_sync_batchnorm`.

    Neither training nor reparameterization needs it: the end of a run loads the best
    weights into a fresh model, and ``reparameterize`` folds any BatchNorm, SyncBatchNorm
    included. It is for code that wants plain BatchNorm2d modules back, e.g. to train a
    SyncBatchNorm model on CPU (torch's SyncBatchNorm trains on accelerators only).
    """
    out = module
    if isinstance(module, (nn.SyncBatchNorm, GlooSyncBatchNorm2d)):
        out = nn.BatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
                out.weight.requires_grad_(module.weight.requires_grad)
                out.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                out.running_mean.copy_(module.running_mean)
                out.running_var.copy_(module.running_var)
                out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
        out.to(device=next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out
