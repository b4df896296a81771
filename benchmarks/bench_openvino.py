"""OpenVINO (f32 / bf16 / NNCF int8) against onnxruntime fp32 and timm, side by side in one run.

    python benchmarks/bench_openvino.py speed                 # T8, S12, SA12 at 256 px
    python benchmarks/bench_openvino.py accuracy --checkpoint runs/fastvit_t8_digits/model_reparam.safetensors
    python benchmarks/bench_openvino.py scale                 # latency vs resolution + PNG
    python benchmarks/bench_openvino.py layers                # per-layer counters, f32 vs int8
    python benchmarks/bench_openvino.py keep-f32              # int8 with op kinds left f32

``speed``: every runner (ours in onnxruntime fp32 and OpenVINO f32/bf16/int8 at batch 1;
ours in OpenVINO bf16/int8 and timm's fused model in onnxruntime fp32 at the throughput batch)
and a 2048² sgemm are timed interleaved, each in its own process
(:func:`fastvit.bench.measure.time_isolated`: runtimes sharing a process slow each other
down), so the ratios below are measured under the same load: int8/onnxruntime speed-up, best
runtime / fp32 roofline, batch-32 ours best / timm onnxruntime. ``accuracy``: top-1 of a
digits-trained checkpoint on the digits val split in PyTorch, OpenVINO f32, bf16 and int8, at
its training size and at 256 px.
``scale``: T8 and SA12, our int8 OpenVINO model against timm's eager fused model, 128..1024 px.
``layers``: OpenVINO's per-layer performance counters (``PERF_COUNT``) of the f32 and the int8
model of each variant, summed by what the layer does (1x1 / depthwise / dense conv, GELU and
other eltwise, attention MatMul, reorders...) and the kernel that ran it (``jit_avx2_I8``,
``brgconv_avx512_1x1``, ``ref_*``...): where int8 time goes and what bounds its speed-up.
``keep-f32``: OpenVINO f32 against NNCF int8 with all layers quantized and with the first
conv (the exporter's fallback), the MatMuls, the grouped/depthwise convs or both left f32, interleaved in this process (OpenVINO only).

``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment caps the kernels OpenVINO's oneDNN may pick
(``layers`` and ``keep-f32`` print the cap): on an AVX-512/VNNI CPU it shows what the AVX2
kernels, which have no int8 dot-product instruction, do with the same graph.

The machine is shared: the 1-minute load average is printed with every table (above the core
count, two-thread timings suffer; ratios are still measured side by side).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastvit.bench.core import SGEMM_N, time_runners
from fastvit.bench.runners import RunnerSpec, count_flops, emulated_bf16
from fastvit.host import host_info


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def timed(specs: list[RunnerSpec], args: argparse.Namespace) -> tuple[dict, float]:
    """Median ms per spec key and the sgemm GFLOP/s measured alongside, interleaved: each
    runner in its own process (default; runtimes in one process slow each other down) or
    all in this one (``--in-process``)."""
    print(f"[bench] building {len(specs)} runners + sgemm; {load()}", flush=True)
    at_end = []  # the load when the last round ends (not after the processes' teardown)
    kw = dict(
        warmup=args.warmup,
        rounds=args.rounds,
        round_time=args.round_time,
        on_round=lambda r: at_end.append(load()) if r == args.rounds - 1 else None,
    )
    t = time_runners(specs, threads=args.threads, isolate=not args.in_process, **kw)
    print(f"[bench] timed {len(specs) + 1} runners, {args.rounds} rounds; {at_end[0]}", flush=True)
    gflops = 2.0 * SGEMM_N**3 / (t[-1].median_ms * 1e-3) / 1e9
    return {(s.key, s.size): (t[i].median_ms, t[i].p10_ms) for i, s in enumerate(specs)}, gflops


def speed(args: argparse.Namespace) -> None:
    cache = tempfile.mkdtemp(prefix="bench-ov-")
    ours_b1 = ["onnxruntime", "openvino-f32", "openvino-bf16", "openvino-int8"]
    ours_bt = ["openvino-bf16", "openvino-int8"]
    skip = emulated_bf16("openvino-bf16", host_info())  # no bf16 hardware: it would be f32
    if skip is not None:
        print(skip)
        ours_b1 = [b for b in ours_b1 if b != "openvino-bf16"]
        ours_bt = [b for b in ours_bt if b != "openvino-bf16"]
    print(f"host: {host_info().describe()}")
    specs = []
    for v in args.variants:
        specs += [RunnerSpec(v, be, 1, args.size, "fastvit", args.threads, cache) for be in ours_b1]
        specs += [
            RunnerSpec(v, be, args.batch, args.size, "fastvit", args.threads, cache)
            for be in ours_bt
        ]
        specs.append(
            RunnerSpec(v, "onnxruntime", args.batch, args.size, "timm", args.threads, cache)
        )
    res, gflops = timed(specs, args)
    print(
        f"\n{args.size}x{args.size}, {args.threads} threads, sgemm {gflops:.1f} GFLOP/s "
        f"(roofline = model GFLOP / that rate); {load()} after the processes ended"
    )
    hdr = (
        f"{'variant':<13}{'impl':<8}{'runtime':<15}{'batch':>5}{'median ms':>11}"
        f"{'p10 ms':>9}{'img/s':>9}{'x roofline':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    for v in args.variants:
        gf = {impl: count_flops(v, args.size, impl) / 1e9 for impl in ("fastvit", "timm")}
        for s in (s for s in specs if s.variant == v):
            med, p10 = res[(s.key, s.size)]
            roof = gf[s.impl] * s.batch / gflops * 1e3
            print(
                f"{v:<13}{s.impl:<8}{s.backend:<15}{s.batch:>5}{med:>11.2f}{p10:>9.2f}"
                f"{s.batch / med * 1e3:>9.1f}{med / roof:>11.2f}"
            )
        key = {
            (s.impl, s.backend, s.batch): res[(s.key, s.size)][0] for s in specs if s.variant == v
        }
        ort = key[("fastvit", "onnxruntime", 1)]
        best_be = min(ours_b1, key=lambda b: key[("fastvit", b, 1)])
        best = key[("fastvit", best_be, 1)]
        roof1 = gf["fastvit"] / gflops * 1e3
        best_bt_be = min(ours_bt, key=lambda b: key[("fastvit", b, args.batch)])
        timm_bt = key[("timm", "onnxruntime", args.batch)]
        bf16 = key.get(("fastvit", "openvino-bf16", 1))
        print(
            f"  {v}: int8/onnxruntime-fp32 speed-up {ort / key[('fastvit', 'openvino-int8', 1)]:.2f}x"
            f" (target >= 2.0); bf16 {f'{ort / bf16:.2f}x' if bf16 else 'not timed'}; "
            f"f32 {ort / key[('fastvit', 'openvino-f32', 1)]:.2f}x"
        )
        print(
            f"  {v}: best batch-1 runtime {best_be}: {best / roof1:.2f}x the fp32 roofline "
            f"(target <= 0.8)"
        )
        print(
            f"  {v}: batch {args.batch}: ours {best_bt_be} "
            f"{args.batch / key[('fastvit', best_bt_be, args.batch)] * 1e3:.1f} img/s vs timm "
            f"onnxruntime fp32 {args.batch / timm_bt * 1e3:.1f} img/s = "
            f"{timm_bt / key[('fastvit', best_bt_be, args.batch)]:.2f}x (target >= 1.5)"
        )


def accuracy(args: argparse.Namespace) -> None:
    import fastvit
    from fastvit.card import ModelCard
    from fastvit.data import calibration_images, load_labelled
    from fastvit.export.common import fuse_for_export
    from fastvit.export.openvino import compile_ir, compiled_logits, convert_fused, quantize_int8

    torch.set_num_threads(args.threads)
    fused = fuse_for_export(fastvit.load_model(args.checkpoint))
    train_size = ModelCard.from_model(fused).input_size[-1]
    print(
        f"{args.checkpoint}: {getattr(fused, 'variant', '?')} trained at {train_size}px; "
        f"digits val top-1 (%); {load()}"
    )
    for size in sorted({train_size, args.size}):
        meta = ModelCard.from_model(fused, input_size=size)
        val = load_labelled("digits", meta, split="val")
        calib = calibration_images("digits", meta.preprocessing, limit=args.calib)
        with torch.no_grad():
            ref = np.concatenate(
                [
                    fused(torch.from_numpy(val.images[i : i + 64])).numpy()
                    for i in range(0, len(val.images), 64)
                ]
            )
        ovm = convert_fused(fused, meta)
        outs = {"pytorch fp32": ref}
        outs["openvino f32"] = compiled_logits(
            compile_ir(ovm, "f32", threads=args.threads), val.images
        )
        if host_info().bf16_native:  # elsewhere OpenVINO's bf16 hint runs f32
            outs["openvino bf16"] = compiled_logits(
                compile_ir(ovm, "bf16", threads=args.threads), val.images
            )
        for name, first_f32 in (("openvino int8", False), ("int8, 1st conv f32", True)):
            q = quantize_int8(ovm, calib, first_conv_f32=first_f32)
            outs[name] = compiled_logits(compile_ir(q, "f32", threads=args.threads), val.images)
        a32 = (ref.argmax(1) == val.labels).mean() * 100
        for name, out in outs.items():
            acc = (out.argmax(1) == val.labels).mean() * 100
            agree = (out.argmax(1) == ref.argmax(1)).mean() * 100
            print(
                f"  {size:>4}px {name:<18} top-1 {acc:6.2f}  (drop {a32 - acc:+.2f} points)  "
                f"agreement {agree:6.2f}%  max |diff| {np.abs(out - ref).max():.2e}  "
                f"mean |diff| {np.abs(out - ref).mean() / np.abs(ref).mean():.1%} of mean |logit|"
            )
        print(f"  ({len(val.labels)} val images, int8 calibrated on {len(calib)} train images)")


def scale(args: argparse.Namespace) -> None:
    cache = tempfile.mkdtemp(prefix="bench-ov-scale-")
    specs = []
    for v in ("fastvit_t8", "fastvit_sa12"):
        for px in args.sizes:
            specs.append(RunnerSpec(v, args.best, 1, px, "fastvit", args.threads, cache))
            specs.append(RunnerSpec(v, "eager", 1, px, "timm", args.threads, cache))
    res, _gflops = timed(specs, args)
    print(
        f"\nlatency (median ms, batch 1, {args.threads} threads) vs resolution; {load()} at the end"
    )
    print(
        f"{'variant':<13}{'px':>6}{'ours ' + args.best:>22}{'timm eager':>12}{'ratio':>8}"
        f"{'ours ms/Mpx':>13}{'timm ms/Mpx':>13}"
    )
    rows = []
    for v in ("fastvit_t8", "fastvit_sa12"):
        for px in args.sizes:
            ours = res[(f"fastvit:{v}:{args.best}:b1", px)][0]
            timm = res[(f"timm:{v}:eager:b1", px)][0]
            mpx = px * px / 1e6
            rows.append((v, px, ours, timm))
            print(
                f"{v:<13}{px:>6}{ours:>22.2f}{timm:>12.2f}{timm / ours:>8.2f}"
                f"{ours / mpx:>13.1f}{timm / mpx:>13.1f}"
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastvit.fileio import atomic_path

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for v, style in (("fastvit_t8", "o"), ("fastvit_sa12", "s")):
        r = [x for x in rows if x[0] == v]
        px = [x[1] for x in r]
        for i, (name, ls) in enumerate(((f"ours {args.best}", "-"), ("timm eager", "--"))):
            ms = [x[2 + i] for x in r]
            ax.plot(px, ms, marker=style, linestyle=ls, label=f"{v} {name}")
            ax2.plot(
                px,
                [m / (p * p / 1e6) for m, p in zip(ms, px)],
                marker=style,
                linestyle=ls,
                label=f"{v} {name}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input size (px)")
    ax.set_ylabel("median latency, batch 1 (ms)")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("input size (px)")
    ax2.set_ylabel("ms per megapixel (flat = linear in pixels)")
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"FastViT latency vs resolution, {args.threads} threads ({load()})", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {out}")


def _layer_group(op_type: str, exec_type: str) -> str:
    """A readable class for one executed layer: what it computes."""
    if op_type == "GroupConvolution":
        return "grouped/depthwise conv"
    if op_type == "Convolution":
        return "1x1 conv" if "1x1" in exec_type else "kxk conv"
    if op_type.startswith("FullyConnected") or op_type == "MatMul":
        return "FullyConnected/MatMul"
    return op_type


def latency_config(threads: int) -> dict:
    """OpenVINO CPU settings of the per-layer runs: stored precision (f32 hint: int8 layers
    stay int8, the rest f32), one stream, ``threads`` threads, latency mode."""
    return {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }


def isa_cap() -> str:
    """The oneDNN ISA cap in effect (``ONEDNN_MAX_CPU_ISA``), for the table headers."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"oneDNN kernels capped at {cap} (ONEDNN_MAX_CPU_ISA)" if cap else "no ISA cap"


