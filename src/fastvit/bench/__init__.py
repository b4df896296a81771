"""Inference benchmarks: latency, throughput, peak memory and roofline, interleaved runs."""

from fastvit.bench.core import (
    BenchResult,
    BenchRow,
    compute_ratios,
    format_table,
    run_benchmark,
    write_json,
    write_png,
)
from fastvit.bench.measure import peak_memory_mb, sgemm_runner, time_interleaved
from fastvit.bench.runners import BACKENDS, RunnerSpec, build_runner, count_flops

__all__ = [
    "BACKENDS",
    "BenchResult",
    "BenchRow",
    "RunnerSpec",
    "build_runner",
    "compute_ratios",
    "count_flops",
    "format_table",
    "peak_memory_mb",
    "run_benchmark",
    "sgemm_runner",
    "time_interleaved",
    "write_json",
    "write_png",
]
