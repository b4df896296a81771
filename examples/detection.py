"""Train a torchvision Faster R-CNN with a FastViT + FPN backbone on synthetic digit scenes.

The scenes are made from real images: the embedded handwritten digits (scikit-learn's 8x8 scans,
see ``fastvit.data.digits``) pasted at random positions and scales onto a noisy canvas, so every
box and label is known and nothing is downloaded. Training runs on the CPU in a few minutes;
the script then reports mAP@0.5 (torchmetrics' ``MeanAveragePrecision``, COCO-style 101-point
interpolation, pycocotools backend) on held-out scenes built from the digits' validation split,
for the trained detector and for the same detector after ``fastvit.reparameterize``.

    python examples/detection.py --steps 300

Needs the ``detection`` extra (``pip install -e '.[detection]'``: torchmetrics, pycocotools).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

import fastvit
from fastvit.data.digits import DigitsDataset
from fastvit.models.backbones import fpn_backbone


class DigitScenes(torch.utils.data.Dataset):
    """``n`` canvases of ``size`` px, each with 1-4 digits of 14-40 px at random places.

    Labels are digit + 1 (0 is the detectors' background class). Deterministic per index.
    """

    def __init__(self, split: str, n: int, size: int = 128, seed: int = 0) -> None:
        digits = DigitsDataset(split, input_size=40)
        self.pixels = (
            torch.stack([torch.from_numpy(digits.pixels(i)) for i in range(len(digits))]).float()
            / 255.0
        )  # (N, 40, 40) in [0, 1]
        self.labels = torch.tensor(digits.targets)
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        canvas = torch.rand(self.size, self.size, generator=g) * 0.15
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            k = int(torch.randint(len(self.labels), (1,), generator=g))
            s = int(torch.randint(14, 41, (1,), generator=g))
            digit = torch.nn.functional.interpolate(
                self.pixels[k][None, None], size=(s, s), mode="bilinear", align_corners=False
            )[0, 0]
            x0 = int(torch.randint(0, self.size - s + 1, (1,), generator=g))
            y0 = int(torch.randint(0, self.size - s + 1, (1,), generator=g))
            region = canvas[y0 : y0 + s, x0 : x0 + s]
            canvas[y0 : y0 + s, x0 : x0 + s] = torch.maximum(region, digit)
            ys, xs = torch.nonzero(digit > 0.25, as_tuple=True)  # tight box around the ink
            boxes.append(
                [
                    x0 + xs.min().item(),
                    y0 + ys.min().item(),
                    x0 + xs.max().item() + 1,
                    y0 + ys.max().item() + 1,
                ]
            )
            labels.append(int(self.labels[k]) + 1)
        image = canvas.clamp(0, 1).expand(3, -1, -1).contiguous()
        return image, {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels),
        }


def collate(batch):
    return tuple(zip(*batch))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> float:
    """mAP@0.5 over ``loader`` (torchmetrics MeanAveragePrecision, IoU threshold 0.5)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5])
    model.eval()
    for images, targets in loader:
        metric.update(model(list(images)), list(targets))
    return float(metric.compute()["map"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fastvit_t8")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--val-scenes", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # Trained from scratch here (no download): BatchNorm trains ("bn"); with ImageNet weights
    # (pretrained=True) the usual recipe keeps the default norm="frozen".
    backbone = fpn_backbone(args.model, norm="bn", trainable_stages=5, out_channels=128)
    model = FasterRCNN(
        backbone,
        num_classes=11,
        min_size=args.size,
        max_size=args.size,
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    train = torch.utils.data.DataLoader(
        DigitScenes("train", args.steps * args.batch_size, args.size, args.seed),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
    )
    val = torch.utils.data.DataLoader(
        DigitScenes("val", args.val_scenes, args.size, args.seed + 1),
        batch_size=8,
        collate_fn=collate,
    )
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    model.train()
    t0 = time.perf_counter()
    for step, (images, targets) in enumerate(train, 1):
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(
                f"step {step}/{args.steps}  loss {loss.item():.3f}  "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    train_s = time.perf_counter() - t0

    map50 = evaluate(model, val)
    fused = fastvit.reparameterize(model)
    map50_fused = evaluate(fused, val)
    print(
        f"{args.model} Faster R-CNN, {args.steps} steps x {args.batch_size} scenes "
        f"({train_s:.0f} s): mAP@0.5 {map50:.3f} on {args.val_scenes} held-out scenes; "
        f"after fastvit.reparameterize: {map50_fused:.3f}"
    )


if __name__ == "__main__":
    main()
