"""`fastvit predict CKPT_OR_ONNX IMAGE_OR_DIR`: top-k classes and probabilities per image.

Preprocessing comes from the model's metadata. Without class names in the model, labels are
class indices and a one-line warning is printed; ``--class-names FILE`` supplies names (a
file whose length does not match the model's classes is an error).

For a folder, every readable image is classified; unreadable ones (corrupt files, decompression
bombs) are listed on stderr afterwards and the exit status is 1. A single bad image file, or bad
options, exit with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] IMAGES",
        help="the model (checkpoint .safetensors/.pth, TorchScript .pt, .onnx, "
        "OpenVINO .xml, a "
        "pretrained tag, hf-hub:org/name or a URL) unless --model gives it, "
        "then an image file or a folder of images (searched recursively)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="the model, e.g. a pretrained tag such as fastvit_t8.apple_in1k",
    )
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "openvino"),
        default=None,
        help="default: onnxruntime for .onnx, openvino for .xml, torch otherwise",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--size", type=int, default=None, help="override the input size")
    p.add_argument("--class-names", default=None, help="text file, one class name per line")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: chosen from the CPUs available and the load)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar for folders (it is shown only on a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastvit.cli.checks import check_min, check_size, setup_threads, warn_threads
    from fastvit.data import list_images, read_class_names
    from fastvit.errors import ConfigError
    from fastvit.infer import MissingClassNamesWarning, load_predictor, predict_images
    from fastvit.pretrained import is_remote, load_model

    given = ([args.model] if args.model else []) + list(args.paths)
    if len(given) != 2:
        raise ConfigError(
            "give one model and one image or folder: fastvit predict MODEL IMAGES "
            "(or --model MODEL IMAGES)"
        )
    args.model, args.images = given
    check_size(args.size)
    check_min(args.threads, "--threads", 1)
    check_min(args.top_k, "--top-k", 1)
    check_min(args.batch_size, "--batch-size", 1)
    names = read_class_names(args.class_names) if args.class_names else None
    paths = list_images(args.images)  # check images before the (slower) model load
    folder = Path(args.images).is_dir()
    threads = setup_threads(args.threads)
    failed: list[tuple[str, str]] = []
    # pretrained tags, hf-hub: and URLs: fetched (cached), with ImageNet class names from timm
    source = load_model(args.model) if is_remote(args.model) else args.model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load_predictor(
            source, args.backend, size=args.size, class_names=names, threads=threads.threads
        )
        # a folder: classify every readable image and report the others at the end
        preds = predict_images(
            predictor,
            paths,
            top_k=args.top_k,
            batch_size=args.batch_size,
            progress=folder and not args.no_progress and sys.stderr.isatty(),
            failed=failed if folder else None,
        )
    for w in caught:  # one line each, no source location
        if issubclass(w.category, (MissingClassNamesWarning, UserWarning)):
            print(f"fastvit predict: warning: {w.message}", file=sys.stderr)
    if args.json:
        doc = {
            "model": str(args.model),
            "backend": predictor.backend,
            "variant": predictor.card.variant,
            "threads": threads.threads,
            "predictions": [p.to_dict() for p in preds],
            "failed": [{"path": f, "error": e} for f, e in failed],
        }
        print(json.dumps(doc, indent=2))
    else:
        for p in preds:
            print(p.format())
    for _path, message in failed:
        print(f"fastvit predict: error: {message}", file=sys.stderr)
    if failed:
        print(
            f"fastvit predict: {len(failed)} of {len(paths)} images could not be read "
            f"(listed above); the other {len(preds)} were predicted",
            file=sys.stderr,
        )
        return 1
    warn_threads("predict", threads)
    return 0
