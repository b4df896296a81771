"""`fastvit reparam`: fuse a checkpoint into its inference form, verify it and save it.

Verification runs image-like inputs (smooth random images normalized like the model's own
preprocessing) through both forms and accepts ``max|diff| <= atol + rtol * max|output|``: the
tolerance is relative to the output scale (logits of a trained model reach hundreds), and both
the absolute and the relative error are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: Suffixes that are removed from a checkpoint name to form the default output name.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth.tar", ".pth", ".pt", ".bin", ".ckpt")


def output_stem(path: str | Path) -> str:
    """The checkpoint's name without its checkpoint suffix: the full stem, dots included
    (``fastvit.v1.safetensors`` -> ``fastvit.v1``, ``model.pth.tar`` -> ``model``)."""
    name = Path(path).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name or "model"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="training-form checkpoint (official or timm layout, any "
        "wrapper), or 'demo' for a randomly initialised fastvit_t8",
    )
    p.add_argument(
        "-o",
        "--output",
        help="output .safetensors (default: <input stem>_reparam"
        ".safetensors; nothing is written for 'demo' unless given)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--model", help="variant, when it cannot be detected from the checkpoint")
    p.add_argument("--size", type=int, default=128, help="verification input size (default 128)")
    p.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="verification tolerance relative to the output scale (default 1e-5 "
        "for float32 weights)",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="absolute part of the tolerance (default: equal to --rtol)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: chosen from the CPUs available and the load)",
    )


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    import fastvit
    from fastvit.cli.checks import check_min, check_size, setup_threads, warn_threads
    from fastvit.errors import ConfigError
    from fastvit.fileio import check_writable_target
    from fastvit.models.complexity import count_params
    from fastvit.reparam.walk import default_rtol, output_diff

    check_size(args.size)
    check_min(args.atol, "--atol", 0)
    check_min(args.rtol, "--rtol", 0)
    out = Path(args.output) if args.output else None
    if args.checkpoint != "demo" and out is None:
        out = Path(args.checkpoint).with_name(output_stem(args.checkpoint) + "_reparam.safetensors")
    if out is not None:  # before the (slow) load and fusion
        if out.suffix != ".safetensors":
            raise ConfigError(
                f"-o {out}: reparameterized checkpoints are saved as safetensors; "
                "use a name ending in .safetensors"
            )
        check_writable_target(out, overwrite=args.overwrite)
    extra_meta: dict[str, str] = {}
    if args.checkpoint == "demo":
        model = fastvit.create_model(args.model or "fastvit_t8")
        # Non-trivial statistics, as after training, so the check is meaningful.
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            for n, p in model.named_parameters():
                if "layer_scale" in n:
                    p.copy_(torch.rand(p.shape, generator=g) * 0.5)
    else:
        from fastvit.checkpoints.api import RESERVED_METADATA
        from fastvit.checkpoints.io import read_checkpoint

        model = fastvit.load_model(args.checkpoint, name=args.model)
        # the file's own metadata (a run's dataset, epoch, val_top1, ...) travels along
        extra_meta = {
            k: v
            for k, v in read_checkpoint(args.checkpoint)[1].items()
            if k not in RESERVED_METADATA
        }
        if model.inference_mode:
            raise ConfigError(f"{args.checkpoint} is already reparameterized; nothing to do")
    model.eval()
    threads = setup_threads(args.threads)
    rtol = args.rtol if args.rtol is not None else default_rtol(next(model.parameters()).dtype)
    shape = (2, model.in_chans, args.size, args.size)
    t0 = time.perf_counter()
    fused = fastvit.reparameterize(model, verify=True, rtol=rtol, atol=args.atol, input_shape=shape)
    seconds = time.perf_counter() - t0
    diff = output_diff(model, fused, shape, seed=1)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    print(
        f"model: {model.variant}  params {count_params(model) / 1e6:.2f} M -> "
        f"{count_params(fused) / 1e6:.2f} M  BatchNorms left: {n_bn}  {threads.describe()}"
    )
    print(
        f"reparameterized in {seconds:.2f} s; fused vs unfused on image-like "
        f"{args.size}x{args.size} inputs: {diff.describe(rtol, args.atol)}"
    )
    if out is not None:
        fastvit.save_model(fused, out, metadata=extra_meta)
        print(f"saved {out}")
    warn_threads("reparam", threads)
    return 0
