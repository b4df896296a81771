"""Distributed training on CPU: 2 processes with gloo against 1 process with the same batch."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastvit
from fastvit.train import TrainConfig, recipe_config, train
from fastvit.train.checkpoint import seed_everything
from fastvit.train.distributed import (
    GlooSyncBatchNorm2d,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    """One rank, set up the way torchrun would (its environment variables)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = train(TrainConfig.from_dict(cfg_dict), echo=None)
    torch.save(
        {"model": result.model_state, "best": result.best_top1, "history": result.history},
        f"{out}.rank{rank}",
    )


def _cfg(tmp_path, name: str, batch: int) -> TrainConfig:
    # no augmentation, no drop path: the two runs see the same pixels in the same batches
    return recipe_config(
        "digits",
        output=str(tmp_path / name),
        epochs=2,
        batch_size=batch,
        no_aug=True,
        limit_train_batches=4,
        limit_val_batches=2,
        sync_bn=True,
        tensorboard=False,
        plot=False,
        progress=False,
        seed=3,
        ema=False,
    )


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    cfg2 = _cfg(tmp_path, "ddp", batch=16)
    out = str(tmp_path / "state")
    mp.spawn(_worker, args=(2, _free_port(), cfg2.to_dict(), out), nprocs=2, join=True)
    r0 = torch.load(f"{out}.rank0", weights_only=True)
    r1 = torch.load(f"{out}.rank1", weights_only=True)
    # both ranks end with bit-identical weights (and buffers)
    for k, v in r0["model"].items():
        assert torch.equal(v, r1["model"][k]), k
    # rank 0 wrote the run files and the final fused model
    assert (tmp_path / "ddp" / "model_reparam.safetensors").is_file()
    assert not list((tmp_path / "ddp").glob("*.rank1*"))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each rank, so both runs use the same kernels
    try:
        single = train(_cfg(tmp_path, "single", batch=32), echo=None)
    finally:
        torch.set_num_threads(threads)
    seed_everything(cfg2.seed)  # the runs' initial weights
    init = fastvit.create_model("fastvit_t8", num_classes=10).state_dict()
    diff2 = moved2 = 0.0
    for k, v in single.model_state.items():
        if not v.is_floating_point():
            assert torch.equal(v, r0["model"][k]), k  # BN step counters
        elif "running" not in k:
            diff2 += float(((v - r0["model"][k]) ** 2).sum())
            moved2 += float(((v - init[k]) ** 2).sum())
    # Same global batch of 32 -> the same updates up to float summation order. Adam turns
    # rounding noise in near-zero gradients into small steps, so compare the whole weight
    # vector: the runs differ by well under 1% of how far training moved it (without
    # synchronised BatchNorm statistics this ratio is ~80%).
    assert moved2**0.5 > 0.5
    assert (diff2 / moved2) ** 0.5 < 0.02, (diff2 / moved2) ** 0.5
    # per-epoch metrics (summed over ranks) agree too
    assert len(single.history) == len(r0["history"]) == 2
    for a, b in zip(single.history, r0["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4
        assert a["val_top1"] == b["val_top1"]


@torch.no_grad()
def test_sync_batchnorm_conversion_keeps_reparameterization():
    torch.manual_seed(0)
    model = fastvit.create_model("fastvit_t8", num_classes=4).eval()
    for m in model.modules():  # non-trivial statistics, so a skipped BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    synced = convert_sync_batchnorm(copy.deepcopy(model), torch.device("cpu"))
    assert any(isinstance(m, GlooSyncBatchNorm2d) for m in synced.modules())
    # ours is a BatchNorm2d: reparameterization folds it directly
    fused = fastvit.reparameterize(synced)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert float((fused(x) - ref).abs().max()) < 1e-4
    # torch's SyncBatchNorm (CUDA jobs) converts back to BatchNorm2d before fusing
    torch_sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in torch_sync.modules())
    reverted = revert_sync_batchnorm(torch_sync)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    fused = fastvit.reparameterize(reverted)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert float((fused(x) - ref).abs().max()) < 1e-4
