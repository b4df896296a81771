"""Inference benchmarks behind the issue-4 performance targets (a benchmark, not a test).

Every number is a ratio measured side by side in ONE process: all runners are timed
interleaved (fastvit.bench.measure.time_interleaved: rounds of ~round_time seconds per runner,
rotating order), so load from other processes on a shared machine hits all of them alike.

Sections (``--sections``, default all):

* ``targets``  batch 1, 256x256, fp32: our fused eager model vs timm's reparameterized model
               (T8, S12, SA12; NCHW and channels-last), and unfused -> fused in eager for
               every variant.
* ``ideas``    model-level speed ideas measured on monkeypatched copies of our fused model
               (the model code is not changed here): channels-last, grouped->depthwise
               patch-embedding convs, oneDNN fused conv+GELU / conv+residual-add.
* ``runtimes`` T8 in every shipped runtime vs the fp32 roofline (GFLOP / sgemm rate).
* ``int8``     T8 trained on the digits train split for a few epochs (64x64), then fp32 vs
               int8 (onnxruntime static, per-channel) vs bf16 (PyTorch) top-1 on the digits
               val split, and speed at 256x256 batch 1.

Run: ``.venv/bin/python benchmarks/bench_inference.py --threads 2``
"""

from __future__ import annotations

import argparse
import copy
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

TARGET_VARIANTS = ("fastvit_t8", "fastvit_s12", "fastvit_sa12")
SIZE = 256


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def torch_fn(model: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)
    return run


def report(names: list[str], timings: list[Timing], ref: str | None = None) -> None:
    """Print median/p90 and, if ``ref`` is given, each median / ref median."""
    base = dict(zip(names, timings))[ref].median_ms if ref else None
    for n, t in zip(names, timings):
        ratio = f"  x{t.median_ms / base:.3f} vs {ref}" if base else ""
        print(f"  {n:<44} median {t.median_ms:8.2f} ms  p90 {t.p90_ms:8.2f} ms  "
              f"n={len(t.samples):<4}{ratio}")


# --------------------------------------------------------------------------- speed ideas

class RepeatDepthwise(nn.Module):
    """A grouped conv with ``m`` outputs per input channel as a depthwise conv.

    ``groups == in_channels`` and ``out_channels == m * in_channels``: output channel ``o``
    reads input channel ``o // m``, so repeating every input channel ``m`` times and running
    a depthwise conv (``groups == out_channels``) with the SAME weights is identical. oneDNN
    has fast depthwise kernels but runs the channel-multiplier case through a slow generic path
    (measured below: the three 7x7 stride-2 patch-embedding convs of T8 cost ~20% of eager).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.m = conv.out_channels // conv.in_channels
        self.conv = nn.Conv2d(conv.out_channels, conv.out_channels, conv.kernel_size,
                              conv.stride, conv.padding, conv.dilation, conv.out_channels,
                              bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last):  # repeat in NHWC, stay NHWC
            xr = x.permute(0, 2, 3, 1).unsqueeze(-1).expand(b, h, w, c, self.m)
            xr = xr.reshape(b, h, w, c * self.m).permute(0, 3, 1, 2)
        else:
            xr = x.repeat_interleave(self.m, dim=1)
        return self.conv(xr)


def grouped_to_depthwise(model: nn.Module) -> nn.Module:
    """Replace channel-multiplier grouped convs by :class:`RepeatDepthwise` (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv2d) and child.groups > 1
                    and child.groups == child.in_channels
                    and child.out_channels > child.in_channels):
                setattr(parent, name, RepeatDepthwise(child))
    return model


def _conv_args(conv: nn.Conv2d) -> tuple:
    return (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def conv_gelu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """oneDNN conv with the exact (erf) GELU as a post-op: one pass over the output."""
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, *_conv_args(conv),
                                                   "gelu", [], "none")


