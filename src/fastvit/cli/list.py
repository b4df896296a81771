"""`fastvit list`: architectures, or with ``--pretrained`` the published weight tags."""

from __future__ import annotations

import argparse
import json


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "filter",
        nargs="?",
        default=None,
        help="only names containing this text (* wildcards allowed)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list pretrained tags (architecture.tag) with their sources",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import fnmatch

    from fastvit.models.config import get_config, list_models
    from fastvit.pretrained import get_pretrained, list_pretrained

    if not args.pretrained:
        names = list_models()
        if args.filter:
            pat = args.filter if "*" in args.filter else f"*{args.filter}*"
            names = [n for n in names if fnmatch.fnmatch(n, pat)]
        if args.json:
            print(json.dumps({n: get_config(n).to_dict() for n in names}, indent=2))
        else:
            for n in names:
                c = get_config(n)
                print(
                    f"{n:<14} stages={len(c.stages)} depths={c.layers} dims={c.embed_dims} "
                    f"head={c.head}({c.num_classes})"
                )
        return 0
    tags = list_pretrained(args.filter)
    entries = [get_pretrained(t) for t in tags]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **e.pretrained_cfg(),
                        "tag": e.tag,
                        "sources": e.urls(),
                        "top1": e.top1,
                        "top1_kind": e.top1_kind,
                        "license_url": e.license_url,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return 0
    print(f"{'tag':<36}{'classes':>8}{'top-1':>7}  {'crop':>5}  {'license':<16}source")
    for e in entries:
        top1 = f"{e.top1:.1f}" if e.top1 is not None else "-"
        kind = "*" if e.top1 is not None and "zero-shot" in e.top1_kind else " "
        print(
            f"{e.tag:<36}{e.num_classes:>8}{top1:>6}{kind}  {e.preprocessing.crop_pct:>5.2f}  "
            f"{e.license:<16}{e.urls()[0]}"
        )
    print(
        "top-1: ImageNet-1k validation, as published; * = zero-shot (CLIP embedding models). "
        "Use: fastvit.create_model('<tag>', pretrained=True)"
    )
    return 0
