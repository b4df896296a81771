"""ONNX export of the fused model, graph clean-up, metadata and onnxruntime parity check.

The exported graph is the fully fused inference form: every conv+BN, branch and layer scale
is already folded, so it holds no BatchNormalization, Identity or Dropout node and no
sub-graph that could still be constant folded. Preprocessing and class names are stored in
the model's ``metadata_props`` (the :class:`~fastvit.card.ModelCard` encoding).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvit.card import ModelCard
from fastvit.errors import CheckpointError, ConfigError, ReparamError
from fastvit.export.common import (
    ExportReport,
    fuse_for_export,
    load_source,
    output_diff,
    random_inputs,
    real_inputs,
)
from fastvit.fileio import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17
DEFAULT_OPSET = 18
#: Op types that must never appear in an exported graph.
FORBIDDEN_OPS = ("BatchNormalization", "Identity", "Dropout")


def export_onnx(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_size: int | tuple[int, int] | None = None,
    dynamic_hw: bool = False,
    class_names: list[str] | None = None,
    verify: bool = True,
    check_images: str | Path | None = None,
) -> ExportReport:
    """Export the fused form of ``model`` to ONNX at ``path`` and check it with onnxruntime.

    The batch dimension is always dynamic; ``dynamic_hw`` also frees height and width.
    ``verify`` compares onnxruntime with PyTorch on random and real inputs (images from
    ``check_images`` or the bundled digits) and raises :class:`ReparamError` when they differ
    by more than :data:`~fastvit.export.common.PARITY_TOL` of the output scale; then nothing is
    left at ``path``.
    """
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old; use --opset {MIN_OPSET} or newer")
    fused = fuse_for_export(load_source(model))
    meta = ModelCard.from_model(fused, input_size=input_size, class_names=class_names)
    proto = onnx_proto(fused, meta, opset=opset, dynamic_hw=dynamic_hw)
    path = Path(path)
    report = ExportReport(path=path, format="onnx")
    report.details.update(describe_onnx(proto))
    with atomic_path(path) as tmp:  # renamed into place only once verified
        tmp.write_bytes(proto.SerializeToString())
        if verify:
            verify_onnx(fused, tmp, meta, report, check_images=check_images, dynamic_hw=dynamic_hw)
    return report


def onnx_proto(
    fused: nn.Module,
    meta: ModelCard,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_hw: bool = False,
    multiplier_convs: str = "split",
) -> Any:
    """Trace an already fused model into a cleaned ``onnx.ModelProto`` carrying ``meta``.

    ``multiplier_convs`` picks how channel-multiplier grouped convs are written
    (:func:`depthwise_multiplier_convs`; the default is the fastest, the others are for
    comparisons)."""
    import onnx

    axes = {0: "batch"}
    out_axes = {0: "batch"}
    example = torch.zeros(1, *meta.input_size)
    dense_channels = 0  # channels of a dense (N, C, H, W) output exported with dynamic H/W
    if dynamic_hw:
        axes.update({2: "height", 3: "width"})
        with torch.no_grad():
            out = fused(example)
        if out.dim() == 4:  # dense outputs (segmentation logits) follow the input's H/W
            out_axes.update({2: "height", 3: "width"})
            dense_channels = int(out.shape[1])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter, not user-actionable
        torch.onnx.export(
            fused,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if dense_channels:  # the tracer names the channels of a Resize output symbolically
        proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = dense_channels
    simplify_graph(proto, multiplier_convs=multiplier_convs)
    proto.producer_name = "fastvit"
    del proto.metadata_props[:]
    for k, v in meta.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = f"FastViT {meta.variant} (fused inference form)"
    onnx.checker.check_model(proto)
    return proto


def simplify_graph(proto: Any, *, multiplier_convs: str = "split") -> None:
    """Clean a traced graph in place.

    * ``Identity``/``Dropout`` nodes are removed and their consumers rewired (the tracer
      emits Identity for de-duplicated initializers; Dropout is a no-op at inference);
    * ``Constant`` nodes become initializers;
    * any node whose inputs are all constants is evaluated now (constant folding);
    * channel-multiplier grouped convs become depthwise (:func:`depthwise_multiplier_convs`,
      in form ``multiplier_convs``);
    * unused initializers are dropped.
    """
    from onnx import numpy_helper

    graph = proto.graph
    graph_outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if (
            node.op_type == "Constant"
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
            graph.node.remove(node)
    for node in list(graph.node):
        if node.op_type not in ("Identity", "Dropout"):
            continue
        mask = node.output[1] if node.op_type == "Dropout" and len(node.output) > 1 else ""
        if mask and any(mask in n.input for n in graph.node):
            continue  # the mask is used: leave it (never the case for our models)
        src, dst = node.input[0], node.output[0]
        if dst in graph_outputs:
            producer = next((n for n in graph.node if src in n.output), None)
            if producer is None or src in graph_outputs:
                continue
            _rename_value(graph, src, dst)
        else:
            for other in graph.node:
                for i, name in enumerate(other.input):
                    if name == dst:
                        other.input[i] = src
        graph.node.remove(node)
    _fold_constants(proto)
    depthwise_multiplier_convs(proto, multiplier_convs)
    used = {name for n in graph.node for name in n.input} | graph_outputs
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


MULTIPLIER_FORMS = ("split", "gather", "keep")


def depthwise_multiplier_convs(proto: Any, form: str = "split") -> int:
    """Rewrite every channel-multiplier grouped ``Conv`` into depthwise convs; return how many.

    FastViT's patch embeddings and its final ``conv_exp`` are grouped convs with ``groups ==
    in_channels = C`` and ``m`` (2) outputs per input channel: output channel ``o`` reads input
    channel ``o // m`` with its own kernel. The runtimes' kernels for that shape are slow
    (OpenVINO int8: T8's 48->96 7x7 patch embedding at 256 px took more time than all 24 1x1
    convs together), their depthwise kernels are fast. Both rewrites give the same numbers:

    * ``"split"``: ``m`` depthwise convs ``C -> C`` on the unchanged input, conv ``j`` holding
      kernels ``j, j+m, j+2m, ...``, then a ``Concat``. The concatenated channels are the
      original ones permuted (``q -> perm[q]``), so this is used only where every reader of
      the output, directly or through elementwise ops with scalar constants (a GELU), is an
      ungrouped ``Conv`` (the patch embeddings' 1x1; :func:`_permutation_sinks`): their
      weights' input channels are permuted to match (``W[:, perm]``), which makes it exact. OpenVINO
      int8 keeps the whole block in its int8 channels-last layout (T8: ~10% faster than
      ``"gather"``, whose ``Gather`` runs as a reference kernel between two reorders).
    * ``"gather"``: a ``Gather`` on axis 1 repeating each channel ``m`` times, then one
      depthwise conv over ``m*C`` channels in the original order. Used where ``"split"`` does
      not apply (``conv_exp``, followed by squeeze-excitation) or when asked for.

    ``"keep"`` leaves the graph as traced (for comparisons). The eager model does the same
    repeat (:class:`~fastvit.layers.inference.FusedConv2d`).
    """
    from onnx import helper, numpy_helper

    if form not in MULTIPLIER_FORMS:
        raise ConfigError(
            f"unknown form {form!r} for channel-multiplier convs; use split, gather or keep"
        )
    if form == "keep":
        return 0
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" else None
        group = next((a for a in node.attribute if a.name == "group"), None)
        if weight is None or group is None or group.i <= 1:
            nodes.append(node)
            continue
        channels, (out_ch, per_group) = group.i, weight.dims[:2]
        if per_group != 1 or out_ch <= channels or out_ch % channels:
            nodes.append(node)
            continue
        m, base, count = out_ch // channels, node.name or node.output[0], count + 1
        sinks = _permutation_sinks(graph, node.output[0], inits)
        if form == "gather" or sinks is None:
            index, repeated = f"{base}/repeat_index", f"{base}/repeated_input"
            graph.initializer.append(
                numpy_helper.from_array(np.repeat(np.arange(channels, dtype=np.int64), m), index)
            )
            nodes.append(
                helper.make_node(
                    "Gather", [node.input[0], index], [repeated], axis=1, name=repeated
                )
            )
            node.input[0] = repeated
            group.i = out_ch
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        b = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else None
        parts = []
        for j in range(m):
            split = helper.make_node(
                "Conv",
                [node.input[0], f"{base}/multiplier_{j}/weight"],
                [f"{base}/multiplier_{j}"],
                name=f"{base}/multiplier_{j}",
            )
            split.attribute.extend(node.attribute)  # same kernel/stride/pads; group = C
            graph.initializer.append(numpy_helper.from_array(w[j::m].copy(), split.input[1]))
            if b is not None:
                split.input.append(f"{base}/multiplier_{j}/bias")
                graph.initializer.append(numpy_helper.from_array(b[j::m].copy(), split.input[2]))
            nodes.append(split)
            parts.append(split.output[0])
        nodes.append(
            helper.make_node("Concat", parts, [node.output[0]], axis=1, name=f"{base}/concat")
        )
        # concatenated channel q is original channel perm[q]; elementwise ops in between keep
        # that order, and each ungrouped conv reading it takes W2[:, perm]
        perm = np.concatenate([np.arange(channels) * m + j for j in range(m)])
        for sink in sinks:
            w2 = numpy_helper.to_array(inits[sink.input[1]])
            permuted = f"{sink.input[1]}/permuted_for/{base}"  # initializers may be shared
            graph.initializer.append(numpy_helper.from_array(w2[:, perm].copy(), permuted))
            sink.input[1] = permuted
    del graph.node[:]
    graph.node.extend(nodes)
    return count


#: Ops that act on each element alone: a channel permutation passes through them unchanged
#: when their other inputs are scalars (the GELU pattern: Div, Erf, Add, Mul).
_ELEMENTWISE = frozenset(
    ("Add", "Sub", "Mul", "Div", "Erf", "Relu", "Sigmoid", "Tanh", "Gelu", "Clip", "HardSwish")
)


def _permutation_sinks(graph: Any, value: str, inits: dict[str, Any]) -> list[Any] | None:
    """The ungrouped ``Conv`` nodes that absorb a channel permutation of ``value``, or None.

    Everything reading ``value`` (directly or through elementwise ops with scalar constants)
    must end in the data input of an ungrouped ``Conv`` with a constant weight; a graph output
    or any other reader (pooling, reshape, a grouped conv) cannot take a permuted input.
    """
    permuted, sinks = {value}, []
    outputs = {o.name for o in graph.output}
    if value in outputs:
        return None
    for node in graph.node:
        reads = [i for i in node.input if i in permuted]
        if not reads:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group == 1 and reads == [node.input[0]]:
            if node.input[1] not in inits:
                return None
            sinks.append(node)
            continue
        scalars = all(
            i in permuted or (i in inits and int(np.prod(inits[i].dims)) == 1) for i in node.input
        )
        if node.op_type not in _ELEMENTWISE or not scalars:
            return None
        if any(o in outputs for o in node.output):
            return None
        permuted.update(node.output)
    return sinks or None


def _rename_value(graph: Any, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for i, name in enumerate(n.output):
            if name == old:
                n.output[i] = new


def _fold_constants(proto: Any) -> None:
    """Evaluate nodes whose inputs are all initializers (with onnx's reference evaluator)."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    while True:
        inits = {i.name: i for i in graph.initializer}
        foldable = [
            n for n in graph.node if n.input and all((not x) or x in inits for x in n.input)
        ]
        if not foldable:
            return
        for node in foldable:
            sub = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node],
                    "fold",
                    [],
                    [
                        onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                        for o in node.output
                    ],
                    [inits[x] for x in node.input if x],
                ),
                opset_imports=proto.opset_import,
            )
            values = ReferenceEvaluator(sub).run(None, {})
            for name, value in zip(node.output, values):
                graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            graph.node.remove(node)


