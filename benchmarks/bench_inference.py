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
* ``speedup``  unfused -> fused for every variant, also with the proposed model changes.
* ``runtimes`` T8 in every shipped runtime vs the fp32 roofline (GFLOP / sgemm rate).
* ``int8``     T8 trained on the digits train split for a few epochs (64x64), then fp32 vs
               int8 (onnxruntime static, per-channel) vs bf16 (PyTorch) top-1 on the digits
               val split, and speed at 256x256 batch 1.
* ``ortprofile`` per-op-type onnxruntime time of the fp32 and int8 T8 graphs (why int8 is
               not faster at batch 1). Not in the default set.

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
    """Print median/p90/p10 and, if ``ref`` is given, the median and p10 ratios to it.

    On a shared machine the p10 (10th percentile) is the more robust estimate of unloaded
    latency; both ratios are printed.
    """
    base = dict(zip(names, timings))[ref] if ref else None
    for n, t in zip(names, timings):
        ratio = (f"  x{t.median_ms / base.median_ms:.3f} (median) x{t.p10_ms / base.p10_ms:.3f} "
                 f"(p10) vs {ref}") if base else ""
        print(f"  {n:<44} median {t.median_ms:8.2f}  p90 {t.p90_ms:8.2f}  p10 {t.p10_ms:7.2f} ms"
              f"  n={len(t.samples):<4}{ratio}")


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


def section_speedup(args: argparse.Namespace) -> None:
    """unfused -> fused for every variant, with and without the proposed model changes."""
    print(f"\n== speedup: unfused -> fused eager for every variant (batch 1, {SIZE}px, fp32, "
          f"{args.threads} threads) ==")
    x = torch.randn(1, 3, SIZE, SIZE)
    xcl = x.contiguous(memory_format=torch.channels_last)
    names, fns = [], []
    for v in fastvit.list_models():
        unfused = build_model(v, "fastvit", fused=False)
        fused = build_model(v, "fastvit", fused=True)
        best = fuse_pointwise(grouped_to_depthwise(copy.deepcopy(fused))).to(
            memory_format=torch.channels_last)
        for name, m, inp in (("unfused", unfused, x), ("fused", fused, x),
                             ("fused + proposed changes", best, xcl)):
            names.append(f"{v} | {name}")
            fns.append(torch_fn(m, inp))
    timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                               round_time=args.round_time)
    report(names, timings)
    t = dict(zip(names, timings))
    for stat in ("median_ms", "p10_ms"):
        print(f"\n target 3 [{stat[:-3]}]: unfused / fused  (goal >= 1.5)")
        for v in fastvit.list_models():
            un = getattr(t[f"{v} | unfused"], stat)
            fu = getattr(t[f"{v} | fused"], stat)
            be = getattr(t[f"{v} | fused + proposed changes"], stat)
            print(f"  {v:<14} fused {un / fu:.2f}x   fused + proposed changes {un / be:.2f}x")


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
    for stat in ("median_ms", "p10_ms"):
        def ms(key: str, stat: str = stat) -> float:
            return getattr(t[key], stat)

        print(f"\n target 1 [{stat[:-3]}]: ours fused eager / timm fused eager  (goal <= 0.80)")
        for v in TARGET_VARIANTS:
            timm_nchw, timm_cl = ms(f"timm:{v}:eager:b1"), ms(f"timm:{v}:channels_last:b1")
            ours, ours_cl = ms(f"fastvit:{v}:eager:b1"), ms(f"fastvit:{v}:channels_last:b1")
            print(f"  {v:<14} NCHW/NCHW {ours / timm_nchw:.3f}   ours-cl/timm-NCHW "
                  f"{ours_cl / timm_nchw:.3f}   cl/cl {ours_cl / timm_cl:.3f}   "
                  f"(timm {timm_nchw:.2f} ms, ours {ours:.2f} ms, ours cl {ours_cl:.2f} ms)")
        print(f"\n target 3 [{stat[:-3]}]: unfused eager / fused eager  (goal >= 1.5)")
        for v in fastvit.list_models():
            un = ms(f"fastvit:{v}:unfused:b1")
            fe, fc = ms(f"fastvit:{v}:eager:b1"), ms(f"fastvit:{v}:channels_last:b1")
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
                 for b in ("eager", "channels_last", "torchscript", "compile", "bf16",
                           "bf16-compile", "onnxruntime", "onnxruntime-int8")]
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
        x = torch.randn(1, 3, SIZE, SIZE)
        best = ideas_models(v)["ours + cl + grouped->dw + fused conv+act/add"][0]
        fns.append(torch_fn(best, x.contiguous(memory_format=torch.channels_last)))
        names.append("fastvit:fastvit_t8:eager+ideas(cl,dw,fused):b1")
        # the grouped->depthwise change under bf16 + torch.compile and under onnxruntime
        from fastvit.bench.runners import _compile
        from fastvit.export.metadata import metadata_from_model
        from fastvit.export.onnx import onnx_proto, ort_session
        from fastvit.export.quantize import to_bf16

        dw = grouped_to_depthwise(build_model(v, "fastvit", fused=True))
        dw_bf16 = _compile(to_bf16(dw))
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        torch_fn(dw_bf16, xb)()  # compile now
        fns.append(torch_fn(dw_bf16, xb))
        names.append("fastvit:fastvit_t8:bf16-compile+grouped->dw:b1")
        sess = ort_session(onnx_proto(dw, metadata_from_model(dw)).SerializeToString(),
                           threads=args.threads)
        feed = {"input": x.numpy()}
        fns.append(lambda: sess.run(None, feed))
        names.append("fastvit:fastvit_t8:onnxruntime+grouped->dw:b1")
        fns.append(sgemm_runner(2048, args.threads))
        names.append("sgemm n=2048")
        timings = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds,
                                   round_time=args.round_time)
    report(names, timings)
    sg = timings[-1]
    for stat in ("median_ms", "p10_ms"):
        rate = 2 * 2048**3 / (getattr(sg, stat) * 1e-3) / 1e9
        roof = gflop / rate * 1e3
        print(f"\n  [{stat[:-3]}] sgemm {rate:.1f} GFLOP/s -> T8 roofline {gflop:.3f} GFLOP / "
              f"rate = {roof:.2f} ms")
        print(f"  target 2 [{stat[:-3]}]: shipped runtime / fp32 roofline  (goal <= 1.5 for the "
              "best)")
        for n, tm in zip(names[:-1], timings[:-1]):
            v_ms = getattr(tm, stat)
            print(f"    {n:<48} {v_ms:7.2f} ms  x{v_ms / roof:.2f} roofline")


