"""Evaluate any checkpoint on a dataset (the library side of ``fastvit eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fastvit.card import ModelCard, Preprocessing
from fastvit.errors import CheckpointError, ConfigError, DataError


def load_for_eval(
    path: str | Path, use_ema: bool | None = None, *, input_size: int | None = None
) -> tuple[nn.Module, ModelCard]:
    """Model in eval mode plus its card, for any model file: a checkpoint or a training run's
    ``best.pt``/``last.pt`` (both through :func:`fastvit.load_model`, the one loader; ``use_ema``
    applies to run files, None picks the weights that scored best), or an ONNX/TorchScript
    export (run exactly as ``fastvit predict`` runs it, at ``input_size`` if given)."""
    import fastvit
    from fastvit.infer import PredictorModule, is_export_file, load_predictor

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if is_export_file(path):
        if use_ema is not None:
            raise ConfigError(f"{path} is an exported model; --ema/--no-ema apply to run files")
        # the export's runtime (onnxruntime/OpenVINO) uses the threads chosen for torch
        module = PredictorModule(
            load_predictor(path, size=input_size, threads=torch.get_num_threads())
        )
        return module.eval(), module.card
    if use_ema is not None and path.suffix == ".safetensors":
        raise ConfigError(
            f"--ema/--no-ema choose between the weights of a training checkpoint (last.pt, "
            f"best.pt); {path} holds one set of weights (a run's model files already hold the "
            "better of the two); drop the option"
        )
    model = fastvit.load_model(path, use_ema=use_ema)
    return model.eval(), model.card


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
    from fastvit.data import build_eval_dataset, eval_transform
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
    model, card = load_for_eval(checkpoint, use_ema, input_size=input_size)
    exported = not isinstance(model, fastvit.FastViT)
    prep: Preprocessing = card.preprocessing.with_input_size(input_size).replace(
        crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
    )
    dev = resolve_device(device)
    if exported and (amp != "none" or dev.type != "cpu" or channels_last):
        raise ConfigError(
            "an exported model runs as fastvit predict runs it (CPU, float32); "
            "drop --amp/--device/--channels-last"
        )
    if amp == "fp16" and dev.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 on CPU")
    transform = eval_transform(prep)
    dataset, classes, data_name = build_eval_dataset(
        data,
        input_size=prep.input_size[-1],
        transform=transform,
        check_images=check_images,
        in_chans=prep.in_chans,
    )
    num_classes = card.num_classes
    if num_classes != len(classes):
        raise DataError(
            f"the checkpoint predicts {num_classes} classes but {data_name} has {len(classes)}; "
            "evaluate on data with the classes it was trained on"
        )
    names = list(card.class_names or [])
    if names and names != list(classes):
        raise DataError(
            f"the checkpoint's classes ({', '.join(names[:4])}, ...) differ from the class "
            f"folders of {data_name} ({', '.join(classes[:4])}, ...); use matching data"
        )
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    stats = evaluate(
        model, loader, device=dev, amp=amp, channels_last=channels_last, num_batches=limit_batches
    )
    return {
        "checkpoint": str(checkpoint),
        "variant": card.variant,
        # an export says how it ran (e.g. "openvino f32"); ONNX/TorchScript give the card's form
        "form": getattr(getattr(model, "predictor", None), "runtime", card.form),
        "data": data_name,
        "images": stats["n"],
        "input_size": prep.input_size[-1],
        "top1": stats["top1"],
        "top5": stats["top5"] if num_classes > 5 else None,  # trivially 100% otherwise
        "loss": stats["loss"],
        "img_s": stats["img_s"],
    }
