"""``fastvit bench``: latency, throughput, peak memory and roofline of every backend.

Everything requested (variants x backends x batch sizes, timm's counterparts with
``compare_timm``, and a large sgemm for the roofline) is timed interleaved so ratios are
measured side by side under the same machine load: in one process, or each runner in its own
process (:func:`~fastvit.bench.measure.time_isolated`) when OpenVINO shares the run with
another runtime, whose speed it changes when they share a process.

Roofline: the time the model's FLOPs would take at the measured sgemm rate,
``GFLOP x batch / (sgemm GFLOP/s)`` — a practical lower bound for a dense fp32 CPU run with
the same threads. ``x_roofline`` is measured median latency / roofline.

Every result records the host (:func:`fastvit.host.host_info`: CPU model and ISA features).
bf16 backends on a CPU without bf16 hardware are skipped with a one-line reason, kept in the
result, unless ``allow_emulated`` (``--allow-emulated``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastvit.bench.measure import (
    Timing,
    peak_memory_mb,
    runner_fn,
    sgemm_runner,
    time_interleaved,
    time_isolated,
)
from fastvit.bench.runners import (
    BACKENDS,
    FILE_BACKEND,
    OPENVINO_BACKENDS,
    TIMM_BACKENDS,
    RunnerSpec,
    build_runner,
    count_flops,
    emulated_bf16,
    is_model_file,
)
from fastvit.errors import ConfigError
from fastvit.fileio import atomic_path, write_text_atomic
from fastvit.host import HostInfo, host_info

SGEMM_N = 2048


@dataclass
class BenchRow:
    """One measured configuration."""

    variant: str
    impl: str
    backend: str
    batch: int
    size: int
    threads: int
    median_ms: float
    p90_ms: float
    p10_ms: float
    mean_ms: float
    samples: int
    throughput: float  # images / s at the median latency
    gflop: float  # per image
    gmacs: float  # per image
    roofline_ms: float
    x_roofline: float
    peak_mem_mb: float | None = None


@dataclass
class BenchResult:
    rows: list[BenchRow]
    sgemm_gflops: float
    sgemm_gflops_best: float
    config: dict[str, Any]
    machine: dict[str, Any]
    ratios: list[dict[str, Any]] = field(default_factory=list)
    #: backends not timed and why: ``{"backend": ..., "reason": ...}`` (bf16 without hardware)
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: ``--backend auto``: per (variant, batch), the fastest candidate and why (:func:`pick_auto`)
    auto: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "machine": self.machine,
            "skipped": self.skipped,
            "auto": self.auto,
            "sgemm": {
                "n": SGEMM_N,
                "median_gflops": self.sgemm_gflops,
                "best_gflops": self.sgemm_gflops_best,
            },
            "rows": [asdict(r) for r in self.rows],
            "ratios": self.ratios,
        }


def machine_info(threads: int) -> dict[str, Any]:
    """Where a result was measured: CPU (``host``: model, ISA flags), load and versions."""
    host = host_info()
    return {
        "cpu": host.model,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "platform": platform.platform(),
        "host": host.to_dict(),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


AUTO = "auto"


def auto_backends(host: HostInfo | None = None) -> list[str]:
    """What ``--backend auto`` compares on ``host``: the deployment runtimes installed here.

    onnxruntime fp32 (the portable baseline) and int8; OpenVINO f32 and int8 (when installed),
    and OpenVINO bf16 only on a CPU with bf16 hardware (elsewhere it would time f32 again).
    Eager PyTorch when neither runtime is installed. Nothing is imported to decide.
    """
    from importlib.util import find_spec

    host = host or host_info()
    out = []
    if find_spec("onnxruntime") is not None:
        out += ["onnxruntime", "onnxruntime-int8"]
    if find_spec("openvino") is not None and find_spec("nncf") is not None:
        out += ["openvino-f32", *(["openvino-bf16"] if host.bf16_native else []), "openvino-int8"]
    return out or ["eager"]


def pick_auto(
    rows: Sequence[BenchRow], candidates: Sequence[str], host: HostInfo | None = None
) -> list[dict[str, Any]]:
    """Per (variant, batch) of our rows: the fastest of ``candidates`` (median), its speed-up
    over onnxruntime fp32 (or the slowest candidate) and a one-line reason naming the host.

    Speed only: the models are random, so int8 accuracy is for ``fastvit export --int8``,
    whose gate refuses a model that loses more than ``--max-drop`` points.
    """
    host = host or host_info()
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for r in rows:
        if r.impl == "fastvit" and r.backend in candidates:
            groups.setdefault((r.variant, r.batch), []).append(r)
    out = []
    for (variant, batch), rs in groups.items():
        best = min(rs, key=lambda r: r.median_ms)
        base = next((r for r in rs if r.backend == "onnxruntime"), None) or max(
            rs, key=lambda r: r.median_ms
        )
        others = ", ".join(
            f"{r.backend} {r.median_ms:.2f}" for r in sorted(rs, key=lambda r: r.median_ms)[1:]
        )
        reason = (
            f"auto: {variant} b{batch} -> {best.backend} ({best.median_ms:.2f} ms, "
            f"{base.median_ms / best.median_ms:.2f}x {base.backend}) on {host.label()}"
            + (f"; slower: {others} ms" if others else "")
        )
        out.append(
            {
                "variant": variant,
                "batch": batch,
                "backend": best.backend,
                "median_ms": best.median_ms,
                "baseline": base.backend,
                "speedup": base.median_ms / best.median_ms,
                "reason": reason,
            }
        )
    return out


def run_benchmark(
    variants: Sequence[str],
    *,
    batches: Sequence[int] = (1,),
    size: int = 256,
    backends: Sequence[str] = ("eager",),
    threads: int | None = None,
    compare_timm: bool = False,
    warmup: int = 5,
    rounds: int = 10,
    round_time: float = 0.25,
    memory: bool = True,
    cache_dir: str | Path | None = None,
    isolate: bool | None = None,
    allow_emulated: bool = False,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure every (variant, backend, batch) [and timm's counterpart] interleaved.

    ``isolate`` times each runner in its own process; by default (None) only when OpenVINO
    shares the run with another runtime (:func:`needs_isolation`). bf16 backends on a CPU
    without bf16 hardware are skipped (``result.skipped``) unless ``allow_emulated``.
    ``"auto"`` among ``backends`` stands for :func:`auto_backends` and adds the fastest of
    them to ``result.auto`` (:func:`pick_auto`).
    """
    import tempfile

    log = log or (lambda s: None)
    asked = list(backends)
    auto = auto_backends() if AUTO in backends else []
    if auto:
        backends = list(dict.fromkeys(b for x in backends for b in (auto if x == AUTO else [x])))
        log(f"auto: comparing {', '.join(auto)} on {host_info().label()}")
    for b in backends:
        if b not in BACKENDS:
            raise ConfigError(f"unknown backend {b!r}; use any of {', '.join(BACKENDS)}")
    if not variants:
        raise ConfigError("no variants given; e.g. `fastvit bench fastvit_t8`")
    if any(b < 1 for b in batches) or size < 32 or size % 32:
        raise ConfigError("batch sizes must be >= 1 and --size a multiple of 32 (>= 32)")
    skipped: list[dict[str, str]] = []
    if not allow_emulated:
        for b in dict.fromkeys(backends):
            reason = emulated_bf16(b, host_info())
            if reason is not None:
                skipped.append({"backend": b, "reason": reason})  # (printed under the table)
        backends = [b for b in backends if b not in {s["backend"] for s in skipped}]
        if not backends and not any(is_model_file(v) for v in variants):
            raise ConfigError(
                f"nothing to time: {'; '.join(s['reason'] for s in skipped)}; "
                "pass --allow-emulated to time it anyway"
            )
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fastvit-bench-")
        cache_dir = tmp.name

    specs: list[RunnerSpec] = []
    for v in variants:
        if is_model_file(v):  # an exported model (.xml/.onnx/TorchScript) runs as it is
            specs += [
                RunnerSpec(v, FILE_BACKEND, bs, size, "fastvit", threads, str(cache_dir))
                for bs in batches
            ]
            continue
        for be in backends:
            for bs in batches:
                impls = (
                    ("fastvit", "timm") if compare_timm and be in TIMM_BACKENDS else ("fastvit",)
                )
                specs += [
                    RunnerSpec(v, be, bs, size, impl, threads, str(cache_dir), allow_emulated)
                    for impl in impls
                ]
    try:
        flops = {}
        for s in specs:
            if (s.variant, s.impl) not in flops:
                flops[(s.variant, s.impl)] = count_flops(s.variant, size, s.impl)
        if isolate is None:
            isolate = needs_isolation(specs)
        timings = time_runners(
            specs,
            threads=threads,
            isolate=isolate,
            warmup=warmup,
            rounds=rounds,
            round_time=round_time,
            on_round=lambda r: log(f"round {r + 1}/{rounds}"),
            log=log,
        )
        sg = timings[-1]
        sgemm_flop = 2.0 * SGEMM_N**3
        sgemm_gflops = sgemm_flop / (sg.median_ms * 1e-3) / 1e9
        sgemm_best = sgemm_flop / min(sg.samples) / 1e9
        mem: dict[str, float | None] = {}
        if memory:
            for s in specs:
                log(f"peak memory of {s.key} (child process)")
                mem[s.key] = peak_memory_mb(s, warmup=2)
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows = []
    for s, t in zip(specs, timings):
        gflop = flops[(s.variant, s.impl)] / 1e9
        roof = gflop * s.batch / sgemm_gflops * 1e3
        rows.append(
            BenchRow(
                variant=s.variant,
                impl=s.impl,
                backend=s.backend,
                batch=s.batch,
                size=s.size,
                threads=threads,
                median_ms=t.median_ms,
                p90_ms=t.p90_ms,
                p10_ms=t.p10_ms,
                mean_ms=t.mean_ms,
                samples=len(t.samples),
                throughput=s.batch / (t.median_ms * 1e-3),
                gflop=gflop,
                gmacs=gflop / 2,
                roofline_ms=roof,
                x_roofline=t.median_ms / roof,
                peak_mem_mb=mem.get(s.key),
            )
        )
    config = {
        "variants": list(variants),
        "batches": list(batches),
        "size": size,
        "backends": asked,
        "auto_backends": auto,
        "threads": threads,
        "compare_timm": compare_timm,
        "warmup": warmup,
        "rounds": rounds,
        "round_time": round_time,
        "isolated": bool(isolate),
        "allow_emulated": allow_emulated,
    }
    result = BenchResult(
        rows, sgemm_gflops, sgemm_best, config, machine_info(threads), skipped=skipped
    )
    result.ratios = compute_ratios(rows)
    if auto:
        result.auto = pick_auto(rows, auto)
    return result