def layers(args: argparse.Namespace) -> None:
    """Per-layer OpenVINO counters, f32 vs int8, grouped; batch 1 at ``--size``."""
    import collections

    from fastvit.bench.runners import openvino_model

    cache = tempfile.mkdtemp(prefix="bench-ov-layers-")
    print(f"host: {host_info().describe()}; {isa_cap()}; {load()}")
    for v in args.variants:
        totals = {}
        for be in ("openvino-f32", "openvino-int8"):
            import openvino as ov

            spec = RunnerSpec(v, be, 1, args.size, "fastvit", args.threads, cache)
            model = openvino_model(spec)
            compiled = ov.Core().compile_model(
                model, "CPU", {**latency_config(args.threads), "PERF_COUNT": True}
            )
            req = compiled.create_infer_request()
            x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
            for _ in range(args.warmup):
                req.infer({0: x})
            group: collections.Counter = collections.Counter()
            kernels: collections.Counter = collections.Counter()
            n = max(args.rounds * 4, 10)
            for _ in range(n):
                req.infer({0: x})
                for info in req.profiling_info:
                    us = info.real_time.total_seconds() * 1e6
                    if us <= 0:
                        continue
                    g = _layer_group(info.node_type, info.exec_type)
                    group[g] += us / n
                    kernels[(g, info.exec_type)] += us / n
            totals[be] = (group, kernels)
        print(f"\n{v} at {args.size} px, batch 1, {args.threads} threads (ms per inference):")
        f32, i8 = totals["openvino-f32"][0], totals["openvino-int8"][0]
        hdr = f"  {'layer group':<26}{'f32 ms':>9}{'int8 ms':>9}{'int8/f32':>10}"
        print(hdr)
        for g in sorted(set(f32) | set(i8), key=lambda g: -(f32.get(g, 0) + i8.get(g, 0))):
            a, b = f32.get(g, 0.0) / 1e3, i8.get(g, 0.0) / 1e3
            if a + b < 0.01:
                continue
            print(f"  {g:<26}{a:>9.2f}{b:>9.2f}{(b / a if a else float('nan')):>10.2f}")
        sa, sb = sum(f32.values()) / 1e3, sum(i8.values()) / 1e3
        print(f"  {'sum of layers':<26}{sa:>9.2f}{sb:>9.2f}{sb / sa:>10.2f}")
        print(
            "  int8 kernels (ms): "
            + "; ".join(
                f"{g} {k} {us / 1e3:.2f}"
                for (g, k), us in totals["openvino-int8"][1].most_common(8)
            )
        )


