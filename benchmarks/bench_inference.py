"""Inference benchmarks behind the issue-4 performance targets (a benchmark, not a test).

Every number is a ratio measured side by side in ONE process: all runners are timed
interleaved (fastvit.bench.measure.time_interleaved: rounds of ~round_time seconds per runner,
rotating order), so load from other processes on a shared machine hits all of them alike.

Sections (``--sections``, default all):

* ``targets``  batch 1, 256x256, fp32: our fused eager model vs timm's reparameterized model
               (T8, S12, SA12, SA24, SA36, MA36; NCHW and channels-last), and unfused -> fused
               in eager for every variant. ``--before SRC`` adds the fused models of another fastvit
               checkout (its ``src`` folder, e.g. a ``git worktree`` of an older commit) with
               the same weights, timed in the same interleaved run: a before/after comparison.
* ``postops``  fused eager with and without the oneDNN post-op kernels (GELU / residual add
               inside the GEMM or conv), and unfused -> fused, every variant.
* ``runtimes`` T8 in every shipped runtime vs the fp32 roofline (GFLOP / sgemm rate).
* ``int8``     T8 trained on the digits train split for a few epochs (64x64), then fp32 vs
               int8 (onnxruntime static, per-channel) vs bf16 (PyTorch) top-1 on the digits
               val split, and speed at 256x256 batch 1.
* ``ortprofile`` per-op-type onnxruntime time of the fp32 and int8 T8 graphs (why int8 is
               not faster at batch 1). Not in the default set.
* ``attention`` ours (and ``--before``) vs timm for T8 and the attention variants (SA12, SA24,
               SA36, MA36): the whole model and its last stage (downsample, RepCPE and attention
               blocks), one call at a time in rotating order; with ``--threads 1`` the time is the
               thread's CPU time, which does not count the time other processes hold the core (a
               shared host's load hardly changes it). Not in the default set.
* ``gelu``     the per-host GELU placement (``prefer_gelu_postop``): ours as this host runs it
               vs ours with the GELU forced into the oneDNN post-op, and timm, for the
               ``targets`` variants, interleaved. Not in the default set.
* ``prepack``  an experiment, not what ships: ours with the weights of the oneDNN GEMMs (FFN
               fc1/fc2, and attention qkv/proj where they run on oneDNN) packed once into
               oneDNN's blocked layout, vs ours as shipped and timm, for the ``targets``
               variants, interleaved. Not in the default set.
* ``int8gelu`` the int8 experiment with GELU replaced by x*sigmoid(1.702x), whose int8 form
               onnxruntime has kernels for (QLinearSigmoid, QLinearMul): speed only, per-op
               split. Not in the default set.

Run: ``.venv/bin/python benchmarks/bench_inference.py --threads 2``

AVX2 kernels on an AVX-512 machine: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2`` in the environment make oneDNN, ATen and MKL run their AVX2 code;
this script then also shows fastvit's per-ISA kernel choices an AVX2-only CPU (the only thing
it changes in fastvit), and says so in its first line.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastvit
from fastvit.bench.measure import Timing, sgemm_runner, time_interleaved
from fastvit.bench.runners import RunnerSpec, build_model, build_runner, count_flops

#: Variants timed against timm (issue 4: T8/S12/SA12; issue 20: the attention variants too).
TARGET_VARIANTS = (
    "fastvit_t8",
    "fastvit_s12",
    "fastvit_sa12",
    "fastvit_sa24",
    "fastvit_sa36",
    "fastvit_ma36",
)
SIZE = 256


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def torch_fn(model: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def report(names: list[str], timings: list[Timing], ref: str | None = None) -> None:
    """Print median/p90/p10 and, if ``ref`` is given, the median and p10 ratios to it.

    On a shared machine the p10 (10th percentile) is the more robust estimate of unloaded
    latency; both ratios are printed.
    """
    base = dict(zip(names, timings))[ref] if ref else None
    for n, t in zip(names, timings):
        ratio = (
            (
                f"  x{t.median_ms / base.median_ms:.3f} (median) x{t.p10_ms / base.p10_ms:.3f} "
                f"(p10) vs {ref}"
            )
            if base
            else ""
        )
        print(
            f"  {n:<44} median {t.median_ms:8.2f}  p90 {t.p90_ms:8.2f}  p10 {t.p10_ms:7.2f} ms"
            f"  n={len(t.samples):<4}{ratio}"
        )


def time_and_report(
    args: argparse.Namespace, names: list[str], fns: list[Callable[[], object]]
) -> dict[str, Timing]:
    """Time ``fns`` interleaved (``--warmup``, ``--rounds``, ``--round-time``), print the
    table, and return each runner's timing by name."""
    timings = time_interleaved(
        fns, warmup=args.warmup, rounds=args.rounds, round_time=args.round_time
    )
    report(names, timings)
    return dict(zip(names, timings))


