"""Training throughput and peak memory: our FastViT against timm's, side by side in one run.

Both models (same variant, classes, batch and input size) are trained with the same loop
(AdamW, cross-entropy, zero_grad/backward/step) in interleaved rounds, so load changes on a
shared machine hit both alike; the median round is reported. Peak memory is measured for each
model in a fresh subprocess (CPU: peak RSS of the training steps and its growth over the
RSS before them, i.e. activations and gradients; CUDA: peak allocated).

    python benchmarks/bench_train.py                      # T8, batch 64, 32 px (digits setup)
    python benchmarks/bench_train.py --size 256 --batch 32
    python benchmarks/bench_train.py --profile            # top ops of one step, both models
    python benchmarks/bench_train.py --main-job           # + time `fastvit train` on digits
    python benchmarks/bench_train.py --size 256 --batch 32
        # default options: ours in `fastvit train`'s default layout (channels-last), timm's
        # in NCHW (its channels-last backward crashes torch 2.14 on CPU at >= 112 px, in its
        # stem's strided 1x1 conv; ours has none); --no-channels-last for ours in NCHW

Prints img/s of both, the ratio ours/timm (target >= 1.3), and peak memory of both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.train.config import TrainConfig


def build(which: str, variant: str, num_classes: int) -> nn.Module:
    if which == "ours":
        import fastvit

        return fastvit.create_model(variant, num_classes=num_classes)
    import timm

    return timm.create_model(variant, pretrained=False, num_classes=num_classes)


class Trainer:
    """One model, its optimizer and a fixed batch: ``steps(n)`` runs n training steps."""

    def __init__(
        self,
        model: nn.Module,
        batch: int,
        size: int,
        num_classes: int,
        device: torch.device,
        channels_last: bool,
    ) -> None:
        self.model = model.to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, size, size, generator=g).to(device)
        self.y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.device = device

    def steps(self, n: int) -> float:
        """Run n steps; return seconds taken."""
        self._sync()
        t = time.perf_counter()
        for _ in range(n):
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self._sync()
        return time.perf_counter() - t

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _channels_last(which: str, args: argparse.Namespace) -> bool:
    return args.channels_last and not (which == "timm" and args.timm_nchw)


def make_trainer(which: str, args: argparse.Namespace, device: torch.device) -> Trainer:
    """``which`` model ("ours"/"timm") in the layout and setting the options ask for."""
    return Trainer(
        build(which, args.model, args.classes),
        args.batch,
        args.size,
        args.classes,
        device,
        _channels_last(which, args),
    )


def throughput(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    trainers = {}
    for which in ("ours", "timm"):
        torch.manual_seed(0)
        trainers[which] = make_trainer(which, args, device)
        trainers[which].steps(args.warmup)
    rates: dict[str, list[float]] = {"ours": [], "timm": []}
    for r in range(args.rounds):
        order = ("ours", "timm") if r % 2 == 0 else ("timm", "ours")  # alternate who goes first
        for which in order:
            dt = trainers[which].steps(args.steps)
            rates[which].append(args.steps * args.batch / dt)
    return rates


def memory_child(which: str, args: argparse.Namespace) -> None:
    """(subprocess) peak memory of training one model; prints one JSON line."""
    import resource

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = make_trainer(which, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        trainer.steps(3)
        peak = torch.cuda.max_memory_allocated(device)
        print(json.dumps({"peak_mib": peak / 2**20, "delta_mib": (peak - base) / 2**20}))
        return
    trainer.steps(1)  # allocate optimizer state and warm the allocator first
    base = _rss_kib("VmRSS")
    _reset_peak_rss()
    trainer.steps(3)
    peak = (
        _rss_kib("VmHWM")
        if _rss_kib("VmHWM")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    print(json.dumps({"peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024}))


def _rss_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs), so VmHWM afterwards
    is the peak of the training steps alone, not of imports and model building."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(which: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        which,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--classes",
        str(args.classes),
        "--device",
        args.device,
        "--threads",
        str(args.threads or 0),
    ]
    cmd.append("--channels-last" if args.channels_last else "--no-channels-last")
    cmd.append("--timm-nchw" if args.timm_nchw else "--no-timm-nchw")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def profile(args: argparse.Namespace, device: torch.device) -> None:
    """Top operators (self CPU/CUDA time) of 3 training steps, for each model."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for which in ("ours", "timm"):
        trainer = make_trainer(which, args, device)
        trainer.steps(2)
        with torch_profile(activities=acts) as prof:
            trainer.steps(3)
        print(f"\n=== {which}: top operators over 3 steps ===")
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


def main_job(args: argparse.Namespace) -> None:
    """Time the README's main job: `fastvit train` (digits recipe) end to end, in-process."""
    import tempfile

    from fastvit.train import format_summary, recipe_config, train

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = recipe_config(
            "digits", output=str(Path(tmp) / "run"), progress=False, threads=args.threads or None
        )
        result = train(cfg)
        wall = time.perf_counter() - t0
        print(format_summary(result))
    f = result.final
    print(
        f"\nmain job: best val top-1 {result.best_top1:.2f}% (target >= 99%), "
        f"wall time {wall:.1f} s (target <= 120 s), fused val top-1 {f.top1:.2f}%, "
        f"{f.mismatches}/{f.num_val} predictions differ, max |logit diff| "
        f"{f.max_logit_diff:.2e}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fastvit_t8")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="training steps per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig().channels_last,
        help="our model's layout (default: `fastvit train`'s default)",
    )
    p.add_argument(
        "--timm-nchw",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep timm's model in NCHW (default: its channels-last backward "
        "crashes torch on CPU at >= 112 px)",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--main-job", action="store_true", help="also time `fastvit train`")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-child", choices=("ours", "timm"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"{args.model}, batch {args.batch}, {args.size}px, {args.classes} classes, "
        f"{device}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} "
        f"steps (interleaved)"
    )
    rates = throughput(args, device)
    ours, timm_rate = statistics.median(rates["ours"]), statistics.median(rates["timm"])
    print("  per round img/s  ours: " + " ".join(f"{v:.0f}" for v in rates["ours"]))
    print("  per round img/s  timm: " + " ".join(f"{v:.0f}" for v in rates["timm"]))
    per_round = [a / b for a, b in zip(rates["ours"], rates["timm"])]
    print(
        f"training throughput: ours {ours:.1f} img/s, timm {timm_rate:.1f} img/s, "
        f"ratio {ours / timm_rate:.3f} (median of rounds; per-round ratios "
        f"{min(per_round):.2f}..{max(per_round):.2f}; target >= 1.3 with default options)"
    )
    if not args.no_memory:
        mem = {w: peak_memory(w, args) for w in ("ours", "timm")}
        unit = "peak allocated" if device.type == "cuda" else "peak RSS"
        print(
            f"peak memory ({unit}): ours {mem['ours']['peak_mib']:.0f} MiB "
            f"(+{mem['ours']['delta_mib']:.0f} MiB while training), timm "
            f"{mem['timm']['peak_mib']:.0f} MiB (+{mem['timm']['delta_mib']:.0f} MiB); "
            f"ratio of training growth {mem['ours']['delta_mib'] / max(mem['timm']['delta_mib'], 1e-9):.2f}"
        )
    if args.profile:
        profile(args, device)
    if args.main_job:
        main_job(args)


if __name__ == "__main__":
    main()
