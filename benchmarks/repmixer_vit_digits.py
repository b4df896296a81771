"""Attention vs RepMixer vs hybrid token mixing in the same small ViT, trained on digits.

Three forms of one timm ``VisionTransformer`` (32 px, patch 4 -> 8x8 = 64 tokens, width 64,
depth 6, 2 heads, MLP x2, no class token, average pooling), built by
``fastvit.models.repmixer_vit``:

* ``attention``: every block attention (a plain ViT);
* ``repmixer``:  every block RepMixer;
* ``hybrid``:    RepMixer in the first ``depth - 2`` blocks, attention in the last two
  (FastViT's layout: cheap local mixing early, global attention late).

Same data order, augmentation, optimizer, schedule, epochs and seed for all three, on the
embedded scikit-learn digits (1,438 train / 359 val, fixed split). The three are trained
epoch by epoch in turn (rotating order), so machine load hits all alike.
Reported per form: parameters, val top-1 (best epoch and last epoch), training wall time,
and batch-1 inference latency of the fused model (``fastvit.reparameterize``; attention
blocks have nothing to fuse) timed interleaved with the others, plus the max logit difference
between the trained and the fused model on the val set.

    PYTHONPATH=src python benchmarks/repmixer_vit_digits.py            # 2-4 min of CPU time
    PYTHONPATH=src python benchmarks/repmixer_vit_digits.py --epochs 5 # quick look

Training time on a shared machine depends on the load (printed): compare the forms within
one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMS = ("attention", "repmixer", "hybrid")
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def load_split(split: str, size: int) -> tuple[Tensor, Tensor]:
    """The digits split as normalized (N, 3, size, size) floats and (N,) labels."""
    import numpy as np

    from fastvit.data.digits import DigitsDataset

    ds = DigitsDataset(split, input_size=size)
    x = torch.stack([torch.from_numpy(np.asarray(img, dtype=np.float32)) for img, _ in ds])
    x = x.permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.tensor(ds.targets)


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random affine per image (rotation +-10 deg, scale 0.9-1.1, shift +-10%), one batched
    ``grid_sample``; padding is the background value."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.2  # grid units: 0.2 = 10% of width
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


def build(form: str, args: argparse.Namespace) -> nn.Module:
    from fastvit.models import repmixer_vit

    mixers = {
        "attention": "none",
        "repmixer": "all",
        "hybrid": range(args.depth - args.attention_blocks),
    }[form]
    return repmixer_vit(
        mixers,
        img_size=args.size,
        patch_size=args.patch,
        embed_dim=args.dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        num_classes=10,
        drop_path_rate=0.0,
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> tuple[float, Tensor]:
    model.eval()
    logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return (logits.argmax(1) == y).float().mean().item() * 100, logits


class Run:
    """One form's model, optimizer, schedule and data stream; ``epoch()`` trains one epoch."""

    def __init__(self, form: str, args: argparse.Namespace, data: dict) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        torch.manual_seed(args.seed)
        self.form, self.data, self.batch = form, data, args.batch
        self.model = build(form, args)
        self.steps_per_epoch = math.ceil(len(data["train"][0]) / args.batch)
        self.opt = create_optimizer_v2(
            self.model, "adamw", lr=args.lr, weight_decay=args.weight_decay
        )
        self.sched = CosineLRScheduler(
            self.opt,
            t_initial=args.epochs * self.steps_per_epoch,
            lr_min=args.lr / 100,
            warmup_t=self.steps_per_epoch,
            warmup_lr_init=args.lr / 100,
            t_in_epochs=False,
        )
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.g = torch.Generator().manual_seed(args.seed)  # same data order and augmentation
        self.history: list[float] = []
        self.step, self.train_s, self.loss = 0, 0.0, float("nan")

    def epoch(self) -> None:
        xtr, ytr = self.data["train"]
        self.model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr), generator=self.g)
        for i in range(0, len(xtr), self.batch):
            idx = perm[i : i + self.batch]
            loss = self.loss_fn(self.model(augment(xtr[idx], self.g)), ytr[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            self.sched.step_update(self.step)
        self.train_s += time.perf_counter() - t0
        self.loss = loss.item()
        self.history.append(evaluate(self.model, *self.data["val"])[0])

    def result(self) -> dict:
        import fastvit

        xva, yva = self.data["val"]
        acc, logits = evaluate(self.model, xva, yva)
        fused = fastvit.reparameterize(self.model)
        fused_acc, fused_logits = evaluate(fused, xva, yva)
        return {
            "form": self.form,
            "model": self.model,
            "fused": fused,
            "params": sum(p.numel() for p in self.model.parameters()),
            "fused_params": sum(p.numel() for p in fused.parameters()),
            "val_top1_last": acc,
            "val_top1_best": max(self.history),
            "history": self.history,
            "fused_val_top1": fused_acc,
            "fused_max_logit_diff": (fused_logits - logits).abs().max().item(),
            "train_s": self.train_s,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument(
        "--attention-blocks",
        type=int,
        default=2,
        help="hybrid: number of attention blocks at the end (default 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    from fastvit.bench.measure import time_interleaved

    torch.set_num_threads(args.threads)
    forms = [f for f in args.forms.split(",") if f]
    print(
        f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; "
        f"{args.threads} thread(s)"
    )
    data = {s: load_split(s, args.size) for s in ("train", "val")}
    runs = [Run(f, args, data) for f in forms]
    for epoch in range(args.epochs):
        # One epoch of each form in turn (order rotated), so load changes hit all alike.
        for j in range(len(runs)):
            r = runs[(j + epoch) % len(runs)]
            r.epoch()
        print(
            f"epoch {epoch + 1:>3}/{args.epochs}  "
            + "  ".join(f"{r.form} {r.history[-1]:5.1f}% ({r.train_s:.0f} s)" for r in runs),
            flush=True,
        )
    results = [r.result() for r in runs]

    # Batch-1 latency of the fused models (and the unfused ones for reference), interleaved.
    x1 = data["val"][0][:1]
    fns = []
    for r in results:
        for key in ("fused", "model"):
            m = r[key].eval()

            def run(m: nn.Module = m) -> None:
                with torch.inference_mode():
                    m(x1)

            fns.append(run)
    timings = time_interleaved(fns, warmup=5, rounds=10, round_time=0.2)
    for i, r in enumerate(results):
        r["fused_ms"], r["unfused_ms"] = timings[2 * i].median_ms, timings[2 * i + 1].median_ms
        r["fused_p10_ms"] = timings[2 * i].p10_ms  # least disturbed by other processes
    load_after = os.getloadavg()[0]

    print()
    print(
        f"ViT {args.size}px patch {args.patch} ({(args.size // args.patch) ** 2} tokens), "
        f"dim {args.dim}, depth {args.depth}, {args.heads} heads, MLP x{args.mlp_ratio:g}; "
        f"{args.epochs} epochs, batch {args.batch}, AdamW lr {args.lr:g}, seed {args.seed}"
    )
    hdr = (
        f"{'form':<10} {'params':>8} {'val top-1 last':>15} {'best':>6} {'fused top-1':>12} "
        f"{'train s':>8} {'fused b1 ms':>12} {'(p10)':>6} {'unfused b1 ms':>14} "
        f"{'fused diff':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(
            f"{r['form']:<10} {r['params']:>8} {r['val_top1_last']:>14.1f}% "
            f"{r['val_top1_best']:>5.1f}% {r['fused_val_top1']:>11.1f}% {r['train_s']:>8.1f} "
            f"{r['fused_ms']:>12.3f} {r['fused_p10_ms']:>6.2f} {r['unfused_ms']:>14.3f} "
            f"{r['fused_max_logit_diff']:>11.1e}"
        )
    base = next((r for r in results if r["form"] == "attention"), None)
    if base is not None:
        for r in results:
            if r is not base:
                print(
                    f"{r['form']} / attention: train time {r['train_s'] / base['train_s']:.2f}x,"
                    f" fused latency {r['fused_ms'] / base['fused_ms']:.2f}x (median), "
                    f"{r['fused_p10_ms'] / base['fused_p10_ms']:.2f}x (p10)"
                )
    print(f"load average after: {load_after:.2f} (1 min)")
    if args.json:
        from fastvit.fileio import write_text_atomic

        keep = [{k: v for k, v in r.items() if k not in ("model", "fused")} for r in results]
        write_text_atomic(
            args.json,
            json.dumps({"config": vars(args), "results": keep, "load_after": load_after}, indent=2),
        )


if __name__ == "__main__":
    main()
