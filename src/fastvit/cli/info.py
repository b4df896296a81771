"""`fastvit info`: the table of variants.

Counts come from :func:`fastvit.models.complexity.model_summary` (a shapes-only pass on the meta
device). The built-in variants at 256 px ship in ``info_256.json``; other sizes and custom
configs are cached per config, input size and fastvit version in
``$XDG_CACHE_HOME/fastvit/info.json`` (``~/.cache``). A shipped or cached ``fastvit info``
imports neither torch nor timm (about 0.2 s).

``fastvit info --host`` prints the machine instead: CPU model, ISA features
(:mod:`fastvit.host`), the thread choice (:mod:`fastvit.threads`) and the versions of the
installed runtimes, read from package metadata without importing them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("variants", nargs="*", help="variants to list (default: all)")
    p.add_argument("--size", type=int, default=256, help="input size for GMACs (default 256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-cache", action="store_true", help="recompute, ignoring the cache")
    p.add_argument(
        "--host",
        action="store_true",
        help="print this machine instead (CPU model, ISA features such as AVX2/AVX-512/VNNI/"
        "AMX/bf16, threads, runtime versions)",
    )


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastvit" / "info.json"


#: ``model_summary`` of the built-in variants at 256 px, shipped so that even the first
#: ``fastvit info`` imports no torch; keyed by :func:`config_key` (a changed config misses).
#: ``tests/test_cli_robust.py`` checks it equals a fresh computation.
SHIPPED = Path(__file__).resolve().parent / "info_256.json"


def config_key(name: str, size: int) -> str:
    """The variant's config and input size, hashed: what a summary row depends on."""
    from fastvit.models.config import get_config

    return hashlib.sha256(f"{size}|{get_config(name)!r}".encode()).hexdigest()[:24]


def summaries(names: list[str], size: int, use_cache: bool = True) -> list[dict]:
    """``model_summary`` rows for ``names``, from the shipped table or the user cache where the
    config is unchanged (the user cache is also keyed by the fastvit version)."""
    from fastvit import __version__

    shipped: dict = {}
    if use_cache and size == 256:
        with contextlib.suppress(OSError, ValueError):
            shipped = json.loads(SHIPPED.read_text())
    path = cache_file()
    cache: dict | None = None  # the user cache, read on the first name the shipped table lacks
    rows, changed = [], False
    for n in names:
        ck = config_key(n, size)
        if isinstance(shipped.get(ck), dict):
            rows.append(shipped[ck])
            continue
        if cache is None:
            cache = {}
            if use_cache:
                with contextlib.suppress(OSError, ValueError):
                    cache = json.loads(path.read_text())
        k = f"{__version__}-{ck}"
        if not isinstance(cache.get(k), dict):
            from fastvit.models.complexity import model_summary  # torch: only on a cache miss

            cache[k] = model_summary(n, size)
            changed = True
        rows.append(cache[k])
    if changed:
        from fastvit.errors import FastViTError
        from fastvit.fileio import write_text_atomic

        with contextlib.suppress(OSError, FastViTError):  # an unwritable cache is no error
            write_text_atomic(path, json.dumps(cache, indent=1))
    return rows


#: Distributions whose versions ``--host`` shows (from metadata: none of them is imported).
RUNTIMES = ("torch", "timm", "onnxruntime", "openvino", "nncf", "coremltools")


def host_report() -> dict:
    """The ``--host`` facts: :func:`fastvit.host.host_info`, thread choice and versions."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from fastvit import __version__
    from fastvit.host import host_info
    from fastvit.threads import choose_threads

    versions: dict[str, str | None] = {"python": sys.version.split()[0], "fastvit": __version__}
    for name in RUNTIMES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    choice = choose_threads()
    return {
        "host": host_info().to_dict(),
        "threads": {"threads": choice.threads, "cpus": choice.cpus, "load": choice.load},
        "threads_line": choice.describe(),
        "platform": platform.platform(),
        "versions": versions,
    }


def print_host(report: dict) -> None:
    """The ``--host`` block, one fact per line."""
    h = report["host"]
    rows = [
        ("cpu", f"{h['model']} ({h['vendor']}, {h['arch']}, {h['logical_cores']} logical cores)"),
        ("isa", h["isa_summary"] + (f"  [from {h['source']}]" if h["source"] != "unknown" else "")),
        (
            "int8 dot",
            "yes (VNNI / AVX-VNNI / AMX-INT8 / dotprod)"
            if h["int8_dot_product"]
            else "no (no VNNI / AVX-VNNI / AMX-INT8 / dotprod: int8 gains little over f32)",
        ),
        (
            "bf16",
            "native (AVX-512 BF16 / AMX / ARM BF16)"
            if h["bf16_native"]
            else "no bf16 hardware (fastvit bench skips bf16 backends)",
        ),
        ("runs with", report["threads_line"]),
        ("platform", report["platform"]),
    ]
    rows += [(k, v or "not installed") for k, v in report["versions"].items()]
    for k, v in rows:
        print(f"{k:<12}{v}")


def run(args: argparse.Namespace) -> int:
    if args.host:
        report = host_report()
        if args.json:
            report.pop("threads_line")
            print(json.dumps(report, indent=2))
        else:
            print_host(report)
        return 0
    from fastvit.cli.checks import check_size
    from fastvit.models.config import get_config, list_models

    check_size(args.size)
    names = args.variants or list_models()
    for n in names:
        get_config(n)  # one-line error for unknown names
    rows = summaries(names, args.size, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        f"{'variant':<14}{'params (train)':>16}{'params (fused)':>16}"
        f"{f'GMACs @{args.size}':>13}{'attn GMACs':>12}{'input':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        attn = r["gmacs_with_attention"] - r["gmacs"]
        print(
            f"{r['variant']:<14}{r['params_train_m']:>14.2f} M{r['params_fused_m']:>14.2f} M"
            f"{r['gmacs']:>13.2f}{attn:>12.3f}{r['input_size']:>8}"
        )
    print(
        "GMACs: conv + linear layers of the deployed (fused) model; 'attn GMACs' is the extra "
        "cost of the attention matmuls."
    )
    return 0