def conv_add(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """oneDNN conv with the residual add as a post-op: ``residual + conv(x)``."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, conv.weight, conv.bias, *_conv_args(conv), "add", None, None, [], None)


def fuse_pointwise(model: nn.Module) -> nn.Module:
    """Monkeypatch fused blocks: fc1+GELU and fc2+residual-add as single oneDNN convs, and
    MobileOne conv+GELU (stem, patch-embedding 1x1) likewise. Fused model only."""
    from fastvit.layers.mobileone import MobileOneBlock
    from fastvit.models.blocks import AttentionBlock, RepMixerBlock

    def ffn_residual(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv_add(ffn.fc2, conv_gelu(ffn.fc1, ffn.conv(x)), x)

    for m in model.modules():
        if isinstance(m, RepMixerBlock):
            m.forward = (lambda blk: lambda x: ffn_residual(blk.convffn, blk.token_mixer(x)))(m)
        elif isinstance(m, AttentionBlock):
            m.forward = (lambda blk: lambda x: ffn_residual(
                blk.convffn, x + blk.token_mixer(x)))(m)
        elif (isinstance(m, MobileOneBlock) and isinstance(m.reparam_conv, nn.Conv2d)
              and isinstance(m.se, nn.Identity) and isinstance(m.activation, nn.GELU)
              and m.activation.approximate == "none"):
            m.forward = (lambda blk: lambda x: conv_gelu(blk.reparam_conv, x))(m)
    return model


def ideas_models(variant: str) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (model, channels_last input) for each cumulative idea."""
    base = build_model(variant, "fastvit", fused=True)
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    grp = grouped_to_depthwise(copy.deepcopy(base)).to(memory_format=torch.channels_last)
    fused = fuse_pointwise(grouped_to_depthwise(copy.deepcopy(base))).to(
        memory_format=torch.channels_last)
    timm_fused = build_model(variant, "timm", fused=True)
    return {
        "timm fused (NCHW)": (timm_fused, False),
        "timm fused channels_last": (copy.deepcopy(timm_fused).to(
            memory_format=torch.channels_last), True),
        "ours fused (NCHW)": (base, False),
        "ours + grouped->depthwise (NCHW)": (grouped_to_depthwise(copy.deepcopy(base)), False),
        "ours + channels_last": (cl, True),
        "ours + channels_last + grouped->dw": (grp, True),
        "ours + cl + grouped->dw + fused conv+act/add": (fused, True),
    }


def section_ideas(args: argparse.Namespace) -> None:
    print(f"\n== ideas: model-level changes on monkeypatched copies (batch 1, {SIZE}px, fp32, "
          f"{args.threads} threads) ==")
    x = torch.randn(1, 3, SIZE, SIZE)
    xcl = x.contiguous(memory_format=torch.channels_last)
    names, fns = [], []
    for v in TARGET_VARIANTS:
        models = ideas_models(v)
        ref = models["ours fused (NCHW)"][0]
        with torch.inference_mode():
            want = ref(x)
            for name, (m, cl) in models.items():
                if name.startswith("ours"):
                    err = (m(xcl if cl else x) - want).abs().max().item()
                    assert err < 1e-4, (v, name, err)
        for name, (m, cl) in models.items():
            names.append(f"{v} | {name}")
            fns.append(torch_fn(m, xcl if cl else x))
    timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                               round_time=args.round_time)
    per = len(names) // len(TARGET_VARIANTS)
    for i, v in enumerate(TARGET_VARIANTS):
        print(f" {v}")
        sl = slice(i * per, (i + 1) * per)
        report([n.split(" | ")[1] for n in names[sl]], timings[sl], ref="timm fused (NCHW)")


# --------------------------------------------------------------------------- targets

