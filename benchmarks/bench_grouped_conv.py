"""Channel-multiplier grouped convs in the exported graph: as traced, Gather, split.

FastViT's patch embeddings and ``conv_exp`` are grouped convs with ``groups = C`` and two
outputs per input channel. ``fastvit.export.onnx.depthwise_multiplier_convs`` (applied by every
ONNX export) rewrites them as depthwise convs: ``split`` (two depthwise convs + Concat, the
channel permutation folded into the next 1x1 conv; the default) or ``gather`` (each channel
twice + one depthwise conv). This script times the three graphs of the same fused model (the
benchmark runners' seeded weights), interleaved, in onnxruntime fp32 and then in OpenVINO int8
(NNCF, calibrated on digits; one runtime at a time: OpenVINO's threads slow onnxruntime in the
same process), and prints the load average.

    python benchmarks/bench_grouped_conv.py                      # T8, 256 px, 2 threads
    python benchmarks/bench_grouped_conv.py --variant fastvit_sa12 --size 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="fastvit_t8")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()

    from fastvit.bench.measure import time_interleaved
    from fastvit.bench.runners import build_model
    from fastvit.card import ModelCard
    from fastvit.data import calibration_images
    from fastvit.export.onnx import onnx_proto, ort_session

    model = build_model(args.variant, "fastvit", fused=True)
    card = ModelCard.from_model(model, input_size=args.size)
    graphs = {
        name: onnx_proto(model, card, multiplier_convs=form)
        for name, form in (
            ("grouped conv (as traced)", "keep"),
            ("Gather + depthwise", "gather"),
            ("split + Concat (shipped)", "split"),
        )
    }
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    # one runtime at a time: OpenVINO's worker threads slow onnxruntime in the same process;
    # no spinning: idle sessions' spinning workers would slow the one being timed
    sessions = {
        n: ort_session(g.SerializeToString(), threads=args.threads, spin=False)
        for n, g in graphs.items()
    }
    ref, *others = (s.run(None, {"input": x})[0] for s in sessions.values())
    diff = max(float(np.abs(o - ref).max()) for o in others)
    print(f"max |diff| between the graphs (onnxruntime fp32): {diff:.2e}")
    fns = [lambda s=s: s.run(None, {"input": x}) for s in sessions.values()]
    report(
        "onnxruntime fp32", list(graphs), time_interleaved(fns, warmup=3, rounds=args.rounds), args
    )
    del sessions, fns

    import openvino as ov  # (after the onnxruntime timings)

    from fastvit.export.openvino import compile_ir, quantize_int8

    calib = calibration_images("digits", card.preprocessing, limit=64)
    requests, tmp = [], Path(tempfile.mkdtemp(prefix="bench-gconv-"))
    for i, g in enumerate(graphs.values()):
        path = tmp / f"graph{i}.onnx"  # convert_model (what the exporter uses), from a file
        path.write_bytes(g.SerializeToString())
        ov_model = quantize_int8(ov.convert_model(str(path)), calib)
        compiled = compile_ir(ov_model, "f32", threads=args.threads, batch=1)
        requests.append(compiled.create_infer_request())
    fns = [lambda r=r: r.infer({0: x}, share_inputs=True, share_outputs=True) for r in requests]
    report("openvino int8", list(graphs), time_interleaved(fns, warmup=3, rounds=args.rounds), args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def report(runtime: str, names: list[str], timings: list, args: argparse.Namespace) -> None:
    for n, t in zip(names, timings):
        print(
            f"{args.variant} {args.size}px  {runtime:<17} {n:<26} "
            f"median {t.median_ms:7.2f} ms  p10 {t.p10_ms:7.2f}"
        )
    for n, t in zip(names[1:], timings[1:]):
        print(f"  {runtime}: as traced / {n} = {timings[0].median_ms / t.median_ms:.2f}x")


if __name__ == "__main__":
    main()
