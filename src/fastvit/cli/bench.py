"""`fastvit bench [variants]`: interleaved latency / throughput / memory / roofline table.

Writes ``bench.json`` (with the host's CPU model and ISA flags) and ``bench.png`` (latency
vs GMACs) to ``--out``; bf16 backends on a CPU without bf16 hardware are skipped with a
one-line reason unless ``--allow-emulated``. With ``--mixers``: one attention vs one RepMixer
vs one fused RepMixer ViT block over token counts, written to ``mixers.json`` and
``mixers.png`` (log-log latency and memory vs tokens).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "variants",
        nargs="*",
        default=["fastvit_t8"],
        help="model variants (default: fastvit_t8; 'all' for every variant) or "
        "exported model files (OpenVINO .xml, .onnx, TorchScript .pt: run with "
        "their own runtime and stored precision)",
    )
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--size", type=int, default=256, help="input height/width (default 256)")
    p.add_argument(
        "--backend",
        "--runtimes",
        dest="backend",
        default="eager",
        help="comma-separated: unfused, eager, channels_last, compile, torchscript, "
        "bf16, bf16-compile, onnxruntime, onnxruntime-int8, openvino-f32, "
        "openvino-bf16, openvino-int8, or auto: the deployment runtimes installed here "
        "(bf16 only on a CPU with bf16 hardware), naming the fastest (default eager)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: chosen from the CPUs available and the load)",
    )
    p.add_argument(
        "--compare-timm",
        action="store_true",
        help="also time timm's reparameterized model, interleaved, and print ratios",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up calls per runner (default 5; 1 with --mixers)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds (default 10; 3 with --mixers)",
    )
    p.add_argument(
        "--round-time", type=float, default=0.25, help="seconds per runner per round (default 0.25)"
    )
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="skip peak-memory measurement (one child process per runner)",
    )
    iso = p.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate",
        dest="isolate",
        action="store_const",
        const=True,
        default=None,
        help="time each runner in its own process (default: only when OpenVINO shares the run "
        "with another runtime, which it slows down in the same process)",
    )
    iso.add_argument(
        "--in-process",
        dest="isolate",
        action="store_const",
        const=False,
        help="time every runner in this process",
    )
    p.add_argument(
        "--allow-emulated",
        action="store_true",
        help="time bf16 backends even on a CPU without bf16 hardware (default: skipped with "
        "a one-line reason, recorded in bench.json, since PyTorch would emulate bf16 and "
        "OpenVINO run f32)",
    )
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and bench.png")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument(
        "--mixers",
        action="store_true",
        help="instead of models: latency/peak memory of one attention vs one RepMixer "
        "vs one fused RepMixer ViT block over token counts, batch 1",
    )
    p.add_argument(
        "--mixer-grids",
        default="14,20,28,40,56,80,128",
        help="--mixers: comma-separated token grid sides (default 14..128, i.e. 196..16384 tokens)",
    )
    p.add_argument(
        "--mixer-dim",
        type=int,
        default=192,
        help="--mixers: block width (default 192, ViT-Tiny; heads = dim / 64)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastvit.bench.core import format_table, run_benchmark, write_json, write_png
    from fastvit.cli.checks import (
        check_min,
        check_positive,
        check_size,
        setup_threads,
        warn_threads,
    )
    from fastvit.errors import ConfigError
    from fastvit.fileio import check_writable_target

    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch must be comma-separated integers, got {args.batch!r}") from None
    check_size(args.size)
    check_min(args.rounds, "--rounds", 1)
    check_min(args.warmup, "--warmup", 0)
    check_min(args.threads, "--threads", 1)
    check_positive(args.round_time, "--round-time")
    for b in batches:
        check_min(b, "--batch", 1)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for bench.json and bench.png")
    for name in ("bench.json", "bench.png"):  # checked now, not after the whole benchmark
        if (out / name).is_dir():
            raise ConfigError(
                f"{out / name} is an existing folder; remove it or choose another --out"
            )
        check_writable_target(out / name, overwrite=True)
    threads = setup_threads(args.threads)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    variants = list(args.variants)
    if variants == ["all"]:
        import fastvit

        variants = fastvit.list_models()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    log(threads.describe())

    if args.mixers:
        return _run_mixers(args, threads.threads, log)

    result = run_benchmark(
        variants,
        batches=batches,
        size=args.size,
        backends=backends,
        threads=threads.threads,
        compare_timm=args.compare_timm,
        warmup=5 if args.warmup is None else args.warmup,
        rounds=10 if args.rounds is None else args.rounds,
        round_time=args.round_time,
        memory=not args.no_memory,
        isolate=args.isolate,
        allow_emulated=args.allow_emulated,
        log=log,
    )
    print(format_table(result))
    j = write_json(result, out / "bench.json")
    p = write_png(result, out / "bench.png")
    print(f"wrote {j} and {p}")
    warn_threads("bench", threads, timed=True)
    return 0


def _run_mixers(args: argparse.Namespace, threads: int | None, log) -> int:
    from pathlib import Path

    from fastvit.bench.mixers import (
        format_mixer_table,
        run_mixer_benchmark,
        write_mixer_json,
        write_mixer_png,
    )
    from fastvit.errors import ConfigError

    try:
        grids = [int(g) for g in args.mixer_grids.split(",") if g.strip()]
    except ValueError:
        raise ConfigError(
            f"--mixer-grids must be comma-separated integers, got {args.mixer_grids!r}"
        ) from None
    result = run_mixer_benchmark(
        grids,
        dim=args.mixer_dim,
        num_heads=max(1, args.mixer_dim // 64),
        threads=threads,
        warmup=1 if args.warmup is None else args.warmup,
        rounds=3 if args.rounds is None else args.rounds,
        round_time=args.round_time,
        memory=not args.no_memory,
        log=log,
    )
    print(format_mixer_table(result))
    out = Path(args.out)
    j = write_mixer_json(result, out / "mixers.json")
    p = write_mixer_png(result, out / "mixers.png")
    print(f"wrote {j} and {p}")
    return 0
