"""`fastvit reparam`: fuse a checkpoint into its inference form, verify it and save it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training-form checkpoint (official or timm layout, any "
                   "wrapper), or 'demo' for a randomly initialised fastvit_t8")
    p.add_argument("-o", "--output", help="output .safetensors (default: <input>_reparam"
                   ".safetensors; nothing is written for 'demo' unless given)")
    p.add_argument("--model", help="variant, when it cannot be detected from the checkpoint")
    p.add_argument("--size", type=int, default=128, help="verification input size (default 128)")
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    import fastvit
    from fastvit.errors import ConfigError
    from fastvit.models.complexity import count_params
    from fastvit.reparam.walk import max_abs_diff

    if args.size < 32:
        raise ConfigError(f"--size must be at least 32, got {args.size}")
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
        out = Path(args.output) if args.output else None
    else:
        from fastvit.checkpoints.api import RESERVED_METADATA
        from fastvit.checkpoints.io import read_checkpoint

        model = fastvit.load_model(args.checkpoint, name=args.model)
        # the file's own metadata (a run's dataset, epoch, val_top1, ...) travels along
        extra_meta = {k: v for k, v in read_checkpoint(args.checkpoint)[1].items()
                      if k not in RESERVED_METADATA}
        if model.inference_mode:
            raise ConfigError(f"{args.checkpoint} is already reparameterized; nothing to do")
        out = Path(args.output) if args.output else Path(args.checkpoint).with_name(
            Path(args.checkpoint).name.split(".")[0] + "_reparam.safetensors")
    if out is not None:
        from fastvit.fileio import check_writable_target

        check_writable_target(out, overwrite=args.overwrite)
    model.eval()
    t0 = time.perf_counter()
    fused = fastvit.reparameterize(model, verify=True, atol=args.atol,
                                   input_shape=(2, model.in_chans, args.size, args.size))
    seconds = time.perf_counter() - t0
    diff = max_abs_diff(model, fused, (2, model.in_chans, args.size, args.size), seed=1)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    print(f"model: {model.variant}  params {count_params(model) / 1e6:.2f} M -> "
          f"{count_params(fused) / 1e6:.2f} M  BatchNorms left: {n_bn}")
    print(f"reparameterized in {seconds:.2f} s; max |fused - unfused| on random "
          f"{args.size}x{args.size} inputs: {diff:.2e} (tolerance {args.atol:g})")
    if out is not None:
        fastvit.save_model(fused, out, metadata=extra_meta)
        print(f"saved {out}")
    return 0
