"""The training engine: ``train`` (the whole run), ``train_one_epoch`` and ``evaluate``.

Shaped like torchvision's reference ``train.py``: small functions, one loop. Optimizer,
scheduler, mixup/cutmix and EMA come from timm; the model from :func:`fastvit.create_model`.
Runs single-process or under ``torchrun`` (DDP: nccl on CUDA, gloo on CPU); only rank 0
prints and writes files. Each epoch writes ``last.pt`` and ``best.pt`` atomically; a run
resumed from ``last.pt`` replays the remaining epochs exactly (every epoch reseeds all RNGs
from the run seed, the epoch and the rank). The run ends by reparameterizing the best
weights (EMA when they were better), verifying them and saving both forms.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from fastvit.errors import ConfigError, FastViTError
from fastvit.threads import ThreadChoice, apply_threads
from fastvit.train.checkpoint import (
    FORMAT,
    atomic_torch_save,
    epoch_seed,
    get_rng_state,
    load_training_checkpoint,
    seed_everything,
    set_rng_state,
)
from fastvit.train.config import DEFAULT_MODEL, TrainConfig, validate_config
from fastvit.train.distributed import (
    SINGLE_PROCESS,
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    convert_sync_batchnorm,
    setup_distributed,
)
from fastvit.train.modeling import (
    InitReport,
    check_variant,
    count_params,
    create_train_model,
    freeze_stages,
    init_from_model,
    load_init_model,
    model_state,
    param_groups,
    set_frozen_eval,
    unwrap,
    variant_defaults,
)

logger = logging.getLogger("fastvit")


class TrainingDiverged(FastViTError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------- small helpers
def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision context: bf16 on CPU, bf16/fp16 on CUDA, nothing for 'none'."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint eval shards with no padding, so summed
    counts over ranks are exact."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _progress(total: int, desc: str, enabled: bool):
    """tqdm bar on a TTY only (hidden in CI, pipes and on ranks other than 0)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)


@dataclass
class EpochStats:
    loss: float
    lr: float
    img_s: float
    time_s: float
    steps: int
    global_step: int


