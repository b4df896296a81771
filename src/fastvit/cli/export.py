"""`fastvit export CKPT --format onnx[,onnx-int8,torchscript,coreml,openvino]`: deployable files.

Every format is exported from the fully fused model and checked: ONNX and TorchScript
against PyTorch on image-like random and real inputs (max |diff| <= 1e-5 x (1 + max |output|),
a tolerance relative to the output scale; a failed check leaves no file), int8 ONNX for accuracy on a
labelled set and for speed against fp32, CoreML by reading back its spec (CoreML prediction
needs macOS, so no numeric check is possible elsewhere). Preprocessing (input size, crop_pct,
interpolation, mean/std) and class names are stored in every exported file.

Outputs are named after the checkpoint's full stem (``fastvit.v1.safetensors`` ->
``fastvit.v1.onnx``); an existing file is never replaced without ``--overwrite``, and every
output path is checked before the (slow) export starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("onnx", "onnx-int8", "torchscript", "coreml", "openvino")
SUFFIX = {
    "onnx": ".onnx",
    "onnx-int8": ".int8.onnx",
    "torchscript": ".torchscript.pt",
    "coreml": ".mlpackage",
    "openvino": ".xml",
}


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint (.safetensors/.pth, any supported layout)")
    p.add_argument(
        "--format",
        default="onnx",
        help="comma-separated formats (default: onnx): onnx; onnx-int8 (static int8, "
        "writes the fp32 .onnx too); torchscript; coreml (.mlpackage, needs "
        "`pip install 'fastvit[coreml]'`; converted and spec-checked on any OS, "
        "but CoreML models only RUN on macOS); openvino (IR .xml + .bin, needs "
        "`pip install 'fastvit[openvino]'`)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file (one format only; for openvino a NAME.xml or a folder); "
        "default: next to the checkpoint",
    )
    p.add_argument("--output-dir", default=None, help="directory for the exported files")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input height/width (default: the model's input size)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    p.add_argument(
        "--dynamic-hw", action="store_true", help="ONNX: dynamic height/width as well as batch"
    )
    p.add_argument(
        "--class-names",
        default=None,
        help="text file with one class name per line (stored in the metadata)",
    )
    p.add_argument(
        "--check-images",
        default=None,
        help="folder of real images for the parity check (default: bundled digits)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the parity checks")
    g = p.add_argument_group("int8 quantization (--format onnx-int8)")
    g.add_argument(
        "--calibration",
        "--calib",
        dest="calibration",
        default=None,
        metavar="DIR",
        help="'digits' (bundled digits train split), a data root (its "
        "train/ split) or a folder of images (default: digits; for openvino --int8 "
        "only for a model trained on the digits)",
    )
    g.add_argument(
        "--calibration-count",
        type=int,
        default=None,
        help="number of calibration images (default 128 for onnx-int8, 300 for "
        "openvino --int8: NNCF's default)",
    )
    g.add_argument("--quant-format", default="qdq", choices=("qdq", "qoperator"))
    g.add_argument(
        "--int8-weight-bits",
        default="auto",
        choices=("auto", "7", "8"),
        help="int8 weight range, for onnx-int8 and openvino --int8 (default auto: 7 on x86 "
        "CPUs without VNNI/AMX, whose int8 kernels saturate with 8-bit weights; 8 elsewhere). "
        "Export on the kind of CPU you deploy on, or pass 7 for any x86 CPU",
    )
    g.add_argument(
        "--calibration-method", default="minmax", choices=("minmax", "percentile", "entropy")
    )
    g.add_argument(
        "--val",
        default=None,
        help="'digits' (val split) or a data root (its val/ split, as `fastvit eval "
        "--data` reads it) or a folder of class folders: fp32 vs int8 top-1",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: chosen from the CPUs available and the load)",
    )
    g = p.add_argument_group("OpenVINO (--format openvino)")
    g.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16"),
        default="auto",
        help="inference precision stored with the model. auto (default): the fastest on "
        "this CPU of f32, bf16 (only with bf16 hardware, >= 99%% agreement) and int8 "
        "(with --calib images, or the digits for a digits model, and a labelled --val: "
        "top-1 drop <= --max-drop), says why; f32: checked against PyTorch like ONNX; "
        "bf16: reported as top-1 agreement",
    )
    g.add_argument(
        "--int8",
        action="store_true",
        help="NNCF post-training int8 quantization (calibrated on --calib)",
    )
    g.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="int8 (--int8, onnx-int8): refuse to write if top-1 on --val drops more (points, "
        "default 0.5; an all-int8 OpenVINO model that fails is quantized again with its first "
        "conv in f32)",
    )
    g.add_argument("--force", action="store_true", help="int8: write despite --max-drop")
    p.add_argument("--coreml-precision", default="float32", choices=("float32", "float16"))


def _outputs(args: argparse.Namespace, formats: list[str]) -> dict[str, Path]:
    """Every file the export will write (by format; 'onnx-fp32' for int8's fp32 model), checked
    for writability and against silent overwrites before any work is done."""
    from fastvit.cli.reparam import output_stem
    from fastvit.errors import ConfigError
    from fastvit.fileio import check_writable_target

    ckpt = Path(args.checkpoint)
    if args.output is not None:
        if len(formats) != 1:
            raise ConfigError("--output takes one format; use --output-dir for several")
        out = Path(args.output)
        outputs = {formats[0]: _openvino_path(args, out) if formats[0] == "openvino" else out}
    else:
        out_dir = Path(args.output_dir) if args.output_dir else ckpt.parent
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--output-dir {out_dir} is a file; give a folder")
        stem = output_stem(ckpt)
        outputs = {f: out_dir / f"{stem}{_suffix(args, f)}" for f in formats}
    if "onnx-int8" in outputs and "onnx" not in outputs:  # int8 also writes the fp32 model
        out = outputs["onnx-int8"]
        fp32 = out.with_name(out.name.replace(".int8.onnx", ".onnx"))
        outputs["onnx-fp32"] = out.with_name(out.stem + ".fp32.onnx") if fp32 == out else fp32
    for path in outputs.values():
        check_writable_target(path, overwrite=args.overwrite)
        if path.suffix == ".xml":  # an IR is two files
            check_writable_target(path.with_suffix(".bin"), overwrite=args.overwrite)
    return outputs


def _suffix(args: argparse.Namespace, fmt: str) -> str:
    if fmt != "openvino":
        return SUFFIX[fmt]
    return (
        ".int8.xml"
        if args.int8
        else f".{args.precision}.xml"
        if args.precision not in ("f32", "auto")
        else ".xml"
    )


def _openvino_path(args: argparse.Namespace, out: Path) -> Path:
    """--output for openvino: NAME.xml as given, or a folder to put <checkpoint>.xml in."""
    from fastvit.cli.reparam import output_stem

    if out.suffix.lower() == ".xml":
        return out
    return out / f"{output_stem(Path(args.checkpoint))}{_suffix(args, 'openvino')}"


def run(args: argparse.Namespace) -> int:
    from fastvit.data import read_class_names
    from fastvit.errors import ConfigError, FastViTError
    from fastvit.export.common import fuse_for_export, load_source

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"unknown format {', '.join(bad) or '(none)'}; use any of {', '.join(FORMATS)}"
        )
    from fastvit.cli.checks import check_min, check_size, setup_threads, warn_threads

    check_size(args.size)
    check_min(args.calibration_count, "--calibration-count", 1)
    check_min(args.threads, "--threads", 1)
    if args.int8 and "openvino" not in formats:
        raise ConfigError(
            "--int8 quantizes the OpenVINO model: add --format openvino "
            "(for onnxruntime int8 use --format onnx-int8)"
        )
    if "openvino" in formats:  # before loading anything: the extra may be missing
        from fastvit.export.openvino import require_nncf, require_openvino

        require_openvino()
        if args.int8:
            require_nncf()
    outputs = _outputs(args, formats)
    threads = setup_threads(args.threads)
    args.threads = threads.threads
    names = read_class_names(args.class_names) if args.class_names else None
    model = fuse_for_export(load_source(args.checkpoint))
    common = {"input_size": args.size, "class_names": names}
    fp32_onnx: Path | None = None
    for fmt in formats:
        out = outputs[fmt]
        if fmt == "onnx" or (fmt == "onnx-int8" and fp32_onnx is None):
            from fastvit.export.onnx import export_onnx

            path = outputs.get("onnx") or outputs["onnx-fp32"]
            report = export_onnx(
                model,
                path,
                opset=args.opset,
                dynamic_hw=args.dynamic_hw,
                verify=not args.no_verify,
                check_images=args.check_images,
                **common,
            )
            print(report.summary())
            fp32_onnx = path
        if fmt == "onnx-int8":
            assert fp32_onnx is not None
            try:
                _export_int8(args, fp32_onnx, out)
            except FastViTError:
                if "onnx-fp32" in outputs:  # written only for the int8 model: not kept either
                    fp32_onnx.unlink(missing_ok=True)
                raise
        elif fmt == "torchscript":
            from fastvit.export.torchscript import export_torchscript

            report = export_torchscript(
                model, out, verify=not args.no_verify, check_images=args.check_images, **common
            )
            print(report.summary())
        elif fmt == "openvino":
            from fastvit.export.openvino import export_openvino

            report = export_openvino(
                model,
                out,
                precision=args.precision,
                int8=args.int8,
                calib=args.calibration,
                calib_count=args.calibration_count or 300,
                val=args.val,
                max_drop=args.max_drop,
                force=args.force,
                int8_weight_bits=args.int8_weight_bits,
                verify=not args.no_verify,
                check_images=args.check_images,
                threads=args.threads,
                overwrite=args.overwrite,
                **common,
            )
            print(report.summary())
        elif fmt == "coreml":
            from fastvit.export.coreml import export_coreml

            report = export_coreml(model, out, precision=args.coreml_precision, **common)
            print(report.summary())
    warn_threads("export", threads, timed="onnx-int8" in formats)  # its speed check
    return 0


def _export_int8(args: argparse.Namespace, fp32: Path, out: Path) -> None:
    """Quantize ``fp32`` to ``out`` and print the accuracy and speed checks. With a labelled
    ``--val`` (digits val for a digits model) nothing is written when top-1 drops more than
    ``--max-drop`` points, unless ``--force``."""
    from fastvit.bench.measure import onnx_latency
    from fastvit.data import calibration_images, load_labelled
    from fastvit.export.common import AccuracyDropError, is_digits_model
    from fastvit.export.onnx import ort_session, read_onnx_metadata
    from fastvit.export.quantize import int8_weight_bits, onnx_top1, quantize_onnx
    from fastvit.fileio import atomic_path

    card = read_onnx_metadata(fp32)
    assert card is not None
    calib = calibration_images(
        args.calibration or "digits", card.preprocessing, limit=args.calibration_count or 128
    )
    batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    bits = int8_weight_bits(args.int8_weight_bits)
    val_source = args.val if args.val is not None else "digits" if is_digits_model(card) else None
    checked = None
    with atomic_path(out) as tmp:  # `out` appears only once the int8 model passed its check
        quantize_onnx(
            fp32,
            tmp,
            batches,
            quant_format=args.quant_format,
            method=args.calibration_method,
            weight_bits=bits,
        )
        if val_source is not None:  # the val split, exactly as `fastvit eval --data` reads it
            val = load_labelled(val_source, card)
            a32 = onnx_top1(ort_session(fp32, threads=args.threads), val)
            a8 = onnx_top1(ort_session(tmp, threads=args.threads), val)
            checked = (
                f"  top-1 on {val_source} ({len(val.labels)} images): fp32 {a32:.2f}%  "
                f"int8 {a8:.2f}%  (delta {a8 - a32:+.2f} points)"
            )
            if a32 - a8 > args.max_drop:
                drop = (
                    f"int8 top-1 on {val_source} is {a8:.2f}% vs {a32:.2f}% in fp32 "
                    f"(drop {a32 - a8:.2f} > --max-drop {args.max_drop:g} points)"
                )
                if not args.force:
                    raise AccuracyDropError(
                        f"{drop}; nothing written: calibrate on more representative images "
                        "(--calibration), or pass --force"
                    )
                checked += f"\n  warning: {drop}; written anyway (--force)"
    print(
        f"wrote int8 ONNX model to {out} ({args.quant_format}, per-channel {bits}-bit weights, "
        f"first conv fp32, {len(calib)} calibration images from {args.calibration or 'digits'})"
    )
    print(checked or "  accuracy not checked: pass a labelled --val folder")
    t32, t8 = onnx_latency([fp32, out], (1, *card.input_size), threads=args.threads)
    print(
        f"  batch-1 latency (median, interleaved): fp32 {t32:.2f} ms  int8 {t8:.2f} ms  "
        f"(speed-up {t32 / t8:.2f}x)"
    )
