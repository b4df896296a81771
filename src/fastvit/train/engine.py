"""The training engine: ``train`` (the whole run), ``train_one_epoch`` and ``evaluate``.

Shaped like torchvision's reference ``train.py``: small functions, one loop. Optimizer,
scheduler, mixup/cutmix and EMA come from timm; the model from :func:`fastvit.create_model`.
Runs single-process or under ``torchrun`` (DDP: nccl on CUDA, gloo on CPU); only rank 0
prints and writes files. The run's state is one :class:`~fastvit.train.state.RunState`; each
epoch writes it to ``last.pt`` (and ``best.pt``) atomically, and a run resumed from
``last.pt`` replays the remaining epochs exactly (every epoch reseeds all RNGs from the run
seed, the epoch and the rank). The run ends by reparameterizing the best weights (EMA when
they were better), verifying them and saving both forms. SIGTERM stops a run like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
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
from fastvit.models.complexity import count_params
from fastvit.threads import ThreadChoice, apply_threads
from fastvit.train.checkpoint import (
    atomic_torch_save,
    epoch_seed,
    load_training_checkpoint,
    seed_everything,
)
from fastvit.train.config import DEFAULT_MODEL, TrainConfig, resume_config, validate_config
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
from fastvit.train.metrics import topk_correct
from fastvit.train.modeling import (
    InitReport,
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
from fastvit.train.rundir import RunDir
from fastvit.train.state import RunState

logger = logging.getLogger("fastvit")


class TrainingDiverged(FastViTError):
    """The loss became NaN or infinite."""


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C or SIGTERM); the message says how to resume and
    ``exit_code`` is the shell's convention for the signal (128 + signal number)."""

    exit_code = 130


class TrainingInterrupted(TrainingStopped):
    """Ctrl-C (SIGINT): the last checkpoint stays valid."""


class TrainingTerminated(TrainingStopped):
    """The process received SIGTERM; handled like Ctrl-C (the last checkpoint stays valid)."""

    exit_code = 143


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

    return tqdm(
        total=total,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
        file=sys.stderr,
    )


@contextlib.contextmanager
def sigterm_as_interrupt(message: Callable[[], str]) -> Iterator[None]:
    """Turn SIGTERM into :class:`TrainingTerminated` while the block runs (main thread only),
    so a terminated run unwinds like Ctrl-C: temporary files removed, checkpoints intact."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TrainingTerminated(message())

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class EpochStats:
    loss: float
    lr: float
    img_s: float
    time_s: float
    steps: int
    global_step: int


@dataclass
class TrainStep:
    """What one optimisation step needs: the (possibly DDP-wrapped) model, optimizer, loss,
    and the optional scheduler, EMA, mixup, distillation, mixed precision and clipping."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scheduler: Any = None
    ema: Any = None
    mixup: Callable | None = None
    distill: nn.Module | None = None
    amp: str = "none"
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    channels_last: bool = False
    frozen_modules: list[str] | tuple[str, ...] = ()

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, params: list, global_step: int
    ) -> torch.Tensor:
        """One update on one batch; returns the (detached) loss."""
        from timm.utils import dispatch_clip_grad

        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with autocast(self.device, self.amp):
            outputs = self.model(images)
            loss = (
                self.distill(images, outputs, targets)
                if self.distill is not None
                else self.loss_fn(outputs, targets)
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad(params, self.clip_grad, mode=self.clip_mode)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clip_grad is not None:
                dispatch_clip_grad(params, self.clip_grad, mode=self.clip_mode)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=global_step)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=global_step)
        return loss.detach()