# --------------------------------------------------------------------------- one epoch
def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    *,
    device: torch.device,
    num_batches: int,
    global_step: int = 0,
    scheduler: Any = None,
    ema: Any = None,
    mixup: Callable | None = None,
    distill: nn.Module | None = None,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    clip_mode: str = "norm",
    channels_last: bool = False,
    frozen_modules: list[str] | tuple[str, ...] = (),
    env: DistEnv = SINGLE_PROCESS,
    desc: str = "train",
    progress: bool = False,
) -> EpochStats:
    """One pass over ``num_batches`` training batches; returns mean loss and throughput."""
    from timm.utils import dispatch_clip_grad

    model.train()
    set_frozen_eval(unwrap(model), list(frozen_modules))
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    start = time.perf_counter()
    bar = _progress(num_batches, desc, progress and env.is_main)
    step = 0
    for step, (images, targets) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast(device, amp):
            outputs = model(images)
            loss = distill(images, outputs, targets) if distill is not None else loss_fn(
                outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad is not None:
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            optimizer.step()
        global_step += 1
        if ema is not None:
            ema.update(unwrap(model), step=global_step)
        if scheduler is not None:
            scheduler.step_update(num_updates=global_step)
        loss_sum += loss.detach().double()
        seen += images.shape[0]
        if step % 20 == 0 or step == num_batches:
            current = float(loss.detach())
            if not math.isfinite(current):
                raise TrainingDiverged(
                    f"loss is {current} at step {global_step}; lower --lr or set --clip-grad"
                )
            bar.set_postfix(loss=f"{current:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update(1)
        if step >= num_batches:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    total_loss, total_steps, total_seen = all_reduce_sum(
        [float(loss_sum), float(step), float(seen)], env)
    mean_loss = total_loss / max(total_steps, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"mean training loss is {mean_loss}; lower --lr or set --clip-grad")
    return EpochStats(mean_loss, float(optimizer.param_groups[-1]["lr"]),
                      total_seen / elapsed, elapsed, step, global_step)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    num_batches: int | None = None,
    env: DistEnv = SINGLE_PROCESS,
    desc: str = "eval",
    progress: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (in %) and img/s over the loader (summed across ranks)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    total = len(loader) if num_batches is None else min(num_batches, len(loader))
    bar = _progress(total, desc, progress and env.is_main)
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == targets[:, None]
        sums += torch.stack([
            F.cross_entropy(logits, targets, reduction="sum").double(),
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            torch.tensor(float(targets.numel()), dtype=torch.float64, device=device),
        ])
        bar.update(1)
        if step >= total:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    loss, top1, top5, n = all_reduce_sum(sums.tolist(), env)
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
            "n": int(n), "img_s": n / max(elapsed, 1e-9)}


# --------------------------------------------------------------------------- setup
# torch's CPU (oneDNN) backward of a 1x1 stride-2 convolution on channels-last inputs of
# >= 112 px crashes the process (segfault; seen with torch 2.14). A model with such a conv
# (FastViT's stem has one, as a MobileOne scale branch) must not train channels-last on CPU
# at those sizes: refuse with a message instead of crashing mid-run.
CPU_CHANNELS_LAST_MAX_SIZE = 96


def check_channels_last(cfg: TrainConfig, device: torch.device, model: nn.Module) -> None:
    """Refuse channels-last CPU training where torch would crash (see above)."""
    if not (cfg.channels_last and device.type == "cpu"
            and cfg.input_size > CPU_CHANNELS_LAST_MAX_SIZE):
        return
    strided_pointwise = any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
        for m in model.modules())
    if strided_pointwise:
        raise ConfigError(
            f"--channels-last on CPU is limited to input sizes <= {CPU_CHANNELS_LAST_MAX_SIZE} "
            f"(torch crashes in the backward of the stem's strided 1x1 conv at "
            f"{cfg.input_size} px); add --no-channels-last"
        )


def resolve_variant(
    cfg: TrainConfig, resume: dict[str, Any] | None, init_model: nn.Module | None
) -> str:
    """The variant to train: from --resume or --init when given (must agree with --model)."""
    if resume is not None:
        ck = resume["config"].get("model")
        if cfg.model is not None and cfg.model != ck:
            raise ConfigError(
                f"cannot resume: {cfg.resume} is a {ck} run but --model is {cfg.model}; "
                "drop --model or start a new run with another --output"
            )
        return ck
    if init_model is not None:
        ck = getattr(init_model, "variant", None)
        if cfg.model is not None and ck is not None and cfg.model != ck:
            raise ConfigError(
                f"--init {cfg.init} is a {ck} checkpoint but --model is {cfg.model}; "
                "drop --model or pass a matching checkpoint"
            )
        return ck or cfg.model or DEFAULT_MODEL
    return cfg.model or DEFAULT_MODEL


def default_output_dir(cfg: TrainConfig) -> Path:
    if cfg.uses_digits:
        data_name = "digits"
    else:
        data_name = Path(cfg.data or cfg.train_dir or "data").resolve().name or "data"
    return Path("runs") / f"{cfg.model}_{data_name}"


def prepare_output_dir(path: Path, env: DistEnv) -> None:
    """Create the output directory on rank 0 and check it is writable (all ranks agree)."""
    error = None
    if env.is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
        except OSError as e:
            error = (f"output directory {path} is not writable ({e.strerror or e}); "
                     "choose another --output")
    error = broadcast_object(error, env)
    if error:
        raise ConfigError(error)