def time_runners(
    specs: Sequence[RunnerSpec],
    *,
    threads: int | None,
    isolate: bool,
    log: Callable[[str], None] | None = None,
    **kw: Any,
) -> list[Timing]:
    """Time ``specs`` and the roofline sgemm (last), interleaved: each in its own process
    (``isolate``, :func:`time_isolated`) or all in this one (:func:`time_interleaved`);
    ``kw`` goes to either (warm-up, rounds, round time, ``on_round``)."""
    log = log or (lambda s: None)
    if isolate:
        log(f"building {len(specs)} runners + sgemm, each in its own process")
        builders = [(runner_fn, (s,)) for s in specs]
        return time_isolated([*builders, (sgemm_runner, (SGEMM_N, threads))], **kw)
    fns = []
    for s in specs:
        log(f"building {s.key}")
        fns.append(build_runner(s).fn)
    fns.append(sgemm_runner(SGEMM_N, threads))
    log(f"timing {len(fns)} runners interleaved")
    return time_interleaved(fns, **kw)


def runtime_family(spec: RunnerSpec) -> str:
    """``"openvino"``, ``"onnxruntime"`` or ``"torch"``: the runtime that runs ``spec``."""
    if spec.backend in OPENVINO_BACKENDS or (
        spec.backend == FILE_BACKEND and str(spec.variant).endswith(".xml")
    ):
        return "openvino"
    if spec.backend.startswith("onnxruntime") or (
        spec.backend == FILE_BACKEND and str(spec.variant).endswith(".onnx")
    ):
        return "onnxruntime"
    return "torch"