def keep_f32(args: argparse.Namespace) -> None:
    """f32 vs int8 vs int8 with op kinds left f32 (NNCF ignored scope), batch 1, in-process."""
    import time

    import openvino as ov

    from fastvit.bench.runners import onnx_path, openvino_model
    from fastvit.data import calibration_images
    from fastvit.export.onnx import read_onnx_metadata
    from fastvit.export.openvino import quantize_int8
    from fastvit.export.quantize import int8_weight_bits

    cache = tempfile.mkdtemp(prefix="bench-ov-keep-")
    bits = int8_weight_bits()
    print(f"host: {host_info().describe()}; {isa_cap()}; int8 weight bits {bits}; {load()}")
    kinds = {  # name: (op types kept f32, first conv kept f32)
        "int8": ((), False),
        "int8, first conv f32": ((), True),
        "int8, MatMul f32": (("MatMul",), False),
        "int8, GroupConvolution f32": (("GroupConvolution",), False),
        "int8, both f32": (("MatMul", "GroupConvolution"), False),
    }
    config = latency_config(args.threads)
    core = ov.Core()
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    for v in args.variants:
        spec = RunnerSpec(v, "openvino-f32", 1, args.size, "fastvit", args.threads, cache)
        f32 = openvino_model(spec)
        card = read_onnx_metadata(onnx_path(spec))
        assert card is not None
        # random weights: calibration only sets the activation ranges, as in `speed`
        calib = calibration_images("digits", card.preprocessing, limit=64)
        models = {"f32": f32}
        for name, (types, first) in kinds.items():
            models[name] = quantize_int8(
                f32.clone(), calib, weight_bits=bits, keep_f32=types, first_conv_f32=first
            )
        compiled = {k: core.compile_model(m, "CPU", config) for k, m in models.items()}
        reqs = {k: c.create_infer_request() for k, c in compiled.items()}
        for r in reqs.values():
            for _ in range(args.warmup):
                r.infer({0: x})
        times: dict[str, list[float]] = {k: [] for k in reqs}
        order = list(reqs)
        for i in range(args.rounds * 2):
            for k in order[i % len(order) :] + order[: i % len(order)]:
                end = time.perf_counter() + args.round_time
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    reqs[k].infer({0: x})
                    times[k].append(time.perf_counter() - t0)
        ref = float(np.median(times["f32"]))
        print(f"\n{v} at {args.size} px, batch 1, {args.threads} threads; {load()}")
        for k, ts in times.items():
            med, p10 = float(np.median(ts)), float(np.percentile(ts, 10))
            print(
                f"  {k:<28}median {med * 1e3:7.2f} ms  p10 {p10 * 1e3:7.2f} ms  f32/this {ref / med:5.2f}x"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "accuracy", "scale", "layers", "keep-f32"))
    p.add_argument("--variants", nargs="+", default=["fastvit_t8", "fastvit_s12", "fastvit_sa12"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="throughput batch (default 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--round-time", type=float, default=0.3)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="time every runner in this process (default: one process each)",
    )
    p.add_argument("--checkpoint", default="runs/fastvit_t8_digits/model_reparam.safetensors")
    p.add_argument(
        "--calib",
        type=int,
        default=300,
        help="int8 calibration images (default 300, as the exporter)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 768, 1024])
    p.add_argument("--best", default="openvino-int8", help="our runtime for `scale`")
    p.add_argument("--out", default="runs/bench/openvino_scale.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sections = {"speed": speed, "accuracy": accuracy, "scale": scale, "layers": layers}
    sections["keep-f32"] = keep_f32
    sections[args.what](args)


if __name__ == "__main__":
    main()