def resolve_workers(cfg: TrainConfig, env: DistEnv) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if cfg.uses_digits:
        return 0  # images are in memory; workers only add process start-up time
    cores = os.cpu_count() or 2
    return max(1, min(8, cores // env.world_size - 1))


def build_loaders(
    splits: Any, cfg: TrainConfig, env: DistEnv
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    """Train loader (shuffled per epoch, sharded over ranks, full batches) and val loader."""
    workers = resolve_workers(cfg, env)
    pin = env.device.type == "cuda"
    sampler = DistributedSampler(splits.train, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=False)
    train_loader = DataLoader(splits.train, batch_size=cfg.batch_size, sampler=sampler,
                              num_workers=workers, pin_memory=pin, drop_last=True)
    val_loader = DataLoader(splits.val, batch_size=cfg.batch_size,
                            sampler=ShardSampler(len(splits.val), env.rank, env.world_size),
                            num_workers=workers, pin_memory=pin, drop_last=False)
    return train_loader, val_loader, sampler


def build_splits(cfg: TrainConfig) -> Any:
    """Datasets with the configured train/eval transforms."""
    from fastvit.data import build_datasets, create_eval_transform, create_train_transform

    train_tf = create_train_transform(
        cfg.input_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
        auto_augment=cfg.auto_augment, color_jitter=cfg.color_jitter, re_prob=cfg.reprob,
        interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, no_aug=cfg.no_aug)
    val_tf = create_eval_transform(cfg.input_size, crop_pct=cfg.crop_pct,
                                   interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    return build_datasets(cfg.data, train_dir=cfg.train_dir, val_dir=cfg.val_dir,
                          input_size=cfg.input_size, train_transform=train_tf,
                          val_transform=val_tf, check_images=cfg.check_images,
                          max_bad_share=cfg.max_bad_share)


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm optimizer; no weight decay on norms, biases and layer scales."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(param_groups(model, cfg.weight_decay), opt=cfg.opt, lr=lr,
                               weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               eps=cfg.opt_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """timm scheduler (cosine with warmup by default); None for --sched none."""
    from timm.scheduler import create_scheduler_v2

    if cfg.sched == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)
    return scheduler


def build_loss(cfg: TrainConfig, mixup_active: bool) -> nn.Module:
    from timm.loss import SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()  # label smoothing is folded into mixup's targets
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


# --------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What a run produced. ``model_state`` (last weights) is filled on every rank."""

    output_dir: Path
    config: TrainConfig
    classes: list[str]
    num_train: int
    num_val: int
    epochs_run: int
    best_top1: float
    best_top5: float
    best_epoch: int
    best_is_ema: bool
    wall_time_s: float
    history: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor]
    init_report: InitReport | None = None
    frozen: list[str] = field(default_factory=list)
    final: Any = None  # fastvit.train.final.FinalReport on rank 0


# --------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, *, echo: Callable[[str], None] | None = print) -> TrainResult:
    """Run a whole training job described by ``cfg`` and return what it produced.

    ``echo`` receives one line per epoch (rank 0 only); pass None for silence.
    """
    t_start = time.perf_counter()
    validate_config(cfg)
    threads = apply_threads(cfg.threads)  # from the CPUs available and the load, or --threads
    env = setup_distributed(cfg.device)
    say = echo if (echo is not None and env.is_main) else (lambda _msg: None)
    if threads.warning():
        say(f"warning: {threads.warning()}")
    try:
        return _run(cfg, env, say, t_start, threads)
    finally:
        cleanup_distributed(env)


def _run(cfg: TrainConfig, env: DistEnv, say: Callable[[str], None], t_start: float,
         threads: ThreadChoice | None = None) -> TrainResult:
    from timm.utils import ModelEmaV3

    from fastvit.data import create_mixup
    from fastvit.train.distill import DistillationLoss, load_teacher
    from fastvit.train.final import finalize
    from fastvit.train.metrics import MetricsLogger

    resume = load_training_checkpoint(cfg.resume) if cfg.resume else None
    init_src = load_init_model(cfg.init) if cfg.init else None
    name = resolve_variant(cfg, resume, init_src)
    check_variant(name)
    vd = variant_defaults(name)
    cfg = cfg.replace(
        model=name,
        crop_pct=cfg.crop_pct if cfg.crop_pct is not None else vd["crop_pct"],
        mean=cfg.mean or vd["mean"],
        std=cfg.std or vd["std"],
        drop_path=cfg.drop_path if cfg.drop_path is not None else vd["drop_path"],
    )
    out_dir = Path(cfg.output) if cfg.output else default_output_dir(cfg)
    cfg = cfg.replace(output=str(out_dir))
    prepare_output_dir(out_dir, env)

    seed_everything(cfg.seed)
    splits = build_splits(cfg)
    num_classes = splits.num_classes
    if resume is not None:
        ck_classes = resume.get("classes")
        if ck_classes is not None and list(ck_classes) != splits.classes:
            raise ConfigError(
                f"cannot resume: {cfg.resume} was trained on classes {ck_classes[:5]}... but the "
                "data has different class folders; use the same data"
            )

    model = create_train_model(name, num_classes, drop_path=cfg.drop_path, drop=cfg.drop)
    init_report = init_from_model(model, init_src, cfg.init) if init_src is not None else None
    del init_src
    if init_report is not None:
        say(init_report.summary())
    frozen = freeze_stages(model, cfg.freeze_stages)
    if frozen:
        say(f"frozen: {', '.join(frozen)}")
    check_channels_last(cfg, env.device, model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.distributed:
        model = convert_sync_batchnorm(model, env.device)

    teacher = None
    if cfg.distill != "none":
        teacher = load_teacher(cfg.teacher, cfg.teacher_weights, num_classes, cfg.input_size)
        teacher.to(env.device)
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)

    train_loader, val_loader, sampler = build_loaders(splits, cfg, env)
    num_batches = len(train_loader)
    if cfg.limit_train_batches:
        num_batches = min(num_batches, cfg.limit_train_batches)
    if num_batches == 0:
        raise ConfigError(
            f"batch size {cfg.batch_size} x {env.world_size} process(es) is larger than the "
            f"training set ({len(splits.train)} images); lower --batch-size"
        )
    global_batch = cfg.batch_size * env.world_size
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch / cfg.lr_base_size

    optimizer = build_optimizer(model, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg, num_batches)
    mixup = create_mixup(cfg.mixup, cfg.cutmix, num_classes=num_classes,
                         label_smoothing=cfg.smoothing, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode)
    loss_fn = build_loss(cfg, mixup is not None)
    distill = (DistillationLoss(loss_fn, teacher, cfg.distill, cfg.distill_alpha, cfg.distill_tau)
               if teacher is not None else None)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    scaler = (torch.amp.GradScaler("cuda")
              if cfg.amp == "fp16" and env.device.type == "cuda" else None)
    if cfg.amp == "fp16" and env.device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 on CPU")

    start_epoch, global_step = 0, 0
    best = {"top1": -1.0, "top5": 0.0, "epoch": 0, "ema": False}
    history: list[dict[str, Any]] = []
    if resume is not None:
        unwrap(model).load_state_dict(resume["model"])
        if ema is not None and resume.get("ema") is not None:
            ema.module.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler") is not None:
            scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler") is not None:
            scaler.load_state_dict(resume["scaler"])
        start_epoch, global_step = int(resume["epoch"]), int(resume["global_step"])
        best = dict(resume["best"])
        history = list(resume.get("history", []))
        set_rng_state(resume["rng"])
        if scheduler is not None:
            scheduler.step(start_epoch)
            if cfg.sched_on_updates:
                scheduler.step_update(global_step)
        say(f"resumed from {cfg.resume} at epoch {start_epoch}/{cfg.epochs}")
        del resume

    train_model: nn.Module = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    metrics = MetricsLogger(out_dir, enabled=env.is_main, tensorboard=cfg.tensorboard,
                            plot=cfg.plot, history=history)
    say(f"training {name} ({count_params(model) / 1e6:.2f}M params) on {splits.name}: "
        f"{len(splits.train)} train / {len(splits.val)} val images, {num_classes} classes, "
        f"{cfg.input_size}px, batch {global_batch}, lr {lr:.3g}, {cfg.epochs} epochs, "
        f"{env.world_size} process(es) on {env.device.type}"
        f"{f', {threads.describe()}' if threads else ''} -> {out_dir}")

    try:
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(epoch_seed(cfg.seed, epoch, env.rank))
            sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model, train_loader, optimizer, loss_fn, device=env.device,
                num_batches=num_batches, global_step=global_step, scheduler=scheduler, ema=ema,
                mixup=mixup, distill=distill, amp=cfg.amp, scaler=scaler,
                clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                channels_last=cfg.channels_last, frozen_modules=frozen, env=env,
                desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=cfg.progress)
            global_step = stats.global_step
            if scheduler is not None:
                scheduler.step(epoch + 1)
            ev = evaluate(model, val_loader, device=env.device, amp=cfg.amp,
                          channels_last=cfg.channels_last, num_batches=cfg.limit_val_batches,
                          env=env, desc="val", progress=cfg.progress)
            ev_ema = None
            if ema is not None:
                ev_ema = evaluate(ema.module, val_loader, device=env.device, amp=cfg.amp,
                                  channels_last=cfg.channels_last,
                                  num_batches=cfg.limit_val_batches, env=env, desc="val ema",
                                  progress=cfg.progress)
            use_ema = ev_ema is not None and ev_ema["top1"] > ev["top1"]
            top = ev_ema if use_ema else ev
            is_best = top["top1"] > best["top1"]
            if is_best:
                best = {"top1": top["top1"], "top5": top["top5"], "epoch": epoch + 1,
                        "ema": use_ema}
            row = {
                "epoch": epoch + 1, "train_loss": stats.loss, "lr": stats.lr,
                "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"],
                "ema_val_loss": ev_ema["loss"] if ev_ema else None,
                "ema_top1": ev_ema["top1"] if ev_ema else None,
                "ema_top5": ev_ema["top5"] if ev_ema else None,
                "train_img_s": stats.img_s, "epoch_time_s": stats.time_s,
            }
            metrics.log(row)
            if env.is_main:
                state = {
                    "format": FORMAT,
                    "variant": name,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "model": model_state(model),
                    "ema": model_state(ema.module) if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "best": best,
                    "rng": get_rng_state(),
                    "history": metrics.history,
                    "classes": splits.classes,
                    "config": cfg.to_dict(),
                }
                save_epoch_checkpoints(state, out_dir, is_best)
            ema_txt = f"  ema top-1 {ev_ema['top1']:6.2f}" if ev_ema else ""
            say(f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {stats.loss:.4f}  lr {stats.lr:.2e}  "
                f"val loss {ev['loss']:.4f}  top-1 {ev['top1']:6.2f}  top-5 {ev['top5']:6.2f}"
                f"{ema_txt}  {stats.img_s:5.0f} img/s  {stats.time_s:5.1f}s"
                + ("  *" if is_best else ""))
            barrier(env)
    finally:
        metrics.close()

    final = None
    if env.is_main:
        final = finalize(out_dir, splits, cfg, env.device)
    barrier(env)
    return TrainResult(
        output_dir=out_dir, config=cfg, classes=splits.classes, num_train=len(splits.train),
        num_val=len(splits.val), epochs_run=cfg.epochs - start_epoch,
        best_top1=best["top1"], best_top5=best["top5"], best_epoch=best["epoch"],
        best_is_ema=bool(best["ema"]), wall_time_s=time.perf_counter() - t_start,
        history=metrics.history, model_state=model_state(model), init_report=init_report,
        frozen=frozen, final=final)


def save_epoch_checkpoints(state: dict[str, Any], out_dir: Path, is_best: bool) -> None:
    """Write ``last.pt`` atomically; on a new best, make ``best.pt`` the same file.

    ``best.pt`` is a hard link to the new ``last.pt`` (renamed into place atomically), so a
    best epoch costs no second write; where links are unsupported it is written again.
    """
    last = out_dir / "last.pt"
    atomic_torch_save(state, last)
    if not is_best:
        return
    best = out_dir / "best.pt"
    tmp = out_dir / f".best.pt.{os.getpid()}.tmp"
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(last, tmp)
        os.replace(tmp, best)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        atomic_torch_save(state, best)