def needs_isolation(specs: Sequence[RunnerSpec]) -> bool:
    """Whether OpenVINO shares the run with another runtime: then one process per runner.

    OpenVINO's worker threads slow the others down in the same process, even idle (T8,
    onnxruntime fp32: 8.85 ms alone, 9.81 ms next to a compiled OpenVINO model, 12.38 ms when
    the two alternate in blocks), which would overstate OpenVINO's lead.
    """
    families = {runtime_family(s) for s in specs}
    return "openvino" in families and len(families) > 1


def compute_ratios(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """ours/timm latency per backend, and unfused/fused speed-up per implementation."""
    by = {(r.impl, r.variant, r.backend, r.batch): r for r in rows}
    out = []
    for (impl, v, be, bs), r in by.items():
        if impl != "fastvit":
            continue
        t = by.get(("timm", v, be, bs))
        if t is not None:
            out.append(
                {
                    "kind": "fastvit/timm",
                    "variant": v,
                    "backend": be,
                    "batch": bs,
                    "ratio": r.median_ms / t.median_ms,
                    "ratio_p10": r.p10_ms / t.p10_ms,
                }
            )
    for (impl, v, be, bs), r in by.items():
        if be != "unfused":
            continue
        for fused_be in ("eager", "channels_last", "onnxruntime", "compile"):
            f = by.get((impl, v, fused_be, bs))
            if f is not None:
                out.append(
                    {
                        "kind": f"{impl} unfused/{fused_be}",
                        "variant": v,
                        "backend": fused_be,
                        "batch": bs,
                        "ratio": r.median_ms / f.median_ms,
                        "ratio_p10": r.p10_ms / f.p10_ms,
                    }
                )
    return out


def format_table(result: BenchResult) -> str:
    """A plain-text table of all rows plus the ratios."""
    hdr = (
        "variant",
        "impl",
        "backend",
        "batch",
        "median ms",
        "p90 ms",
        "p10 ms",
        "img/s",
        "peak MiB",
        "GMACs",
        "roofline ms",
        "x roofline",
    )
    lines_ = []
    for r in result.rows:
        lines_.append(
            (
                r.variant,
                r.impl,
                r.backend,
                str(r.batch),
                f"{r.median_ms:.2f}",
                f"{r.p90_ms:.2f}",
                f"{r.p10_ms:.2f}",
                f"{r.throughput:.1f}",
                "n/a" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
                f"{r.gmacs:.3f}",
                f"{r.roofline_ms:.2f}",
                f"{r.x_roofline:.2f}",
            )
        )
    widths = [max(len(h), *(len(x[i]) for x in lines_)) for i, h in enumerate(hdr)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*hdr), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*x) for x in lines_]
    c = result.config
    out.append("")
    out += [s["reason"] for s in result.skipped]
    out += [a["reason"] for a in result.auto]
    host = result.machine.get("host")
    if host:
        out.append(f"host: {host['model']}, {host['isa_summary']}")
    load = result.machine.get("load_average")
    if load:
        out.append(
            f"load average at the end: {load[0]:.2f} (1 min) on "
            f"{result.machine['cpu_count']} cores; above the core count timings suffer"
        )
    out.append(
        f"size {c['size']}x{c['size']}, {c['threads']} threads, fp32 sgemm "
        f"(n={SGEMM_N}) {result.sgemm_gflops:.1f} GFLOP/s median "
        f"({result.sgemm_gflops_best:.1f} best), interleaved over {c['rounds']} rounds"
        + (", each runner in its own process" if c.get("isolated") else ", in one process")
    )
    for q in result.ratios:
        out.append(
            f"ratio {q['kind']:<28} {q['variant']:<14} {q['backend']:<16} "
            f"b{q['batch']:<3} {q['ratio']:.3f} (median)  {q['ratio_p10']:.3f} (p10)"
        )
    return "\n".join(out)


def write_json(result: BenchResult, path: str | Path) -> Path:
    """Write the result as JSON (atomically)."""
    return write_text_atomic(path, json.dumps(result.to_dict(), indent=2))


def write_png(result: BenchResult, path: str | Path) -> Path:
    """Latency per image vs GMACs (log scale), one series per (implementation, backend, batch).

    Written atomically; batch sizes are comparable because latency is divided by the batch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    series: dict[tuple[str, str, int], list] = {}
    for r in result.rows:
        series.setdefault((r.impl, r.backend, r.batch), []).append(r)
    for (impl, be, bs), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r.gmacs)
        ax.plot(
            [r.gmacs for r in rs],
            [r.median_ms / r.batch for r in rs],
            marker="o" if impl == "fastvit" else "x",
            linestyle="-" if impl == "fastvit" else "--",
            label=f"{impl} {be} b{bs}",
        )
        for r in rs:
            ax.annotate(
                r.variant.replace("fastvit_", ""),
                (r.gmacs, r.median_ms / r.batch),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("median latency per image (ms) = batch latency / batch")
    ax.set_yscale("log")
    c = result.config
    ax.set_title(f"FastViT CPU latency, {c['size']}px, {c['threads']} threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