# --------------------------------------------------------------------------- post-ops


class PostOpsSwitch:
    """Turn the fused models' oneDNN post-op kernels (:mod:`fastvit.layers.inference.kernels`)
    on or off per call, so both paths can be timed interleaved in one process."""

    def __init__(self) -> None:
        from fastvit.layers.inference import kernels

        self._mod = kernels
        self._real = kernels.kernels_available

    def fn(self, model: Callable, x: torch.Tensor, on: bool) -> Callable[[], object]:
        def run() -> object:
            self._mod.kernels_available = self._real if on else (lambda: False)
            with torch.inference_mode():
                return model(x)

        return run


def section_postops(args: argparse.Namespace) -> None:
    """Effect of the oneDNN post-op fusion (GELU / residual add inside the GEMM or conv) on
    fused eager latency and on the unfused -> fused speed-up, every variant."""
    print(
        f"\n== postops: fused eager with / without the oneDNN post-op kernels (batch 1, "
        f"{SIZE}px, fp32, {args.threads} threads) =="
    )
    x = torch.randn(1, 3, SIZE, SIZE)
    switch = PostOpsSwitch()
    names, fns = [], []
    for v in fastvit.list_models():
        unfused = build_model(v, "fastvit", fused=False)
        fused = build_model(v, "fastvit", fused=True)
        for name, m, on in (
            ("unfused", unfused, True),
            ("fused, post-ops off", fused, False),
            ("fused", fused, True),
        ):
            names.append(f"{v} | {name}")
            fns.append(switch.fn(m, x, on))
    t = time_and_report(args, names, fns)
    for stat in ("median_ms", "p10_ms"):
        print(f"\n [{stat[:-3]}] unfused / fused (target 3, goal >= 1.5) and the post-ops' share")
        for v in fastvit.list_models():
            un, off, on = (
                getattr(t[f"{v} | {n}"], stat) for n in ("unfused", "fused, post-ops off", "fused")
            )
            print(
                f"  {v:<14} unfused/fused {un / on:.2f}x  (post-ops off: {un / off:.2f}x)   "
                f"fused {on:.2f} ms vs {off:.2f} ms without post-ops: x{on / off:.3f}"
            )


# --------------------------------------------------------------------------- gelu, prepack


def _patched_run(
    model: nn.Module, x: torch.Tensor, target: object, name: str, value: object = None
) -> Callable[[], object]:
    """A runner for ``model(x)`` in inference mode with ``target.name`` set to ``value`` for
    the call (None: left as it is)."""
    real = getattr(target, name)

    def run() -> object:
        if value is not None:
            setattr(target, name, value)
        try:
            with torch.inference_mode():
                return model(x)
        finally:
            setattr(target, name, real)

    return run


def _ours_two_ways(
    args: argparse.Namespace,
    runners: dict[str, tuple[Callable[[], object], Callable[[], object], Callable[[], object]]],
    way_a: str,
    way_b: str,
) -> None:
    """Time timm and ours two ways per variant (``runners[v] = (timm, a, b)``), interleaved,
    and print ours / timm each way and b / a."""
    names, fns = [], []
    for v, fns_v in runners.items():
        for label, fn in zip(("timm", way_a, way_b), fns_v):
            names.append(f"{v} | {label}")
            fns.append(fn)
    t = time_and_report(args, names, fns)
    for stat in ("median_ms", "p10_ms"):
        print(f"\n [{stat[:-3]}] ours / timm, {way_a} | {way_b}")
        for v in runners:
            timm_ms, ms_a, ms_b = (getattr(t[f"{v} | {n}"], stat) for n in ("timm", way_a, way_b))
            print(
                f"  {v:<14} {way_a} {ms_a / timm_ms:.3f}   {way_b} {ms_b / timm_ms:.3f}   "
                f"{way_b} / {way_a} x{ms_b / ms_a:.3f}   (timm {timm_ms:.2f} ms, "
                f"{ms_a:.2f} / {ms_b:.2f} ms)"
            )