# --------------------------------------------------------------------------- one epoch
def train_one_epoch(
    step: TrainStep,
    loader: DataLoader,
    *,
    num_batches: int,
    global_step: int = 0,
    env: DistEnv = SINGLE_PROCESS,
    desc: str = "train",
    progress: bool = False,
) -> EpochStats:
    """One pass over ``num_batches`` training batches; returns mean loss and throughput."""
    model = step.model
    model.train()
    set_frozen_eval(unwrap(model), list(step.frozen_modules))
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float64, device=step.device)
    seen = 0
    start = time.perf_counter()
    bar = _progress(num_batches, desc, progress and env.is_main)
    i = 0
    for i, (images, targets) in enumerate(loader, start=1):
        global_step += 1
        loss = step(images, targets, params, global_step)
        loss_sum += loss.double()
        seen += images.shape[0]
        if i % 20 == 0 or i == num_batches:
            current = float(loss)
            if not math.isfinite(current):
                raise TrainingDiverged(
                    f"loss is {current} at step {global_step}; lower --lr or set --clip-grad"
                )
            bar.set_postfix(loss=f"{current:.4f}", lr=f"{step.optimizer.param_groups[0]['lr']:.2e}")
        bar.update(1)
        if i >= num_batches:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    total_loss, total_steps, total_seen = all_reduce_sum(
        [float(loss_sum), float(i), float(seen)], env
    )
    mean_loss = total_loss / max(total_steps, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"mean training loss is {mean_loss}; lower --lr or set --clip-grad")
    return EpochStats(
        mean_loss,
        float(step.optimizer.param_groups[-1]["lr"]),
        total_seen / elapsed,
        elapsed,
        i,
        global_step,
    )


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
    for i, (images, targets) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        top1, top5 = topk_correct(logits, targets)
        sums += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                top1.double(),
                top5.double(),
                torch.tensor(float(targets.numel()), dtype=torch.float64, device=device),
            ]
        )
        bar.update(1)
        if i >= total:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    loss, top1, top5, n = all_reduce_sum(sums.tolist(), env)
    n = max(n, 1.0)
    return {
        "loss": loss / n,
        "top1": 100.0 * top1 / n,
        "top5": 100.0 * top5 / n,
        "n": int(n),
        "img_s": n / max(elapsed, 1e-9),
    }


# --------------------------------------------------------------------------- setup
def resolve_variant(cfg: TrainConfig, init_model: nn.Module | None) -> str:
    """The variant of a new run: from --init when given (must agree with --model)."""
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


def resume_dir(resume: str) -> Path:
    """The run directory of a ``--resume`` argument (a checkpoint file or a run directory)."""
    p = Path(resume)
    return p if p.is_dir() else p.parent


def resolve_config(
    cfg: TrainConfig, resume: dict[str, Any] | None, init_src: nn.Module | None
) -> tuple[TrainConfig, list[str]]:
    """The full config of the run (variant defaults filled in, resume policy applied, output
    directory chosen) and the notes about options changed on resume."""
    notes: list[str] = []
    if resume is not None:
        stored = TrainConfig.from_dict(resume["config"])
        cfg, notes = resume_config(stored, cfg, int(resume["epoch"]))
        out = Path(cfg.output) if cfg.output else resume_dir(cfg.resume)
        return cfg.replace(output=str(out)), notes
    name = resolve_variant(cfg, init_src)
    vd = variant_defaults(name)  # raises the one "unknown model" error
    cfg = cfg.replace(
        model=name,
        crop_pct=cfg.crop_pct if cfg.crop_pct is not None else vd["crop_pct"],
        mean=cfg.mean or vd["mean"],
        std=cfg.std or vd["std"],
        drop_path=cfg.drop_path if cfg.drop_path is not None else vd["drop_path"],
    )
    out = Path(cfg.output) if cfg.output else default_output_dir(cfg)
    return cfg.replace(output=str(out)), notes


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
    sampler = DistributedSampler(
        splits.train,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    train_loader = DataLoader(
        splits.train,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
    )
    val_loader = DataLoader(
        splits.val,
        batch_size=cfg.batch_size,
        sampler=ShardSampler(len(splits.val), env.rank, env.world_size),
        num_workers=workers,
        pin_memory=pin,
        drop_last=False,
    )
    return train_loader, val_loader, sampler


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm optimizer; no weight decay on norms, biases and layer scales."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        param_groups(model, cfg.weight_decay),
        opt=cfg.opt,
        lr=lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        eps=cfg.opt_eps,
    )


