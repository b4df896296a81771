"""``fastvit bench --mixers``: one ViT block's cost against its token count, per token mixer.

Three blocks of the same width, each a full pre-norm ViT block (token mixing + 4x MLP),
on a (1, N, C) token sequence laid out on a square grid:

* ``attention``: timm's ``Block`` (``F.scaled_dot_product_attention``);
* ``repmixer``: :class:`~fastvit.models.vit.RepMixerViTBlock`, training form (eval);
* ``repmixer_fused``: the same block after ``fastvit.reparameterize`` (one depthwise conv).

At every token count the three are timed interleaved (same machine load, see
:func:`~fastvit.bench.measure.time_interleaved`); peak memory is the RSS increase of building
and running each block in a fresh process. The log-log slope of latency against N is the
empirical complexity exponent: about 1 for linear cost, 2 for attention's quadratic term once
it dominates the MLP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastvit.bench.core import machine_info
from fastvit.bench.measure import peak_memory_of, time_interleaved
from fastvit.errors import ConfigError
from fastvit.fileio import atomic_path, write_text_atomic

MIXER_KINDS = ("attention", "repmixer", "repmixer_fused")
DEFAULT_GRIDS = (14, 20, 28, 40, 56, 80, 128)  # 196 ... 16384 tokens
LARGE_N = 3136  # the "large N" slope is fitted on token counts >= 56x56


@dataclass
class MixerRow:
    """One block kind at one token count."""

    kind: str
    grid: int
    tokens: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int
    peak_mem_mb: float | None = None


@dataclass
class MixerResult:
    rows: list[MixerRow]
    config: dict[str, Any]
    machine: dict[str, Any]
    slopes: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "machine": self.machine,
            "slopes": self.slopes,
            "rows": [asdict(r) for r in self.rows],
        }


def build_block(kind: str, dim: int, num_heads: int, grid: int, seed: int = 0) -> nn.Module:
    """The eval-mode block of ``kind`` for a ``grid x grid`` token sequence of width ``dim``."""
    from timm.models.vision_transformer import Block

    from fastvit.models.vit import RepMixerViTBlock
    from fastvit.reparam import reparameterize

    if kind not in MIXER_KINDS:
        raise ConfigError(f"unknown mixer block {kind!r}; use one of {', '.join(MIXER_KINDS)}")
    torch.manual_seed(seed)
    if kind == "attention":
        return Block(dim, num_heads).eval()
    block = RepMixerViTBlock(dim, grid).eval()
    return reparameterize(block) if kind == "repmixer_fused" else block


def block_runner(
    kind: str, dim: int, num_heads: int, grid: int, threads: int | None = None
) -> Callable[[], Any]:
    """A no-argument callable running one batch-1 forward of the block (module level so the
    memory child process can rebuild it)."""
    if threads:
        torch.set_num_threads(threads)
    block = build_block(kind, dim, num_heads, grid)
    x = torch.randn(1, grid * grid, dim, generator=torch.Generator().manual_seed(0))

    def run() -> Any:
        with torch.inference_mode():
            return block(x)

    return run


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); ``None`` for fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def run_mixer_benchmark(
    grids: Sequence[int] = DEFAULT_GRIDS,
    *,
    dim: int = 192,
    num_heads: int = 3,
    threads: int | None = None,
    warmup: int = 2,
    rounds: int = 5,
    round_time: float = 0.25,
    memory: bool = True,
    log: Callable[[str], None] | None = None,
) -> MixerResult:
    """Latency (and peak memory) of the three block kinds at every ``grid x grid`` token count."""
    log = log or (lambda s: None)
    grids = sorted(set(grids))
    if not grids or any(g < 1 for g in grids):
        raise ConfigError(f"mixer grids must be positive ints, got {list(grids)}")
    if dim < 1 or num_heads < 1 or dim % num_heads:
        raise ConfigError(
            f"--mixer-dim ({dim}) must be a positive multiple of the number of heads ({num_heads})"
        )
    if rounds < 1 or round_time <= 0:
        raise ConfigError("--rounds must be >= 1 and --round-time > 0")
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    rows: list[MixerRow] = []
    for g in grids:
        log(f"{g}x{g} = {g * g} tokens: timing {', '.join(MIXER_KINDS)} interleaved")
        fns = [block_runner(k, dim, num_heads, g) for k in MIXER_KINDS]
        timings = time_interleaved(fns, warmup=warmup, rounds=rounds, round_time=round_time)
        del fns
        for kind, t in zip(MIXER_KINDS, timings):
            mem = None
            if memory:
                log(f"{g}x{g}: peak memory of {kind} (fresh process)")
                mem = peak_memory_of(
                    block_runner,
                    kind,
                    dim,
                    num_heads,
                    g,
                    threads,
                    prime=(kind, dim, num_heads, 2, threads),
                )
            rows.append(
                MixerRow(kind, g, g * g, t.median_ms, t.p10_ms, t.p90_ms, len(t.samples), mem)
            )
    config = {
        "grids": list(grids),
        "dim": dim,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "batch": 1,
        "threads": threads,
        "warmup": warmup,
        "rounds": rounds,
        "round_time": round_time,
    }
    result = MixerResult(rows, config, machine_info(threads))
    for kind in MIXER_KINDS:
        rs = [r for r in rows if r.kind == kind]
        big = [r for r in rs if r.tokens >= LARGE_N]
        result.slopes[kind] = {
            "all": loglog_slope([r.tokens for r in rs], [r.median_ms for r in rs]),
            "large_n": loglog_slope([r.tokens for r in big], [r.median_ms for r in big]),
            "memory": loglog_slope(
                [r.tokens for r in rs if r.peak_mem_mb],
                [r.peak_mem_mb for r in rs if r.peak_mem_mb],
            ),
        }
    return result


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_mixer_table(result: MixerResult) -> str:
    """Latency/memory per token count, ratios to attention, and each curve's slope."""
    by = {(r.kind, r.grid): r for r in result.rows}
    hdr = (
        "tokens",
        "grid",
        *(f"{k} ms" for k in MIXER_KINDS),
        *(f"{k} MiB" for k in MIXER_KINDS),
        "attn/rep",
        "attn/fused",
        "rep/fused",
    )
    lines = []
    for g in result.config["grids"]:
        a, r, f = (by[(k, g)] for k in MIXER_KINDS)
        lines.append(
            (
                str(g * g),
                f"{g}x{g}",
                *(_fmt(x.median_ms) for x in (a, r, f)),
                *(_fmt(x.peak_mem_mb, ".1f") for x in (a, r, f)),
                f"{a.median_ms / r.median_ms:.2f}",
                f"{a.median_ms / f.median_ms:.2f}",
                f"{r.median_ms / f.median_ms:.2f}",
            )
        )
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(hdr)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*hdr), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*x) for x in lines]
    c = result.config
    out.append("")
    out.append(
        f"one ViT block (dim {c['dim']}, {c['num_heads']} heads, MLP x4), batch 1, "
        f"{c['threads']} threads, median latency, interleaved over {c['rounds']} rounds"
    )
    for kind, s in result.slopes.items():
        out.append(
            f"slope d log(latency) / d log(N) {kind:<15} all N: {_fmt(s['all'])}   "
            f"N >= {LARGE_N}: {_fmt(s['large_n'])}   memory: {_fmt(s['memory'])}"
        )
    load = result.machine.get("load_average")
    if load:
        out.append(
            f"load average at the end: {load[0]:.2f} (1 min) on "
            f"{result.machine['cpu_count']} cores; above the core count timings suffer"
        )
    return "\n".join(out)


def write_mixer_json(result: MixerResult, path: str | Path) -> Path:
    """Write the result as JSON (atomically)."""
    return write_text_atomic(path, json.dumps(result.to_dict(), indent=2))


def write_mixer_png(result: MixerResult, path: str | Path) -> Path:
    """Log-log plots of latency and peak memory against the token count (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for kind, marker in zip(MIXER_KINDS, "os^"):
        rs = sorted((r for r in result.rows if r.kind == kind), key=lambda r: r.tokens)
        s = result.slopes.get(kind, {})
        axes[0].plot(
            [r.tokens for r in rs],
            [r.median_ms for r in rs],
            marker=marker,
            label=f"{kind} (slope {_fmt(s.get('large_n'))} at N >= {LARGE_N})",
        )
        mem = [(r.tokens, r.peak_mem_mb) for r in rs if r.peak_mem_mb]
        if mem:
            axes[1].plot(*zip(*mem), marker=marker, label=f"{kind} (slope {_fmt(s.get('memory'))})")
    c = result.config
    for ax, ylabel in zip(axes, ("median latency (ms)", "peak RSS increase (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"One ViT block, dim {c['dim']}, batch 1, {c['threads']} threads")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