def section_gelu(args: argparse.Namespace) -> None:
    """Where the exact GELU runs (oneDNN post-op, or ATen in place after the GEMM/conv): ours
    as this host runs it vs the post-op forced, both against timm, interleaved."""
    from fastvit.layers.inference import kernels

    host_choice = kernels.prefer_gelu_postop()
    print(
        f"\n== gelu: fused eager, batch 1, {SIZE}px, fp32, {args.threads} threads; this host "
        f"runs the GELU {'as the post-op' if host_choice else 'in place after the GEMM/conv'} =="
    )
    x = torch.randn(1, 3, SIZE, SIZE)
    runners = {}
    for v in TARGET_VARIANTS:
        ours = build_model(v, "fastvit", fused=True)
        runners[v] = tuple(
            _patched_run(m, x, kernels, "prefer_gelu_postop", choice)
            for m, choice in (
                (build_model(v, "timm", fused=True), None),
                (ours, lambda host=None: True),
                (ours, lambda host=None: False),
            )
        )
    _ours_two_ways(args, runners, "post-op", "in place")


class _PrepackedTorch:
    """``torch`` as :mod:`fastvit.layers.inference.kernels` sees it, except that its oneDNN
    GEMMs (``torch.ops.mkldnn._linear_pointwise`` and ``.binary``) read the prepacked copy of a
    weight where ``packed`` has one (keyed by the weight's data pointer: the weights do not
    change during the benchmark)."""

    def __init__(self, packed: dict[int, torch.Tensor]) -> None:
        lin = torch.ops.mkldnn._linear_pointwise

        def unary(x, w, *rest):
            return lin(x, packed.get(w.data_ptr(), w), *rest)

        def binary(x, other, w, *rest):
            return lin.binary(x, other, packed.get(w.data_ptr(), w), *rest)

        unary.binary = binary  # type: ignore[attr-defined]
        mkldnn = type(
            "mkldnn",
            (),
            {
                "_linear_pointwise": staticmethod(unary),
                "_convolution_pointwise": torch.ops.mkldnn._convolution_pointwise,
            },
        )
        self.ops = type("ops", (), {"mkldnn": mkldnn, "aten": torch.ops.aten})

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


def section_prepack(args: argparse.Namespace) -> None:
    """What prepacking the GEMM weights into oneDNN's blocked layout would gain (an experiment:
    a packed copy goes stale if the weights change in a way PyTorch does not track, such as
    ``.data`` writes, so fastvit does not ship it)."""
    from fastvit.layers.inference import FusedConvFFN, FusedLinear, kernels

    print(
        f"\n== prepack (experiment): fused eager, batch 1, {SIZE}px, fp32, {args.threads} "
        "threads; oneDNN GEMM weights as they are vs packed once =="
    )
    x = torch.randn(1, 3, SIZE, SIZE)
    runners = {}
    for v in TARGET_VARIANTS:
        ours = build_model(v, "fastvit", fused=True)
        weights = [m.weight for m in ours.modules() if isinstance(m, FusedLinear)]
        for m in ours.modules():
            if isinstance(m, FusedConvFFN):
                weights += [m.fc1.weight, m.fc2.weight]
        with torch.no_grad():
            packed = {
                w.data_ptr(): torch.ops.mkldnn._reorder_linear_weight(w.detach().flatten(1))
                for w in weights
            }
        shim = _PrepackedTorch(packed)
        plain, prepacked = (_patched_run(ours, x, kernels, "torch", sh) for sh in (None, shim))
        same = torch.equal(plain(), prepacked())
        log(f"{v}: {len(packed)} weights packed; outputs {'identical' if same else 'DIFFER'}")
        runners[v] = (
            _patched_run(build_model(v, "timm", fused=True), x, kernels, "torch"),
            plain,
            prepacked,
        )
    _ours_two_ways(args, runners, "shipped", "prepacked")


# --------------------------------------------------------------------------- targets


def fused_models_from(src: str, variants: tuple[str, ...]) -> dict[str, nn.Module]:
    """Fused eval-mode models of ``variants`` built by the fastvit package in ``src`` (another
    checkout), holding the weights of this checkout's fused models.

    That package is imported under the name ``fastvit`` and then taken out of ``sys.modules``
    again (its modules stay alive through the models' references), so both versions run in
    this one process and can be timed interleaved.
    """
    ours = {v: build_model(v, "fastvit", fused=True).state_dict() for v in variants}
    mine = {k: m for k, m in sys.modules.items() if k == "fastvit" or k.startswith("fastvit.")}
    for k in mine:
        del sys.modules[k]
    sys.path.insert(0, src)
    try:
        import fastvit as other

        if Path(other.__file__).resolve().parents[1] != Path(src).resolve():
            raise SystemExit(f"--before {src}: no fastvit package there")
        models = {}
        for v in variants:
            m = other.create_model(v, inference_mode=True).eval()
            m.load_state_dict(ours[v], strict=True)
            models[v] = m
    finally:
        sys.path.remove(src)
        for k in [k for k in sys.modules if k == "fastvit" or k.startswith("fastvit.")]:
            del sys.modules[k]
        sys.modules.update(mine)
    return models