# --------------------------------------------------------------------------- int8 / bf16

def train_digits_t8(epochs: int, size: int, threads: int = 1) -> tuple[nn.Module, float]:
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
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=steps // 10, warmup_lr_init=1e-4,
                              t_in_epochs=False)  # stepped per optimizer update
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step = 0
    model.train()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
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
    torch.set_num_threads(before)
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
    # training runs on one thread: on a shared machine two-thread training steps can stall
    model, secs = train_digits_t8(args.epochs, size, threads=1)
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
                  f"{timings[0].median_ms / timings[1].median_ms:.2f}x (median), "
                  f"{timings[0].p10_ms / timings[1].p10_ms:.2f}x (p10)")


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
            depthwise = any(k in name for k in ("token_mixer", "convffn/conv/", "lkb",
                                                "patch_embed.1", "pos_emb", "conv_exp/reparam"))
            op_of[e["name"]] = e["args"]["op_name"] + (" (depthwise/grouped)" if depthwise
                                                       and "Conv" in e["args"]["op_name"] else "")
    agg: dict[str, float] = defaultdict(float)
    for node, durs in per_node.items():
        agg[op_of[node]] += float(np.median(durs[runs // 4:]))  # skip the first runs
    return dict(sorted(agg.items(), key=lambda kv: -kv[1]))


def section_ortprofile(args: argparse.Namespace) -> None:
    """Why int8 is not faster: per-op time of the fp32 and int8 T8 graphs in onnxruntime."""
    from fastvit.export import export_onnx, quantize_onnx
    from fastvit.export.metadata import metadata_from_model
    from fastvit.export.quantize import load_images

    print(f"\n== ortprofile: fastvit_t8 {SIZE}px batch 1, {args.threads} threads, per-op time "
          "(median per node over runs, summed per op type) ==")
    model = build_model("fastvit_t8", "fastvit", fused=True)
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "t8.onnx"
        export_onnx(model, fp32, verify=False)
        calib = load_images("digits", metadata_from_model(model), limit=32)
        paths = {"fp32": fp32}
        paths["int8 (all convs but grouped)"] = quantize_onnx(
            fp32, Path(d) / "q.onnx", [calib.images[:16], calib.images[16:]])
        paths["int8 (depthwise fp32)"] = quantize_onnx(
            fp32, Path(d) / "q_pw.onnx", [calib.images[:16], calib.images[16:]],
            quantize_depthwise=False)
        for name, p in paths.items():
            prof = ort_op_profile(p, args.threads, 40, Path(d) / "prof")
            print(f"  {name}: total {sum(prof.values()):.2f} ms")
            for op, ms in list(prof.items())[:9]:
                print(f"    {op:<42} {ms:6.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="targets,ideas,speedup,runtimes,int8")
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
         "int8": section_int8, "ortprofile": section_ortprofile,
         "speedup": section_speedup}[sec.strip()](args)
        print(f"(load average after {sec}: {load()})")


def load() -> str:
    """1/5/15-minute load averages: above the core count, timings are not trustworthy."""
    import os

    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