@dataclass
class Plan:
    """The effective optimisation schedule of a run, derived from its config and length.

    Short runs get two adaptations of the ImageNet recipe, each with a warning: a warmup as
    long as the run is capped to a fifth of it, and an EMA decay so slow that the EMA would
    still be mostly the initial weights at the end is made faster (time constant a tenth of
    the run). A scaled lr far below the recipe's is reported (not changed).
    """

    lr: float
    warmup_epochs: int
    ema_decay: float
    updates: int
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: TrainConfig, updates_per_epoch: int, world_size: int) -> Plan:
        global_batch = cfg.batch_size * world_size
        warnings = []
        if cfg.lr is not None:
            lr = cfg.lr
        else:
            factor = global_batch / cfg.lr_base_size
            lr = cfg.base_lr * factor
            if factor < 1 / 16:
                warnings.append(
                    f"lr {lr:.2g} is the recipe's {cfg.base_lr:g} scaled by batch {global_batch}/"
                    f"{cfg.lr_base_size}, {1 / factor:.0f}x lower; a small run may barely move: "
                    f"pass --lr (e.g. {cfg.base_lr:g}) or --lr-base-size {global_batch}"
                )
        warmup = cfg.warmup_epochs
        if cfg.sched != "none" and warmup > 0 and warmup >= cfg.epochs:
            warmup = cfg.epochs // 5
            warnings.append(
                f"--warmup-epochs {cfg.warmup_epochs} is not shorter than the run's "
                f"{cfg.epochs} epochs (the lr would never leave the warmup); using {warmup}"
            )
        updates = cfg.epochs * updates_per_epoch
        decay = cfg.ema_decay
        if cfg.ema and not cfg.ema_warmup and decay > 0 and decay**updates > 0.01:
            faster = max(0.0, 1.0 - 10.0 / updates)
            warnings.append(
                f"--ema-decay {decay:g} is too slow for a run of {updates} updates (the EMA would "
                f"still be {100 * decay**updates:.0f}% the initial weights); using {faster:.4g} "
                "(set --ema-decay or --ema-warmup to choose)"
            )
            decay = faster
        return cls(lr, warmup, decay, updates, warnings)

    def describe(self, cfg: TrainConfig) -> str:
        """The schedule in a few words, for the setup line."""
        if cfg.sched == "none":
            return f"lr {self.lr:.3g} constant"
        warm = (
            f", warmup {self.warmup_epochs} epoch(s) from {cfg.warmup_lr:.2g}"
            if self.warmup_epochs
            else ""
        )
        every = "update" if cfg.sched_on_updates else "epoch"
        ema = f", EMA decay {self.ema_decay:.4g}" if cfg.ema else ""
        return (
            f"lr {self.lr:.3g} {cfg.sched} -> {cfg.min_lr:.2g} over {cfg.epochs} epochs"
            f"{warm}, stepped per {every}{ema}"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, plan: Plan, updates_per_epoch: int
):
    """timm scheduler (cosine with warmup by default); None for --sched none."""
    from timm.scheduler import create_scheduler_v2

    if cfg.sched == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=plan.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_loss(cfg: TrainConfig, mixup_active: bool) -> nn.Module:
    from timm.loss import SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()  # label smoothing is folded into mixup's targets
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def build_model(
    cfg: TrainConfig, env: DistEnv, num_classes: int, init_src: nn.Module | None
) -> tuple[nn.Module, list[str], InitReport | None]:
    """The training-form model on its device: initialised from --init, stages frozen,
    memory format and SyncBatchNorm set."""
    model = create_train_model(cfg.model, num_classes, drop_path=cfg.drop_path, drop=cfg.drop)
    init_report = init_from_model(model, init_src, cfg.init) if init_src is not None else None
    frozen = freeze_stages(model, cfg.freeze_stages)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.distributed:
        model = convert_sync_batchnorm(model, env.device)
    return model, frozen, init_report


def build_step(
    cfg: TrainConfig, env: DistEnv, state: RunState, num_classes: int, frozen: list[str]
) -> TrainStep:
    """The per-batch update of a run (loss, mixup, distillation, DDP wrapper)."""
    from fastvit.data import create_mixup
    from fastvit.train.distill import DistillationLoss, load_teacher

    mixup = create_mixup(
        cfg.mixup,
        cfg.cutmix,
        num_classes=num_classes,
        label_smoothing=cfg.smoothing,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
    )
    loss_fn = build_loss(cfg, mixup is not None)
    distill = None
    if cfg.distill != "none":
        teacher = load_teacher(cfg.teacher, cfg.teacher_weights, num_classes, cfg.input_size)
        teacher.to(env.device)
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        distill = DistillationLoss(
            loss_fn, teacher, cfg.distill, cfg.distill_alpha, cfg.distill_tau
        )
    model: nn.Module = state.model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return TrainStep(
        model,
        state.optimizer,
        loss_fn,
        env.device,
        state.scheduler,
        state.ema,
        mixup,
        distill,
        cfg.amp,
        state.scaler,
        cfg.clip_grad,
        cfg.clip_mode,
        cfg.channels_last,
        frozen,
    )