def describe_onnx(proto: Any) -> dict[str, object]:
    """Op counts, opset and the nodes that must not be there (for reports and tests)."""
    ops = Counter(n.op_type for n in proto.graph.node)
    inits = {i.name for i in proto.graph.initializer}
    foldable = sum(1 for n in proto.graph.node if n.input and all(x in inits for x in n.input if x))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "opset": opset,
        "nodes": sum(ops.values()),
        "op_counts": dict(sorted(ops.items())),
        "forbidden_nodes": {k: ops[k] for k in FORBIDDEN_OPS if ops.get(k)},
        "foldable_nodes": foldable,
        "input_shape": onnx_input_shape(proto),
    }


def onnx_input_shape(proto: Any) -> list[int | str]:
    """Shape of the first graph input; symbolic dimensions are their names."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]


def read_onnx_metadata(proto_or_path: Any) -> ModelCard | None:
    """The :class:`~fastvit.card.ModelCard` stored in an ONNX model, or ``None`` if it has none
    (a model not exported by fastvit)."""
    import onnx

    proto = proto_or_path
    if isinstance(proto_or_path, (str, Path)):
        proto = onnx.load(str(proto_or_path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if not ModelCard.has_metadata(props):
        return None
    where = str(proto_or_path) if isinstance(proto_or_path, (str, Path)) else "the ONNX model"
    return ModelCard.from_metadata(props, default=ModelCard(form="fused"), where=where)


def ort_session(
    model: str | Path | bytes,
    *,
    threads: int | None = None,
    optimization: str = "all",
    spin: bool = True,
) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads, sequential execution).

    ``spin=False`` stops idle worker threads from busy-waiting, which matters when other
    work shares the cores (e.g. interleaved benchmarks) at a small latency cost.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        where = "in-memory model" if isinstance(model, bytes) else str(model)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"onnxruntime cannot load {where}: {first}") from e


def verify_onnx(
    fused: nn.Module,
    path: str | Path,
    meta: ModelCard,
    report: ExportReport,
    *,
    check_images: str | Path | None = None,
    dynamic_hw: bool = False,
) -> None:
    """Fill ``report`` with onnxruntime-vs-PyTorch differences; raise if above tolerance."""
    sess = ort_session(path)
    checks = {"random": random_inputs(meta, batch=3), "real": real_inputs(meta, 4, check_images)}
    if dynamic_hw:  # also a different resolution, so dynamic H/W is really exercised
        _c, h, w = meta.input_size
        checks["random_hw"] = random_inputs(meta.with_input_size((h + 32, w + 32)), batch=1)
    with torch.no_grad():
        for name, x in checks.items():
            ref = fused(x)
            out = sess.run(None, {INPUT_NAME: x.numpy()})[0]
            report.record(name, output_diff(ref, out))
    if not report.ok:
        raise ReparamError(report.failure())


def save_proto(proto: Any, path: Path) -> None:
    """Write an ONNX model atomically (temporary sibling, then ``os.replace``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX model with a one-line error when it is not one."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"ONNX model {path} does not exist; check the path")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable ONNX model ({type(e).__name__}); "
            "export one with `fastvit export CKPT --format onnx`"
        ) from e


__all__ = [
    "FORBIDDEN_OPS",
    "INPUT_NAME",
    "MULTIPLIER_FORMS",
    "OUTPUT_NAME",
    "depthwise_multiplier_convs",
    "describe_onnx",
    "export_onnx",
    "load_onnx",
    "onnx_input_shape",
    "onnx_proto",
    "ort_session",
    "read_onnx_metadata",
    "save_proto",
    "simplify_graph",
    "verify_onnx",
]
