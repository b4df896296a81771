"""Evaluate any checkpoint on a dataset (the library side of ``fastvit eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fastvit.errors import CheckpointError, ConfigError, DataError
from fastvit.train.checkpoint import FORMAT


def _training_checkpoint(path: Path) -> dict[str, Any] | None:
    """Our last.pt/best.pt content, or None for any other file."""
    if path.suffix == ".safetensors":
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None


def load_for_eval(path: str | Path, use_ema: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Model in eval mode plus its preprocessing (input_size, crop_pct, interpolation, mean, std).

    ``use_ema`` applies to training checkpoints: None picks the weights that scored best.
    """
    import fastvit
    from fastvit.train.config import TrainConfig
    from fastvit.train.final import preprocessing_metadata
    from fastvit.train.modeling import create_train_model

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    ckpt = _training_checkpoint(path)
    if ckpt is not None:
        cfg = TrainConfig.from_dict(ckpt["config"])
        if use_ema is None:
            use_ema = bool(ckpt["best"]["ema"])
        if use_ema and ckpt.get("ema") is None:
            raise ConfigError(f"{path} has no EMA weights (trained with --no-ema); drop --ema")
        model = create_train_model(cfg.model, len(ckpt["classes"]))
        model.load_state_dict(ckpt["ema"] if use_ema else ckpt["model"], strict=True)
        model.class_names = list(ckpt["classes"])
        return model.eval(), preprocessing_metadata(cfg)
    model = fastvit.load_model(path)  # restores the saved preprocessing into pretrained_cfg
    pc = model.pretrained_cfg
    prep = {
        "input_size": int(pc["input_size"][-1]),
        "crop_pct": float(pc["crop_pct"]),
        "interpolation": str(pc["interpolation"]),
        "mean": tuple(pc["mean"]),
        "std": tuple(pc["std"]),
    }
    return model.eval(), prep


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    input_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    amp: str = "none",
    channels_last: bool = False,
    use_ema: bool | None = None,
    limit_batches: int | None = None,
    check_images: str = "auto",
) -> dict[str, Any]:
    """Top-1/top-5 (%), mean loss and img/s of ``checkpoint`` on ``data`` (digits val if None)."""
    import fastvit
    from fastvit.data import build_eval_dataset, create_eval_transform
    from fastvit.train.distributed import resolve_device
    from fastvit.train.engine import evaluate

    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if input_size is not None and input_size < 32:
        raise ConfigError(f"input size {input_size} is too small; use >= 32")
    if limit_batches is not None and limit_batches < 1:
        raise ConfigError(f"--limit-batches must be at least 1, got {limit_batches}")
    if amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"unknown --amp value {amp!r}; use none, bf16 or fp16")
    model, prep = load_for_eval(checkpoint, use_ema)
    prep.update({k: v for k, v in (("input_size", input_size), ("crop_pct", crop_pct),
                                   ("interpolation", interpolation), ("mean", mean),
                                   ("std", std)) if v is not None})
    dev = resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 on CPU")
    transform = create_eval_transform(prep["input_size"], crop_pct=prep["crop_pct"],
                                      interpolation=prep["interpolation"], mean=prep["mean"],
                                      std=prep["std"])
    dataset, classes, data_name = build_eval_dataset(
        data, input_size=prep["input_size"], transform=transform, check_images=check_images)
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes != len(classes):
        raise DataError(
            f"the checkpoint predicts {num_classes} classes but {data_name} has {len(classes)}; "
            "evaluate on data with the classes it was trained on"
        )
    names = getattr(model, "class_names", None)
    if names and list(names) != list(classes):
        raise DataError(
            f"the checkpoint's classes ({', '.join(names[:4])}, ...) differ from the class "
            f"folders of {data_name} ({', '.join(classes[:4])}, ...); use matching data"
        )
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    stats = evaluate(model, loader, device=dev, amp=amp, channels_last=channels_last,
                     num_batches=limit_batches)
    return {
        "checkpoint": str(checkpoint),
        "variant": getattr(model, "variant", None),
        "form": "fused" if fastvit.is_fused(model) else "unfused",
        "data": data_name,
        "images": stats["n"],
        "input_size": prep["input_size"],
        "top1": stats["top1"],
        "top5": stats["top5"],
        "loss": stats["loss"],
        "img_s": stats["img_s"],
    }