def section_targets(args: argparse.Namespace) -> None:
    print(f"\n== targets: batch 1, {SIZE}px, fp32, {args.threads} threads, all interleaved ==")
    before_fns: dict[str, Callable[[], object]] = {}
    if args.before:
        log(f"building the fused models of {args.before}")
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100003 + SIZE))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for v, m in fused_models_from(args.before, TARGET_VARIANTS).items():
            before_fns[f"before:{v}:eager:b1"] = torch_fn(m, x)
            before_fns[f"before:{v}:channels_last:b1"] = torch_fn(
                m.to(memory_format=torch.channels_last), x_cl
            )
    specs: list[RunnerSpec] = []
    for v in TARGET_VARIANTS:
        for impl, backend in (
            ("timm", "eager"),
            ("timm", "channels_last"),
            ("fastvit", "eager"),
            ("fastvit", "channels_last"),
        ):
            specs.append(RunnerSpec(v, backend, 1, SIZE, impl, args.threads))
    every = args.variants.split(",") if args.variants else fastvit.list_models()
    for v in every:
        specs.append(RunnerSpec(v, "unfused", 1, SIZE, "fastvit", args.threads))
        if v not in TARGET_VARIANTS:
            specs.append(RunnerSpec(v, "eager", 1, SIZE, "fastvit", args.threads))
            specs.append(RunnerSpec(v, "channels_last", 1, SIZE, "fastvit", args.threads))
    fns = []
    for s in specs:
        log(f"building {s.key}")
        fns.append(build_runner(s).fn)
    keys = [s.key for s in specs] + list(before_fns)
    fns += list(before_fns.values())
    log(f"timing {len(fns)} runners, {args.rounds} rounds")
    t = time_and_report(args, keys, fns)
    for stat in ("median_ms", "p10_ms"):

        def ms(key: str, stat: str = stat) -> float:
            return getattr(t[key], stat)

        print(f"\n target 1 [{stat[:-3]}]: ours fused eager / timm fused eager  (goal <= 0.80)")
        for v in TARGET_VARIANTS:
            timm_nchw, timm_cl = ms(f"timm:{v}:eager:b1"), ms(f"timm:{v}:channels_last:b1")
            ours, ours_cl = ms(f"fastvit:{v}:eager:b1"), ms(f"fastvit:{v}:channels_last:b1")
            print(
                f"  {v:<14} NCHW/NCHW {ours / timm_nchw:.3f}   ours-cl/timm-NCHW "
                f"{ours_cl / timm_nchw:.3f}   cl/cl {ours_cl / timm_cl:.3f}   "
                f"(timm {timm_nchw:.2f} ms, ours {ours:.2f} ms, ours cl {ours_cl:.2f} ms)"
            )
        if before_fns:
            print(
                f"\n before/after [{stat[:-3]}]: fused eager / timm fused eager NCHW, "
                f"{args.before} vs this checkout (same weights, same run)"
            )
            for v in TARGET_VARIANTS:
                timm_nchw = ms(f"timm:{v}:eager:b1")
                cells = []
                for backend in ("eager", "channels_last"):
                    b, a = ms(f"before:{v}:{backend}:b1"), ms(f"fastvit:{v}:{backend}:b1")
                    cells.append(
                        f"{backend} before {b / timm_nchw:.3f} after {a / timm_nchw:.3f}"
                        f" (after/before x{a / b:.3f})"
                    )
                print(f"  {v:<14} " + "   ".join(cells))
        print(f"\n target 3 [{stat[:-3]}]: unfused eager / fused eager  (goal >= 1.5)")
        for v in every:
            un = ms(f"fastvit:{v}:unfused:b1")
            fe, fc = ms(f"fastvit:{v}:eager:b1"), ms(f"fastvit:{v}:channels_last:b1")
            print(
                f"  {v:<14} NCHW {un / fe:.2f}x   (channels_last fused: {un / fc:.2f}x)  "
                f"unfused {un:.2f} ms, fused {fe:.2f} ms, fused cl {fc:.2f} ms"
            )


# --------------------------------------------------------------------------- attention

ATTENTION_VARIANTS = ("fastvit_t8", "fastvit_sa12", "fastvit_sa24", "fastvit_sa36", "fastvit_ma36")