def build_state(
    cfg: TrainConfig,
    env: DistEnv,
    model: nn.Module,
    classes: list[str],
    plan: Plan,
    updates_per_epoch: int,
) -> RunState:
    """A fresh run state: optimizer, scheduler, EMA and grad scaler around ``model``."""
    from timm.utils import ModelEmaV3

    if cfg.amp == "fp16" and env.device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 on CPU")
    optimizer = build_optimizer(model, cfg, plan.lr)
    return RunState(
        config=cfg,
        classes=list(classes),
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg, plan, updates_per_epoch),
        ema=(
            ModelEmaV3(model, decay=plan.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
        ),
        scaler=(
            torch.amp.GradScaler("cuda")
            if cfg.amp == "fp16" and env.device.type == "cuda"
            else None
        ),
    )


def _check_resume_data(cfg: TrainConfig, resume: dict[str, Any], classes: list[str]) -> None:
    ck_classes = resume.get("classes")
    if ck_classes is not None and list(ck_classes) != list(classes):
        raise ConfigError(
            f"cannot resume: {cfg.resume} was trained on classes {ck_classes[:5]}... but the "
            "data has different class folders; use the same data"
        )


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
def train(
    cfg: TrainConfig,
    *,
    echo: Callable[[str], None] | None = print,
    resume_checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Run a whole training job described by ``cfg`` and return what it produced.

    ``echo`` receives one line per epoch (rank 0 only); pass None for silence.
    ``resume_checkpoint``: the content of ``cfg.resume`` when the caller already read it.
    """
    t_start = time.perf_counter()
    validate_config(cfg)
    threads = apply_threads(cfg.threads)  # from the CPUs available and the load, or --threads
    env = setup_distributed(cfg.device)
    say = echo if (echo is not None and env.is_main) else (lambda _msg: None)
    if threads.warning():
        say(f"warning: {threads.warning()}")
    try:
        resume = resume_checkpoint
        if resume is None and cfg.resume:
            resume = load_training_checkpoint(cfg.resume)
        init_src = None
        if resume is not None:
            if cfg.init and cfg.init != resume["config"].get("init"):
                raise ConfigError(
                    "--resume and --init are exclusive: --resume continues a run with its own "
                    "weights, --init starts a new run from a model file; drop one"
                )
        elif cfg.init:
            init_src = load_init_model(cfg.init)
        cfg, notes = resolve_config(cfg, resume, init_src)
        out = Path(cfg.output)
        last = out / "last.pt"

        def hint() -> str:
            return f"resume with --resume {last}" if last.is_file() else "no epoch was saved"

        try:
            with (
                sigterm_as_interrupt(lambda: f"terminated (SIGTERM); {hint()}"),
                _run_dir(cfg, env) as rd,
            ):
                return _run(cfg, env, say, t_start, resume, init_src, notes, rd, threads)
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingStopped):
                raise
            raise TrainingInterrupted(f"interrupted (Ctrl-C); {hint()}") from None
    finally:
        cleanup_distributed(env)


@contextlib.contextmanager
def _run_dir(cfg: TrainConfig, env: DistEnv) -> Iterator[RunDir | None]:
    """The locked run directory on rank 0 (None elsewhere); errors reach every rank."""
    rd, error = None, None
    if env.is_main:
        rd = RunDir(
            cfg.output,
            overwrite=cfg.overwrite,
            resume_from=resume_dir(cfg.resume) if cfg.resume else None,
        )
        try:
            rd.__enter__()
        except ConfigError as e:
            error = str(e)
    error = broadcast_object(error, env)
    if error:
        raise ConfigError(error)
    if rd is None:
        yield None
        return
    try:
        yield rd
    except BaseException as e:
        rd.__exit__(type(e), e, e.__traceback__)
        raise
    rd.__exit__(None, None, None)


def _run(
    cfg: TrainConfig,
    env: DistEnv,
    say: Callable[[str], None],
    t_start: float,
    resume: dict[str, Any] | None,
    init_src: nn.Module | None,
    notes: list[str],
    rd: RunDir | None,
    threads: ThreadChoice | None = None,
) -> TrainResult:
    from fastvit.train.datasets import build_splits
    from fastvit.train.final import finalize
    from fastvit.train.metrics import MetricsLogger

    out_dir = Path(cfg.output)
    seed_everything(cfg.seed)
    splits = build_splits(cfg)
    if resume is not None:
        _check_resume_data(cfg, resume, splits.classes)
    model, frozen, init_report = build_model(cfg, env, splits.num_classes, init_src)
    del init_src
    train_loader, val_loader, sampler = build_loaders(splits, cfg, env)
    num_batches = min(len(train_loader), cfg.limit_train_batches or len(train_loader))
    if num_batches == 0:
        raise ConfigError(
            f"batch size {cfg.batch_size} x {env.world_size} process(es) is larger than the "
            f"training set ({len(splits.train)} images); lower --batch-size"
        )
    plan = Plan.of(cfg, num_batches, env.world_size)
    state = build_state(cfg, env, model, splits.classes, plan, num_batches)
    step = build_step(cfg, env, state, splits.num_classes, frozen)
    if resume is not None:  # last: restores the RNG states too
        stored_epochs = int(resume["config"]["epochs"])
        state.load_state_dict(resume, replan=cfg.epochs != stored_epochs)
        del resume
    start_epoch = state.epoch

    if init_report is not None:
        say(init_report.summary())
    if frozen:
        say(f"frozen: {', '.join(frozen)}")
    if env.is_main and start_epoch == 0:
        for w in plan.warnings:
            logger.warning("warning: %s", w)
    if cfg.resume:
        changed = f"; changed: {', '.join(notes)}" if notes else ""
        done = "; all epochs done, writing the final model" if state.finished else ""
        say(f"resumed from {cfg.resume} at epoch {start_epoch}/{cfg.epochs}{changed}{done}")
    say(
        f"training {cfg.model} ({count_params(model) / 1e6:.2f}M params) on {splits.name}: "
        f"{len(splits.train)} train / {len(splits.val)} val images, {splits.num_classes} "
        f"classes, {cfg.input_size}px, batch {cfg.batch_size * env.world_size}, "
        f"{cfg.epochs} epochs, {env.world_size} process(es) on {env.device.type}"
        f"{f', {threads.describe()}' if threads else ''} -> {out_dir}"
    )
    say(f"schedule: {plan.describe(cfg)}")
    if rd is not None:
        rd.begin()
    if rd is not None and rd.adopt_best():  # resumed into a new directory: make it a run
        save_epoch_checkpoints(state.state_dict(), out_dir, is_best=False)
        rd.checkpointed = True

    metrics = MetricsLogger(
        out_dir,
        enabled=env.is_main,
        tensorboard=cfg.tensorboard,
        plot=cfg.plot,
        history=state.history,
    )
    loop = EpochLoop(
        cfg, env, state, step, train_loader, val_loader, sampler, num_batches, metrics, say, rd
    )
    try:
        for epoch in range(start_epoch, cfg.epochs):
            loop.run(epoch)
    finally:
        metrics.close()

    final = finalize(out_dir, splits, cfg, env.device) if env.is_main else None
    barrier(env)
    return TrainResult(
        output_dir=out_dir,
        config=cfg,
        classes=splits.classes,
        num_train=len(splits.train),
        num_val=len(splits.val),
        epochs_run=cfg.epochs - start_epoch,
        best_top1=state.best["top1"],
        best_top5=state.best["top5"],
        best_epoch=state.best["epoch"],
        best_is_ema=bool(state.best["ema"]),
        wall_time_s=time.perf_counter() - t_start,
        history=state.history,
        model_state=model_state(model),
        init_report=init_report,
        frozen=frozen,
        final=final,
    )


@dataclass
class EpochLoop:
    """What every epoch of a run uses; :meth:`run` trains, evaluates, logs and checkpoints
    one epoch."""

    cfg: TrainConfig
    env: DistEnv
    state: RunState
    step: TrainStep
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler
    num_batches: int
    metrics: Any  # MetricsLogger
    say: Callable[[str], None]
    rd: RunDir | None = None

    def evaluate(self) -> tuple[dict[str, float], dict[str, float] | None]:
        """Val metrics of the model and of its EMA (None without EMA)."""
        cfg, env = self.cfg, self.env
        kw = {
            "device": env.device,
            "amp": cfg.amp,
            "channels_last": cfg.channels_last,
            "num_batches": cfg.limit_val_batches,
            "env": env,
            "progress": cfg.progress,
        }
        ev = evaluate(self.state.model, self.val_loader, desc="val", **kw)
        ema = self.state.ema
        return ev, (evaluate(ema.module, self.val_loader, desc="val ema", **kw) if ema else None)

    def run(self, epoch: int) -> None:
        cfg, env, state = self.cfg, self.env, self.state
        seed_everything(epoch_seed(cfg.seed, epoch, env.rank))
        self.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            self.step,
            self.train_loader,
            num_batches=self.num_batches,
            global_step=state.global_step,
            env=env,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            progress=cfg.progress,
        )
        state.global_step = stats.global_step
        if state.scheduler is not None:
            state.scheduler.step(epoch + 1)
        ev, ev_ema = self.evaluate()
        use_ema = ev_ema is not None and ev_ema["top1"] > ev["top1"]
        row = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "val_loss": ev["loss"],
            "val_top1": ev["top1"],
            "val_top5": ev["top5"],
            "ema_val_loss": ev_ema["loss"] if ev_ema else None,
            "ema_top1": ev_ema["top1"] if ev_ema else None,
            "ema_top5": ev_ema["top5"] if ev_ema else None,
            "train_img_s": stats.img_s,
            "epoch_time_s": stats.time_s,
        }
        is_best = state.record(row, ev_ema if use_ema else ev, use_ema)
        self.metrics.log(row)
        if env.is_main:
            save_epoch_checkpoints(state.state_dict(), Path(cfg.output), is_best)
            if self.rd is not None:
                self.rd.checkpointed = True
        ema_txt = f"  ema top-1 {ev_ema['top1']:6.2f}" if ev_ema else ""
        self.say(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {stats.loss:.4f}  lr {stats.lr:.2e}  "
            f"val loss {ev['loss']:.4f}  top-1 {ev['top1']:6.2f}  top-5 {ev['top5']:6.2f}"
            f"{ema_txt}  {stats.img_s:5.0f} img/s  {stats.time_s:5.1f}s"
            + ("  *" if is_best else "")
        )
        barrier(env)


def save_epoch_checkpoints(state: dict[str, Any], out_dir: Path, is_best: bool) -> None:
    """Write ``last.pt`` atomically; on a new best, make ``best.pt`` the same file.

    ``best.pt`` is a hard link to the new ``last.pt`` (renamed into place atomically), so a
    best epoch costs no second write; where links are unsupported it is written again.
    """
    from fastvit.fileio import atomic_path

    last = out_dir / "last.pt"
    atomic_torch_save(state, last)
    if not is_best:
        return
    try:
        with atomic_path(out_dir / "best.pt") as tmp:
            os.link(last, tmp)
    except OSError:
        atomic_torch_save(state, out_dir / "best.pt")


def format_summary(result: TrainResult) -> str:
    """Multi-line end-of-run summary (what the CLI prints)."""
    cfg = result.config
    lines = [
        f"done in {result.wall_time_s:.1f} s: {cfg.model} on {'digits' if cfg.uses_digits else cfg.data or cfg.train_dir} "
        f"({result.num_train} train / {result.num_val} val images, {len(result.classes)} classes, "
        f"{cfg.input_size}px, {result.epochs_run} epochs run)",
        f"  best val top-1 {result.best_top1:.2f}%  top-5 {result.best_top5:.2f}%  "
        f"(epoch {result.best_epoch}, {'EMA' if result.best_is_ema else 'model'} weights)",
    ]
    f = result.final
    if f is not None:
        lines += [
            f"  reparameterized: {f.params_unfused / 1e6:.3f}M -> {f.params_fused / 1e6:.3f}M "
            f"params; val top-1 {f.top1:.2f}%; {f.mismatches}/{f.num_val} predictions differ "
            f"from the training form, max |logit diff| {f.max_logit_diff:.2e}",
            f"  saved {f.model_path} (training form) and {f.reparam_path} (fused)",
        ]
    out = result.output_dir
    files = ["last.pt", "best.pt", "metrics.csv", "summary.json"]
    files += ["curves.png"] if cfg.plot else []
    files += ["tensorboard/"] if cfg.tensorboard else []
    lines.append(f"  run files in {out}/: {', '.join(files)}")
    if f is not None:
        lines.append(f"next: fastvit eval {f.reparam_path}")
    return "\n".join(lines)