def section_targets(args: argparse.Namespace) -> None:
    print(f"\n== targets: batch 1, {SIZE}px, fp32, {args.threads} threads, all interleaved ==")
    specs: list[RunnerSpec] = []
    for v in TARGET_VARIANTS:
        for impl, backend in (("timm", "eager"), ("timm", "channels_last"), ("fastvit", "eager"),
                              ("fastvit", "channels_last")):
            specs.append(RunnerSpec(v, backend, 1, SIZE, impl, args.threads))
    for v in fastvit.list_models():
        specs.append(RunnerSpec(v, "unfused", 1, SIZE, "fastvit", args.threads))
        if v not in TARGET_VARIANTS:
            specs.append(RunnerSpec(v, "eager", 1, SIZE, "fastvit", args.threads))
            specs.append(RunnerSpec(v, "channels_last", 1, SIZE, "fastvit", args.threads))
    fns = []
    for s in specs:
        log(f"building {s.key}")
        fns.append(build_runner(s).fn)
    log(f"timing {len(fns)} runners, {args.rounds} rounds")
    timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                               round_time=args.round_time)
    t = {s.key: tm for s, tm in zip(specs, timings)}
    report([s.key for s in specs], timings)
    print("\n target 1: ours fused eager / timm fused eager  (goal <= 0.80)")
    for v in TARGET_VARIANTS:
        timm_nchw = t[f"timm:{v}:eager:b1"].median_ms
        timm_cl = t[f"timm:{v}:channels_last:b1"].median_ms
        ours = t[f"fastvit:{v}:eager:b1"].median_ms
        ours_cl = t[f"fastvit:{v}:channels_last:b1"].median_ms
        print(f"  {v:<14} NCHW/NCHW {ours / timm_nchw:.3f}   ours-cl/timm-NCHW "
              f"{ours_cl / timm_nchw:.3f}   cl/cl {ours_cl / timm_cl:.3f}   "
              f"(timm {timm_nchw:.2f} ms, ours {ours:.2f} ms, ours cl {ours_cl:.2f} ms)")
    print("\n target 3: unfused eager / fused eager  (goal >= 1.5)")
    for v in fastvit.list_models():
        un = t[f"fastvit:{v}:unfused:b1"].median_ms
        fe = t[f"fastvit:{v}:eager:b1"].median_ms
        fc = t[f"fastvit:{v}:channels_last:b1"].median_ms
        print(f"  {v:<14} NCHW {un / fe:.2f}x   (channels_last fused: {un / fc:.2f}x)  "
              f"unfused {un:.2f} ms, fused {fe:.2f} ms, fused cl {fc:.2f} ms")


# --------------------------------------------------------------------------- runtimes

def section_runtimes(args: argparse.Namespace) -> None:
    print(f"\n== runtimes: fastvit_t8, batch 1, {SIZE}px, {args.threads} threads, vs fp32 "
          "roofline ==")
    v = "fastvit_t8"
    gflop = count_flops(v, SIZE) / 1e9
    with tempfile.TemporaryDirectory() as cache:
        specs = [RunnerSpec(v, b, 1, SIZE, "fastvit", args.threads, cache)
                 for b in ("eager", "channels_last", "torchscript", "compile", "bf16", "bf16-compile",
                           "onnxruntime", "onnxruntime-int8")]
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
        best = ideas_models(v)["ours + cl + grouped->dw + fused conv+act/add"][0]
        fns.append(torch_fn(best, torch.randn(1, 3, SIZE, SIZE).contiguous(
            memory_format=torch.channels_last)))
        names.append("fastvit:fastvit_t8:eager+ideas(cl,dw,fused):b1")
        fns.append(sgemm_runner(2048, args.threads))
        names.append("sgemm n=2048")
        timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                                   round_time=args.round_time)
    sg = timings[-1]
    rate = 2 * 2048**3 / (sg.median_ms * 1e-3) / 1e9
    roof = gflop / rate * 1e3
    report(names, timings)
    print(f"\n  sgemm {rate:.1f} GFLOP/s (median) -> T8 roofline {gflop:.3f} GFLOP / rate = "
          f"{roof:.2f} ms")
    print("  target 2: best shipped runtime / fp32 roofline  (goal <= 1.5)")
    for n, tm in zip(names[:-1], timings[:-1]):
        print(f"    {n:<48} {tm.median_ms:7.2f} ms  x{tm.median_ms / roof:.2f} roofline")


# --------------------------------------------------------------------------- int8 / bf16