def _last_stage(model: nn.Module, impl: str, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The last stage of a fused model (ours: downsample, RepCPE, blocks) and its input."""
    with torch.inference_mode():
        if impl == "timm":
            x = model.stem(x)
            for stage in model.stages[:-1]:
                x = stage(x)
            return model.stages[-1], x
        n = 3 if "Attention" in type(model.network[-1][0]).__name__ else 2  # (+ RepCPE)
        x = model.patch_embed(x)
        for m in model.network[:-n]:
            x = m(x)
        return nn.Sequential(*model.network[-n:]), x


def section_attention(args: argparse.Namespace) -> None:
    """Ours (and ``--before``) vs timm, whole model and last stage, load-robust at 1 thread."""
    cpu = args.threads == 1
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    print(
        f"\n== attention: batch 1, {SIZE}px, fp32, {args.threads} thread(s), "
        f"{'thread CPU time' if cpu else 'wall time'} per call, min (p25) over "
        f"{args.rounds * 4} rotating rounds =="
    )
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100003 + SIZE))
    before = fused_models_from(args.before, ATTENTION_VARIANTS) if args.before else {}
    impls = ["timm", "fastvit"] + (["before"] if before else [])
    runs: list[tuple[str, str, str, nn.Module, torch.Tensor]] = []
    for v in ATTENTION_VARIANTS:
        for impl in impls:
            m = (before[v] if impl == "before" else build_model(v, impl, fused=True)).eval()
            stage, xs = _last_stage(m, "timm" if impl == "timm" else "fastvit", x)
            runs += [(v, impl, "model", m, x), (v, impl, "last stage", stage, xs)]
    samples: dict[tuple[str, str, str], list[float]] = {r[:3]: [] for r in runs}
    with torch.inference_mode():
        for *_, m, xi in runs:
            m(xi)
            m(xi)
        for r in range(args.rounds * 4):
            for v, impl, part, m, xi in runs if r % 2 == 0 else runs[::-1]:
                t0 = clock()
                m(xi)
                samples[(v, impl, part)].append((clock() - t0) / 1e6)

    def stat(key: tuple[str, str, str]) -> tuple[float, float]:
        s = sorted(samples[key])
        return s[0], s[len(s) // 4]

    for part in ("model", "last stage"):
        print(f"\n [{part}] ms min (p25); ours / timm (goal <= 0.80)")
        for v in ATTENTION_VARIANTS:
            t = stat((v, "timm", part))
            cells = [f"timm {t[0]:7.2f} ({t[1]:7.2f})"]
            for impl in impls[1:]:
                o = stat((v, impl, part))
                name = "ours" if impl == "fastvit" else impl
                cells.append(
                    f"{name} {o[0]:7.2f} ({o[1]:7.2f}) = x{o[0] / t[0]:.3f} (x{o[1] / t[1]:.3f})"
                )
            print(f"  {v:<14} " + "   ".join(cells))
    if before:
        print(f"\n ours / before ({args.before}), min (p25)")
        for v in ATTENTION_VARIANTS:
            cells = []
            for part in ("model", "last stage"):
                a, b = stat((v, "fastvit", part)), stat((v, "before", part))
                cells.append(f"{part} x{a[0] / b[0]:.3f} (x{a[1] / b[1]:.3f})")
            print(f"  {v:<14} " + "   ".join(cells))


# --------------------------------------------------------------------------- runtimes


def section_runtimes(args: argparse.Namespace) -> None:
    print(
        f"\n== runtimes: fastvit_t8, batch 1, {SIZE}px, {args.threads} threads, vs fp32 roofline =="
    )
    v = "fastvit_t8"
    gflop = count_flops(v, SIZE) / 1e9
    with tempfile.TemporaryDirectory() as cache:
        specs = [
            RunnerSpec(v, b, 1, SIZE, "fastvit", args.threads, cache)
            for b in (
                "eager",
                "channels_last",
                "torchscript",
                "compile",
                "bf16",
                "bf16-compile",
                "onnxruntime",
                "onnxruntime-int8",
            )
        ]
        specs.append(RunnerSpec(v, "onnxruntime", 1, SIZE, "timm", args.threads, cache))
        fns, names = [], []
        for s in specs:
            log(f"building {s.key}")
            t0 = time.perf_counter()
            r = build_runner(s)
            r.fn()  # compile happens on the first call
            log(f"  ready in {time.perf_counter() - t0:.1f} s")
            fns.append(r.fn)
            names.append(s.key)
        fns.append(sgemm_runner(2048, args.threads))
        names.append("sgemm n=2048")
        timings = time_interleaved(
            fns, warmup=args.warmup, rounds=args.rounds, round_time=args.round_time
        )
    report(names, timings)
    sg = timings[-1]
    for stat in ("median_ms", "p10_ms"):
        rate = 2 * 2048**3 / (getattr(sg, stat) * 1e-3) / 1e9
        roof = gflop / rate * 1e3
        print(
            f"\n  [{stat[:-3]}] sgemm {rate:.1f} GFLOP/s -> T8 roofline {gflop:.3f} GFLOP / "
            f"rate = {roof:.2f} ms"
        )
        print(
            f"  target 2 [{stat[:-3]}]: shipped runtime / fp32 roofline  (goal <= 1.5 for the best)"
        )
        for n, tm in zip(names[:-1], timings[:-1]):
            v_ms = getattr(tm, stat)
            print(f"    {n:<48} {v_ms:7.2f} ms  x{v_ms / roof:.2f} roofline")


# --------------------------------------------------------------------------- int8 / bf16


def train_digits_t8(epochs: int, size: int, threads: int = 1) -> tuple[nn.Module, float]:
    """FastViT-T8 trained on the digits train split (AdamW, cosine, label smoothing)."""
    from timm.scheduler import CosineLRScheduler

    from fastvit.data import load_labelled

    torch.manual_seed(0)
    model = fastvit.create_model("fastvit_t8", num_classes=10)
    model.preprocessing = model.preprocessing.replace(input_size=(3, size, size), crop_pct=1.0)
    train = load_labelled("digits", model.card, split="train")
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    bs = 64
    steps = epochs * (len(y_all) // bs)
    sched = CosineLRScheduler(
        opt, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=1e-4, t_in_epochs=False
    )  # stepped per optimizer update
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step = 0
    model.train()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    for ep in range(epochs):
        perm = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i : i + bs]
            xb = x_all[idx]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # tiny translation aug
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y_all[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
        log(f"epoch {ep + 1}/{epochs} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    torch.set_num_threads(before)
    model.eval()
    model.class_names = [str(i) for i in range(10)]
    return model, time.perf_counter() - t0


def section_int8(args: argparse.Namespace) -> None:
    from fastvit.data import calibration_images, load_labelled
    from fastvit.export import export_onnx, ort_session, quantize_onnx, to_bf16
    from fastvit.export.quantize import bf16_supported, onnx_top1, torch_top1

    size = args.train_size
    print(
        f"\n== int8 / bf16: fastvit_t8 trained on digits ({args.epochs} epochs at "
        f"{size}px, {args.threads} threads) =="
    )
    # training runs on one thread: on a shared machine two-thread training steps can stall
    model, secs = train_digits_t8(args.epochs, size, threads=1)
    fused = fastvit.reparameterize(model)
    meta = fused.card
    val = load_labelled("digits", meta)
    calib = calibration_images("digits", meta.preprocessing, limit=args.calibration)
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "t8.onnx"
        rep = export_onnx(fused, fp32)
        log(rep.summary().splitlines()[1])
        results = {}
        for fmt in ("qdq", "qoperator"):
            for method in ("minmax", "percentile"):
                q = Path(d) / f"t8_{fmt}_{method}.onnx"
                quantize_onnx(
                    fp32,
                    q,
                    [calib[i : i + 32] for i in range(0, len(calib), 32)],
                    quant_format=fmt,
                    method=method,
                    quantize_depthwise=True,
                )
                results[(fmt, method)] = q
        a32 = onnx_top1(fp32, val, threads=args.threads)
        a_torch = torch_top1(fused, val)
        print(
            f"  train time {secs:.0f} s; val images {len(val.labels)}; "
            f"calibration images {len(calib)} (train split)"
        )
        print(f"  top-1 fp32 PyTorch {a_torch:.2f}%   fp32 onnxruntime {a32:.2f}%")
        for (fmt, method), q in results.items():
            a8 = onnx_top1(q, val, threads=args.threads)
            print(f"  top-1 int8 {fmt:<9} {method:<10} {a8:.2f}%  (delta {a8 - a32:+.2f} points)")
        if bf16_supported():
            ab = torch_top1(to_bf16(fused), val, dtype=torch.bfloat16)
            print(f"  top-1 bf16 PyTorch {ab:.2f}%  (delta {ab - a_torch:+.2f} points vs fp32)")

        # speed: the same trained weights at 256x256 and at the training size, batch 1
        for sz in (SIZE, size):
            fp32_s = Path(d) / f"t8_{sz}.onnx"
            m_sz = copy.deepcopy(fused)
            export_onnx(m_sz, fp32_s, input_size=sz, verify=False)
            meta_sz = meta.with_input_size(sz)
            cal_sz = calibration_images("digits", meta_sz.preprocessing, limit=32)
            q_sz = quantize_onnx(
                fp32_s,
                Path(d) / f"t8_{sz}_int8.onnx",
                [cal_sz[:16], cal_sz[16:]],
                quantize_depthwise=True,
            )
            q_pw = quantize_onnx(
                fp32_s,
                Path(d) / f"t8_{sz}_int8_pw.onnx",
                [cal_sz[:16], cal_sz[16:]],
                quantize_depthwise=False,
            )
            x = np.random.default_rng(0).standard_normal((1, 3, sz, sz)).astype(np.float32)
            names, fns = [], []
            for name, p in (
                ("onnxruntime fp32", fp32_s),
                ("onnxruntime int8 (all convs)", q_sz),
                ("onnxruntime int8 (depthwise fp32)", q_pw),
            ):
                s = ort_session(p, threads=args.threads)
                names.append(name)
                fns.append(lambda s=s, x=x: s.run(None, {"input": x}))
            xt = torch.from_numpy(x)
            names.append("torch fp32 eager channels_last")
            fns.append(
                torch_fn(
                    copy.deepcopy(fused).to(memory_format=torch.channels_last),
                    xt.contiguous(memory_format=torch.channels_last),
                )
            )
            if bf16_supported():
                names.append("torch bf16 eager channels_last")
                fns.append(
                    torch_fn(
                        to_bf16(fused),
                        xt.to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
                    )
                )
            timings = time_interleaved(
                fns, warmup=args.warmup, rounds=args.rounds, round_time=args.round_time
            )
            print(f"  speed at {sz}x{sz}, batch 1:")
            report(names, timings, ref="onnxruntime fp32")
            print(
                f"  target 4: int8 speed-up over fp32 onnxruntime (goal >= 1.5): "
                f"{timings[0].median_ms / timings[1].median_ms:.2f}x (median), "
                f"{timings[0].p10_ms / timings[1].p10_ms:.2f}x (p10)"
            )


def ort_op_profile(path: Path, threads: int, runs: int, prefix: Path) -> dict[str, float]:
    """Per-op-type time (ms): onnxruntime's node profile, median over runs per node, summed."""
    import json
    from collections import defaultdict

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"] / 1e3)
            name = e["name"].lower()
            depthwise = any(
                k in name
                for k in (
                    "token_mixer",
                    "convffn/conv/",
                    "lkb",
                    "patch_embed.1",
                    "pos_emb",
                    "conv_exp/reparam",
                )
            )
            op_of[e["name"]] = e["args"]["op_name"] + (
                " (depthwise/grouped)" if depthwise and "Conv" in e["args"]["op_name"] else ""
            )
    agg: dict[str, float] = defaultdict(float)
    for node, durs in per_node.items():
        agg[op_of[node]] += float(np.median(durs[runs // 4 :]))  # skip the first runs
    return dict(sorted(agg.items(), key=lambda kv: -kv[1]))


def section_ortprofile(args: argparse.Namespace) -> None:
    """Why int8 is not faster: per-op time of the fp32 and int8 T8 graphs in onnxruntime."""
    from fastvit.data import calibration_images
    from fastvit.export import export_onnx, quantize_onnx

    print(
        f"\n== ortprofile: fastvit_t8 {SIZE}px batch 1, {args.threads} threads, per-op time "
        "(median per node over runs, summed per op type) =="
    )
    model = build_model("fastvit_t8", "fastvit", fused=True)
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "t8.onnx"
        export_onnx(model, fp32, verify=False)
        calib = calibration_images("digits", model.card.preprocessing, limit=32)
        paths = {"fp32": fp32}
        paths["int8 (all convs but grouped)"] = quantize_onnx(
            fp32, Path(d) / "q.onnx", [calib[:16], calib[16:]]
        )
        paths["int8 (depthwise fp32)"] = quantize_onnx(
            fp32, Path(d) / "q_pw.onnx", [calib[:16], calib[16:]], quantize_depthwise=False
        )
        for name, p in paths.items():
            prof = ort_op_profile(p, args.threads, 40, Path(d) / "prof")
            print(f"  {name}: total {sum(prof.values()):.2f} ms")
            for op, ms in list(prof.items())[:9]:
                print(f"    {op:<42} {ms:6.2f} ms")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation that int8 onnxruntime can run as
    QLinearSigmoid (a lookup table) + QLinearMul. NOT the model's function: an experiment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def section_int8gelu(args: argparse.Namespace) -> None:
    """Could int8 reach 1.5x if GELU had int8 kernels? Swap GELU for x*sigmoid(1.702x) and
    quantize the whole chain (Conv, Sigmoid, Mul, Add) so no DQ/Q pair is left around it."""

    import fastvit.export.quantize as quant
    from fastvit.card import ModelCard
    from fastvit.data import calibration_images
    from fastvit.export.onnx import onnx_proto, ort_session, save_proto

    print(f"\n== int8gelu: fastvit_t8 {SIZE}px batch 1, {args.threads} threads, onnxruntime ==")
    base = build_model("fastvit_t8", "fastvit", fused=True)
    quick = copy.deepcopy(base)
    for parent in list(quick.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GELU):
                setattr(parent, name, QuickGELU())
    meta = ModelCard.from_model(base, input_size=SIZE)
    calib = calibration_images("digits", meta.preprocessing, limit=32)
    batches = [calib[i : i + 8] for i in range(0, 32, 8)]

    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for tag, m in (("gelu", base), ("quick", quick)):
            paths[f"{tag} fp32"] = Path(d) / f"{tag}.onnx"
            save_proto(onnx_proto(m, meta), paths[f"{tag} fp32"])
        paths["gelu int8 (shipped)"] = quant.quantize_onnx(
            paths["gelu fp32"], Path(d) / "gelu_int8.onnx", batches
        )
        real_preopt = quant._ort_optimize
        # basic pre-optimization keeps Sigmoid/Mul apart (extended fuses them to QuickGelu)
        quant._ort_optimize = functools.partial(real_preopt, level="basic")
        try:
            paths["quick int8, whole chain"] = quant.quantize_onnx(
                paths["quick fp32"],
                Path(d) / "quick_int8.onnx",
                batches,
                op_types=("Conv", "Gemm", "MatMul", "Sigmoid", "Mul", "Add"),
            )
        finally:
            quant._ort_optimize = real_preopt
        x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
        fns, names = [], []
        for n, p in paths.items():
            sess = ort_session(p, threads=args.threads)
            feed = {sess.get_inputs()[0].name: x}
            fns.append(lambda s=sess, f=feed: s.run(None, f))
            names.append(n)
        timings = time_interleaved(
            fns, warmup=args.warmup, rounds=args.rounds, round_time=args.round_time
        )
        report(names, timings, ref="gelu fp32")
        for n in ("gelu int8 (shipped)", "quick int8, whole chain"):
            print(
                f"  {n}: int8 speed-up over fp32 onnxruntime (goal >= 1.5): "
                f"{timings[0].median_ms / timings[names.index(n)].median_ms:.2f}x (median)"
            )
        for n in ("gelu fp32", "quick int8, whole chain"):
            prof = ort_op_profile(paths[n], args.threads, 40, Path(d) / "prof")
            print(
                f"  {n} per op type: total {sum(prof.values()):.2f} ms: "
                + ", ".join(f"{op} {ms:.2f}" for op, ms in list(prof.items())[:7])
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="targets,postops,runtimes,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--variants",
        help="targets: variants for the unfused -> fused part (comma-separated; default all)",
    )
    p.add_argument(
        "--before",
        metavar="SRC",
        help="targets, attention: also time the fused models of the "
        "fastvit package in SRC (another checkout's src folder), interleaved",
    )
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--round-time", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6, help="digits training epochs (int8)")
    p.add_argument("--train-size", type=int, default=64, help="digits training resolution")
    p.add_argument("--calibration", type=int, default=256, help="int8 calibration images")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(
        f"torch {torch.__version__}, {args.threads} threads, rounds {args.rounds} x "
        f"{args.round_time}s per runner; {isa_view()}"
    )
    for sec in args.sections.split(","):
        print(f"\n(load average before {sec}: {load()})")
        {
            "targets": section_targets,
            "postops": section_postops,
            "runtimes": section_runtimes,
            "int8": section_int8,
            "ortprofile": section_ortprofile,
            "int8gelu": section_int8gelu,
            "attention": section_attention,
            "gelu": section_gelu,
            "prepack": section_prepack,
        }[sec.strip()](args)
        print(f"(load average after {sec}: {load()})")


def isa_view() -> str:
    """With ``ONEDNN_MAX_CPU_ISA=AVX2`` (see the module doc) on a CPU with AVX-512, make
    fastvit's per-ISA kernel choices see the AVX2-only CPU the capped kernels stand for; say
    which CPU fastvit's choices see."""
    import dataclasses
    import os

    from fastvit.host import host_info
    from fastvit.layers.inference import kernels

    host = host_info()
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2" and host.avx512f:
        capped = dataclasses.replace(
            host, avx512f=False, avx512_vnni=False, avx_vnni=False, avx512_bf16=False, amx_tile=False,
            amx_bf16=False, amx_int8=False,
        )  # fmt: skip
        kernels.host_info = lambda: capped
        return (
            f"ISA capped to AVX2 (ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}, "
            f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}): fastvit's "
            f"kernel choices see an AVX2-only {host.model}"
        )
    return f"fastvit's kernel choices see {host.label()}"


def load() -> str:
    """1/5/15-minute load averages: above the core count, timings are not trustworthy."""
    import os

    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
