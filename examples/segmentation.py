"""Train a semantic FPN segmenter on FastViT to label the pixels of digit canvases.

The canvases are made from real images: the embedded handwritten digits (scikit-learn's 8x8
scans, see ``fastvit.data.canvases``) pasted at random places and scales onto a noisy canvas,
with a class per pixel (0 background, ``d + 1`` the ink of digit ``d``, 255 the ignored rim of
each stroke), so nothing is downloaded. Training runs on the CPU in a few minutes; the script
then reports the IoU of every class and their mean (torchmetrics' ``MulticlassJaccardIndex``
with ``ignore_index=255``: intersection / union over all validation pixels, per class) on
held-out canvases built from the digits' validation split, for the trained model and for the
same model after ``fastvit.reparameterize``, and writes ``samples.png`` (image / truth /
prediction for a few of them).

    python examples/segmentation.py                      # defaults: fastvit_t8, 64 px
    python examples/segmentation.py --onnx runs/segmentation/seg.onnx   # + dynamic-H/W ONNX

Needs the ``segmentation`` extra (``pip install -e '.[segmentation]'``: torchmetrics,
matplotlib, scikit-learn); ``--onnx`` also the ``export`` extra.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

import fastvit
from fastvit.data.canvases import CANVAS_CLASSES, DigitCanvases
from fastvit.fileio import write_bytes_atomic
from fastvit.models.segmentation import (
    IGNORE_INDEX,
    SemanticFPN,
    create_segmenter,
    segmentation_loss,
)
from fastvit.threads import apply_threads


def build_segmenter(
    name: str, size: int, fpn_channels: int = 64, head_channels: int = 64
) -> SemanticFPN:
    """A semantic FPN on ``name`` for the canvas classes, its card set to ``size`` px inputs
    normalized with mean 0.5 / std 0.25 (what :func:`normalize` applies). Trained from
    scratch here, so every stage learns and BatchNorm trains (``norm="bn"``); with ImageNet
    weights (``fastvit.create_segmenter(..., pretrained=True)``) ``norm="frozen"`` is the
    usual choice for small batches. The neck and head are narrower than the paper's (256 /
    128): the canvases have 11 classes, and the CPU run is twice as fast."""
    model = create_segmenter(
        name,
        len(CANVAS_CLASSES),
        fpn_channels=fpn_channels,
        head_channels=head_channels,
        class_names=CANVAS_CLASSES,
    )
    body = model.body
    body.preprocessing = body.preprocessing.replace(
        input_size=(3, size, size), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0
    )
    return model


def normalize(images: Tensor, model: SemanticFPN) -> Tensor:
    """Canvas pixels in [0, 1] to the model's input (its card's mean / std)."""
    prep = model.card.preprocessing
    mean = torch.tensor(prep.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def evaluate(
    model: nn.Module, images: Tensor, masks: Tensor, norm: SemanticFPN, batch_size: int = 50
) -> tuple[list[float], Tensor]:
    """Per-class IoU over all pixels of ``images`` (torchmetrics ``MulticlassJaccardIndex``,
    ``ignore_index=255``) and the predicted masks."""
    from torchmetrics.classification import MulticlassJaccardIndex

    device = next(model.parameters()).device
    metric = MulticlassJaccardIndex(
        num_classes=len(CANVAS_CLASSES), average="none", ignore_index=IGNORE_INDEX
    ).to(device)
    model.eval()
    preds = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        pred = model(normalize(x, norm)).argmax(1)
        metric.update(pred, masks[i : i + batch_size].to(device))
        preds.append(pred.cpu())
    return metric.compute().tolist(), torch.cat(preds)


def foreground_iou(preds: Tensor, masks: Tensor) -> float:
    """IoU of "some digit" vs background, whatever digit: how well the ink is found, apart
    from naming it (ignored pixels left out)."""
    keep = masks != IGNORE_INDEX
    pred, true = preds[keep] > 0, masks[keep] > 0
    return float((pred & true).sum() / (pred | true).sum().clamp(min=1))


def colourize(mask: Tensor) -> np.ndarray:
    """A class mask as RGB: black background, one colour per digit, white ignored pixels."""
    import matplotlib

    palette = np.zeros((256, 3), dtype=np.float32)
    palette[1:11] = matplotlib.colormaps["tab10"].colors
    palette[IGNORE_INDEX] = 1.0
    return palette[mask.numpy()]


def save_samples(path: Path, images: Tensor, masks: Tensor, preds: Tensor, n: int = 4) -> Path:
    """A PNG grid: one row per canvas, columns image / truth / prediction, with a legend."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = min(n, len(images))
    fig = Figure(figsize=(7.5, 2.4 * n + 0.6))
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(colourize(masks[r]))
        axes[r, 2].imshow(colourize(preds[r]))
        for c, title in enumerate(("image", "truth (white: ignored)", "prediction")):
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    handles = [
        Patch(color=colourize(torch.tensor([k]))[0], label=CANVAS_CLASSES[k])
        for k in range(1, len(CANVAS_CLASSES))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return write_bytes_atomic(path, buf.getvalue())


def format_ious(ious: list[float]) -> str:
    """'background 0.99  0 0.85  1 0.80 ...'"""
    return "  ".join(f"{name} {iou:.3f}" for name, iou in zip(CANVAS_CLASSES, ious))


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate, fuse, evaluate again, write the sample PNG (and the ONNX model when
    asked); print a summary and return the numbers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fastvit_t8")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="canvas size in px")
    p.add_argument(
        "--digit-px", type=int, nargs=2, default=(20, 40), help="digit sizes: min max (px)"
    )
    p.add_argument("--lr", type=float, default=8e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--fpn-channels", type=int, default=64)
    p.add_argument("--head-channels", type=int, default=64)
    p.add_argument("--val-canvases", type=int, default=200)
    p.add_argument("--samples", type=int, default=4, help="canvases drawn in samples.png")
    p.add_argument("--out", default="runs/segmentation", help="folder for samples.png")
    p.add_argument("--onnx", default=None, help="also export the fused model (dynamic H/W)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: the cores other processes leave idle, at least 1)",
    )
    p.add_argument("--device", default="cpu", help="torch device (e.g. cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    threads = apply_threads(args.threads)
    print(f"{args.model} semantic FPN on {args.size} px digit canvases; {threads.describe()}")
    torch.manual_seed(args.seed)

    device = torch.device(args.device)
    model = build_segmenter(args.model, args.size, args.fpn_channels, args.head_channels)
    # channels-last: oneDNN's depthwise-conv backward is ~1.7x faster in NHWC on the CPU
    model.to(device, memory_format=torch.channels_last)
    train = torch.utils.data.DataLoader(
        DigitCanvases(
            "train",
            args.steps * args.batch_size,
            args.size,
            digit_px=tuple(args.digit_px),
            seed=args.seed,
        ),
        batch_size=args.batch_size,
    )
    val_images, val_masks = DigitCanvases(
        "val", args.val_canvases, args.size, digit_px=tuple(args.digit_px), seed=args.seed + 1
    ).stacked()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # linear warm-up over the first 10% of the steps, then cosine decay (per step, any length)
    sched = CosineLRScheduler(
        opt,
        t_initial=args.steps,
        warmup_t=max(1, args.steps // 10),
        warmup_lr_init=args.lr / 100,
        t_in_epochs=False,
    )
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, (images, masks) in enumerate(train, 1):
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        loss = segmentation_loss(model(normalize(images, model)), masks.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step_update(step)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            print(
                f"step {step}/{args.steps}  loss {losses[-1]:.3f}  "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    train_s = time.perf_counter() - t0

    ious, preds = evaluate(model, val_images, val_masks, model)
    fused = fastvit.reparameterize(model)  # a fused copy; `model` stays as trained
    ious_fused, preds_fused = evaluate(fused, val_images, val_masks, model)
    miou, miou_fused = float(np.mean(ious)), float(np.mean(ious_fused))
    ink_iou = foreground_iou(preds, val_masks)
    png = save_samples(
        Path(args.out) / "samples.png", val_images, val_masks, preds_fused, args.samples
    )
    print(
        f"{args.model} semantic FPN, {args.steps} steps x {args.batch_size} canvases of "
        f"{args.size} px ({train_s:.0f} s, {train_s / max(args.steps, 1):.2f} s/step): "
        f"mIoU {miou:.3f} on {args.val_canvases} held-out canvases; after "
        f"fastvit.reparameterize: {miou_fused:.3f}\nIoU per class: {format_ious(ious)}\n"
        f"digit pixels found (any digit vs background): IoU {ink_iou:.3f}\n"
        f"wrote {png}"
    )
    result = {
        "steps": args.steps,
        "train_s": train_s,
        "s_per_step": train_s / max(args.steps, 1),
        "losses": losses,
        "ious": ious,
        "miou": miou,
        "ious_fused": ious_fused,
        "miou_fused": miou_fused,
        "foreground_iou": ink_iou,
        "pixels_changed_by_fusion": int((preds != preds_fused).sum()),
        "png": png,
    }
    if args.onnx:
        from fastvit.export.onnx import export_onnx

        report = export_onnx(fused, args.onnx, dynamic_hw=True)
        print(report.summary())
        result["onnx"] = report
    return result


if __name__ == "__main__":
    main()
