"""Channel-multiplier grouped convs in the exported graph: as written vs Gather + depthwise.

FastViT's patch embeddings and ``conv_exp`` are grouped convs with ``groups = C`` and two
outputs per input channel. ``fastvit.export.onnx.depthwise_multiplier_convs`` (applied by every
ONNX export) rewrites each as a ``Gather`` (each channel twice) + depthwise conv. This script
times both graphs of the same fused model, interleaved, in onnxruntime fp32 and OpenVINO int8
(NNCF, calibrated on digits), and prints the load average.

    python benchmarks/bench_grouped_conv.py                      # T8, 256 px, 2 threads
    python benchmarks/bench_grouped_conv.py --variant fastvit_sa12 --size 512
"""

from __future__ import annotations

import argparse
import copy
import os

import numpy as np


def undo_depthwise(proto) -> int:
    """The graph as traced: drop each inserted Gather and give its conv ``groups = C`` back."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    gathers = {
        n.output[0]: n
        for n in graph.node
        if n.op_type == "Gather" and n.output[0].endswith("/repeated_input")
    }
    undone = 0
    for node in graph.node:
        g = gathers.get(node.input[0]) if node.op_type == "Conv" else None
        if g is None:
            continue
        channels = len(np.unique(np.frombuffer(inits[g.input[1]].raw_data, dtype=np.int64)))
        node.input[0] = g.input[0]
        next(a for a in node.attribute if a.name == "group").i = channels
        graph.node.remove(g)
        undone += 1
    return undone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="fastvit_t8")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()

    import openvino as ov

    import fastvit
    from fastvit.bench.measure import time_interleaved
    from fastvit.card import ModelCard
    from fastvit.data import calibration_images
    from fastvit.export.onnx import onnx_proto, ort_session
    from fastvit.export.openvino import compile_ir, quantize_int8

    model = fastvit.reparameterize(fastvit.create_model(args.variant).eval())
    card = ModelCard.from_model(model, input_size=args.size)
    shipped = onnx_proto(model, card)
    traced = copy.deepcopy(shipped)
    print(f"{undo_depthwise(traced)} channel-multiplier convs in {args.variant}")
    calib = calibration_images("digits", card.preprocessing, limit=64)
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)

    fns, names, outs = [], [], {}
    for name, proto in (("grouped conv (as traced)", traced), ("Gather + depthwise", shipped)):
        data = proto.SerializeToString()
        sess = ort_session(data, threads=args.threads)
        outs[name] = sess.run(None, {"input": x})[0]
        fns.append(lambda s=sess: s.run(None, {"input": x}))
        names.append(f"onnxruntime fp32  {name}")
        ov_model = ov.Core().read_model(data, b"")
        req = compile_ir(
            quantize_int8(ov_model, calib), "f32", threads=args.threads, batch=1
        ).create_infer_request()
        fns.append(lambda r=req: r.infer({0: x}))
        names.append(f"openvino int8     {name}")
    a, b = outs.values()
    print(f"max |diff| of the two graphs (onnxruntime fp32): {float(np.abs(a - b).max()):.2e}")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    timings = time_interleaved(fns, warmup=3, rounds=args.rounds, round_time=0.3)
    for n, t in zip(names, timings):
        print(
            f"{args.variant} {args.size}px  {n:<46} median {t.median_ms:7.2f} ms  p10 {t.p10_ms:7.2f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