def train_digits_t8(epochs: int, size: int, threads: int) -> tuple[nn.Module, float]:
    """FastViT-T8 trained on the digits train split (AdamW, cosine, label smoothing)."""
    from timm.scheduler import CosineLRScheduler

    from fastvit.export.metadata import metadata_from_model
    from fastvit.export.quantize import load_images

    torch.manual_seed(0)
    model = fastvit.create_model("fastvit_t8", num_classes=10)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, size, size), crop_pct=1.0)
    meta = metadata_from_model(model)
    train = load_images("digits", meta, split="train")
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    bs = 64
    steps = epochs * (len(y_all) // bs)
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=1e-4)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step = 0
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i:i + bs]
            xb = x_all[idx]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # tiny translation aug
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y_all[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
        log(f"epoch {ep + 1}/{epochs} loss {loss.item():.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    model.class_names = [str(i) for i in range(10)]
    return model, time.perf_counter() - t0


def section_int8(args: argparse.Namespace) -> None:
    from fastvit.export import export_onnx, ort_session, quantize_onnx, to_bf16
    from fastvit.export.metadata import metadata_from_model
    from fastvit.export.quantize import bf16_supported, load_images, onnx_top1, torch_top1

    size = args.train_size
    print(f"\n== int8 / bf16: fastvit_t8 trained on digits ({args.epochs} epochs at "
          f"{size}px, {args.threads} threads) ==")
    model, secs = train_digits_t8(args.epochs, size, args.threads)
    fused = fastvit.reparameterize(model)
    meta = metadata_from_model(fused)
    val = load_images("digits", meta, split="val")
    calib = load_images("digits", meta, split="train", limit=args.calibration)
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "t8.onnx"
        rep = export_onnx(fused, fp32)
        log(rep.summary().splitlines()[1])
        results = {}
        for fmt in ("qdq", "qoperator"):
            for method in ("minmax", "percentile"):
                q = Path(d) / f"t8_{fmt}_{method}.onnx"
                quantize_onnx(fp32, q, [calib.images[i:i + 32]
                                        for i in range(0, len(calib.images), 32)],
                              quant_format=fmt, method=method, quantize_depthwise=True)
                results[(fmt, method)] = q
        a32 = onnx_top1(fp32, val, threads=args.threads)
        a_torch = torch_top1(fused, val)
        print(f"  train time {secs:.0f} s; val images {len(val.labels)}; "
              f"calibration images {len(calib.images)} (train split)")
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
            cal_sz = load_images("digits", meta_sz, split="train", limit=32)
            q_sz = quantize_onnx(fp32_s, Path(d) / f"t8_{sz}_int8.onnx",
                                 [cal_sz.images[:16], cal_sz.images[16:]],
                                 quantize_depthwise=True)
            q_pw = quantize_onnx(fp32_s, Path(d) / f"t8_{sz}_int8_pw.onnx",
                                 [cal_sz.images[:16], cal_sz.images[16:]],
                                 quantize_depthwise=False)
            x = np.random.default_rng(0).standard_normal((1, 3, sz, sz)).astype(np.float32)
            names, fns = [], []
            for name, p in (("onnxruntime fp32", fp32_s), ("onnxruntime int8 (all convs)", q_sz),
                            ("onnxruntime int8 (depthwise fp32)", q_pw)):
                s = ort_session(p, threads=args.threads)
                names.append(name)
                fns.append(lambda s=s, x=x: s.run(None, {"input": x}))
            xt = torch.from_numpy(x)
            names.append("torch fp32 eager channels_last")
            fns.append(torch_fn(copy.deepcopy(fused).to(memory_format=torch.channels_last),
                                xt.contiguous(memory_format=torch.channels_last)))
            if bf16_supported():
                names.append("torch bf16 eager channels_last")
                fns.append(torch_fn(to_bf16(fused),
                                    xt.to(torch.bfloat16).contiguous(
                                        memory_format=torch.channels_last)))
            timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                                       round_time=args.round_time)
            print(f"  speed at {sz}x{sz}, batch 1:")
            report(names, timings, ref="onnxruntime fp32")
            print(f"  target 4: int8 speed-up over fp32 onnxruntime (goal >= 1.5): "
                  f"{timings[0].median_ms / timings[1].median_ms:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="targets,ideas,runtimes,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--round-time", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6, help="digits training epochs (int8)")
    p.add_argument("--train-size", type=int, default=64, help="digits training resolution")
    p.add_argument("--calibration", type=int, default=256, help="int8 calibration images")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {args.threads} threads, rounds {args.rounds} x "
          f"{args.round_time}s per runner")
    for sec in args.sections.split(","):
        print(f"\n(load average before {sec}: {load()})")
        {"targets": section_targets, "ideas": section_ideas, "runtimes": section_runtimes,
         "int8": section_int8}[sec.strip()](args)
        print(f"(load average after {sec}: {load()})")


def load() -> str:
    """1/5/15-minute load averages: above the core count, timings are not trustworthy."""
    import os

    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
