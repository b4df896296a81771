"""End of a run: reparameterize the best weights, verify on the val set, save both forms.

The best checkpoint's weights (the EMA copy when it scored higher) are loaded into a fresh
training-form model, so SyncBatchNorm or DDP wrappers never reach the fusion code. The fused
model must give the same val predictions as the training form; the number of differing
predictions and the largest logit difference are reported (and a real disagreement raises).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fastvit.card import Preprocessing
from fastvit.errors import ReparamError
from fastvit.fileio import write_text_atomic
from fastvit.models.complexity import count_params
from fastvit.train.checkpoint import checkpoint_weights, load_training_checkpoint
from fastvit.train.metrics import topk_correct
from fastvit.train.modeling import create_train_model

logger = logging.getLogger("fastvit")

# A prediction that flips between forms is a fusion bug unless the training form's top two
# logits were closer than this (then float rounding legitimately decides the tie).
TIE_MARGIN = 1e-4


@dataclass
class FinalReport:
    """What the end-of-run reparameterization produced and how well it matched."""

    source: str  # 'ema' or 'model'
    epoch: int
    top1: float  # fused model, val split, %
    top5: float
    num_val: int
    mismatches: int  # val predictions that differ between training and fused form
    max_logit_diff: float
    params_unfused: int
    params_fused: int
    model_path: str
    reparam_path: str
    summary_path: str


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, limit_batches: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 on CPU, targets) for the samples of ``loader``, in order."""
    model.eval().to(device)
    outs, targets = [], []
    for i, (images, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        outs.append(model(images.to(device)).float().cpu())
        targets.append(y)
    return torch.cat(outs), torch.cat(targets)


def compare_predictions(ref: torch.Tensor, fused: torch.Tensor) -> tuple[int, int, float]:
    """(mismatches, mismatches not explained by a near-tie, max abs logit difference)."""
    diff = float((ref - fused).abs().max()) if ref.numel() else 0.0
    differ = ref.argmax(1) != fused.argmax(1)
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    margin = (top2[:, 0] - top2[:, -1]) if ref.shape[1] > 1 else torch.full_like(top2[:, 0], 1e9)
    real = differ & (margin > TIE_MARGIN)
    return int(differ.sum()), int(real.sum()), diff


def _topk(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    n = max(len(targets), 1)
    top1, top5 = topk_correct(logits, targets)
    return 100.0 * float(top1) / n, 100.0 * float(top5) / n


def run_preprocessing(cfg: Any) -> Preprocessing:
    """How inputs must be prepared for the run's model (its eval transform; stored in the
    saved model's card). A 'random' training interpolation evaluates bicubic."""
    interpolation = "bicubic" if cfg.interpolation == "random" else str(cfg.interpolation)
    return Preprocessing(
        (3, int(cfg.input_size), int(cfg.input_size)),
        float(cfg.crop_pct),
        interpolation=interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )


def finalize(out_dir: Path, splits: Any, cfg: Any, device: torch.device) -> FinalReport:
    """Reparameterize the best weights, verify them on the val split and save both forms."""
    import fastvit

    best_path = out_dir / "best.pt"
    if best_path.is_file():
        ckpt = load_training_checkpoint(best_path)
        use_ema = None  # the weights that scored best
    else:  # resumed from a lone last.pt: the last weights are all we have
        ckpt = load_training_checkpoint(out_dir / "last.pt")
        last = ckpt["history"][-1]
        use_ema = (
            ckpt.get("ema") is not None
            and last.get("ema_top1") is not None
            and last["ema_top1"] > last["val_top1"]
        )
        logger.warning(
            "warning: %s has no best.pt; reparameterizing the last epoch's weights", out_dir
        )
    state, use_ema = checkpoint_weights(ckpt, use_ema)
    model = create_train_model(cfg.model, len(splits.classes))
    model.load_state_dict(state, strict=True)
    model.eval()
    model.class_names = list(splits.classes)
    model.preprocessing = run_preprocessing(cfg)
    fused = fastvit.reparameterize(model)

    loader = DataLoader(splits.val, batch_size=cfg.batch_size, shuffle=False)
    limit = cfg.limit_val_batches  # quick runs check only part of the val set
    ref_logits, targets = predict_logits(model, loader, device, limit)
    fused_logits, _ = predict_logits(fused, loader, device, limit)
    mismatches, real, max_diff = compare_predictions(ref_logits, fused_logits)
    if real:
        raise ReparamError(
            f"the reparameterized model changes {real} val predictions (max logit difference "
            f"{max_diff:.3g}); the training-form checkpoint best.pt is kept for inspection"
        )
    top1, top5 = _topk(fused_logits, targets)
    meta = dict(
        val_top1=round(top1, 4),
        dataset=splits.name,
        epoch=int(ckpt["epoch"]),
        weights="ema" if use_ema else "model",
    )
    model_path = fastvit.save_model(
        model.cpu(), out_dir / "model.safetensors", class_names=splits.classes, metadata=meta
    )
    reparam_path = fastvit.save_model(
        fused.cpu(),
        out_dir / "model_reparam.safetensors",
        class_names=splits.classes,
        metadata=meta,
    )
    report = FinalReport(
        source="ema" if use_ema else "model",
        epoch=int(ckpt["epoch"]),
        top1=top1,
        top5=top5,
        num_val=len(targets),
        mismatches=mismatches,
        max_logit_diff=max_diff,
        params_unfused=count_params(model),
        params_fused=count_params(fused),
        model_path=str(model_path),
        reparam_path=str(reparam_path),
        summary_path=str(out_dir / "summary.json"),
    )
    write_text_atomic(out_dir / "summary.json", json.dumps(asdict(report), indent=2))
    return report
