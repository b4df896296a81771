"""`fastvit eval`: top-1, top-5 (more than 5 classes), loss and img/s of a model on a dataset.

Accepts every checkpoint ``fastvit.load_model`` reads (official/timm/ours, unfused or fused)
and the ``last.pt``/``best.pt`` files of a training run, and ONNX/TorchScript exports (run
as ``fastvit predict`` runs them). Preprocessing (input size, crop,
mean/std) comes from the checkpoint's metadata when it has some, else from the variant.
Without ``--data`` it evaluates on the digits val split.
"""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="model file (.safetensors/.pth), a "
        "training run's last.pt/best.pt, or an exported model (OpenVINO .xml, .onnx, "
        "TorchScript .pt: run with its own runtime and stored preprocessing)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="ImageFolder root (its val/ split is used) or "
        "a folder of class folders (default: the digits val split)",
    )
    p.add_argument("--input-size", type=int, metavar="PX", help="default: from the checkpoint")
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"))
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    p.add_argument("--batch-size", "-b", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: chosen from the CPUs available and the load)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="for a run's .pt: use the EMA weights (default: whichever was best)",
    )
    p.add_argument("--limit-batches", type=int, metavar="N", help="evaluate N batches only")
    p.add_argument("--check-images", choices=("auto", "full", "header", "none"), default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from fastvit.cli.checks import (
        check_crop_pct,
        check_mean_std,
        check_min,
        check_size,
        setup_threads,
        warn_threads,
    )
    from fastvit.train.evaluation import evaluate_checkpoint

    check_size(args.input_size, "--input-size")
    check_mean_std(args.mean, args.std)
    check_crop_pct(args.crop_pct)
    check_min(args.batch_size, "--batch-size", 1)
    check_min(args.workers, "--workers", 0)
    check_min(args.threads, "--threads", 1)
    check_min(args.limit_batches, "--limit-batches", 1)
    if args.input_size is not None:
        from fastvit.models.complexity import check_activation_memory

        check_activation_memory(
            "fastvit_t8", args.input_size, args.batch_size, training=False, device=args.device
        )

    threads = setup_threads(args.threads)
    result = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        input_size=args.input_size,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        mean=args.mean,
        std=args.std,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        use_ema=args.ema,
        limit_batches=args.limit_batches,
        check_images=args.check_images,
    )
    if args.json:
        print(json.dumps(dict(result, threads=threads.threads), indent=2))
        warn_threads("eval", threads, timed=True)
        return 0
    print(
        f"{result['checkpoint']} ({result['variant']}, {result['form']}) on {result['data']}: "
        f"{result['images']} images at {result['input_size']}px, {threads.describe()}"
    )
    top5 = f"  top-5 {result['top5']:.2f}%" if result["top5"] is not None else ""
    print(
        f"  top-1 {result['top1']:.2f}%{top5}  loss {result['loss']:.4f}  "
        f"{result['img_s']:.0f} img/s"
    )
    warn_threads("eval", threads, timed=True)
    return 0
