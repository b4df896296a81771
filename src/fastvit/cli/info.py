"""`fastvit info`: the table of variants."""

from __future__ import annotations

import argparse
import json


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("variants", nargs="*", help="variants to list (default: all)")
    p.add_argument("--size", type=int, default=256, help="input size for GMACs (default 256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from fastvit.errors import ConfigError
    from fastvit.models import get_config, list_models
    from fastvit.models.complexity import model_summary

    if args.size < 32:
        raise ConfigError(f"--size must be at least 32, got {args.size}")
    names = args.variants or list_models()
    for n in names:
        get_config(n)  # one-line error for unknown names
    rows = [model_summary(n, args.size) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (f"{'variant':<14}{'params (train)':>16}{'params (fused)':>16}"
              f"{f'GMACs @{args.size}':>13}{'attn GMACs':>12}{'input':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        attn = r["gmacs_with_attention"] - r["gmacs"]
        print(f"{r['variant']:<14}{r['params_train_m']:>14.2f} M{r['params_fused_m']:>14.2f} M"
              f"{r['gmacs']:>13.2f}{attn:>12.3f}{r['input_size']:>8}")
    print("GMACs: conv + linear layers of the deployed (fused) model; 'attn GMACs' is the extra "
          "cost of the attention matmuls.")
    return 0
