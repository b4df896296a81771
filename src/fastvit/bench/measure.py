"""Timing, sgemm rate and peak memory.

Latency: every runner is warmed up, then all runners are timed *interleaved* in rounds
(each round runs each runner for about ``round_time`` seconds, in an order rotated per
round), so load from other processes hits every runner alike. Per-call wall times
(``time.perf_counter``) give the median and 90th percentile.

Peak memory: each runner is rebuilt in a fresh child process (spawn); a thread samples the
resident set size (``/proc/self/statm``) every millisecond while the model is built and run
(warm-up + 3 calls). We report the peak RSS minus the RSS just before the model was built:
weights + runtime workspaces + activations, as the operating system sees them (this also
covers onnxruntime's arena, which PyTorch-only tools such as tracemalloc cannot see).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastvit.bench.runners import RunnerSpec, build_runner


@dataclass
class Timing:
    """Per-call latencies (seconds) of one runner."""

    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def p90_ms(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)] * 1e3

    @property
    def p10_ms(self) -> float:
        """10th percentile: on a shared machine, the best estimate of unloaded latency."""
        s = sorted(self.samples)
        return s[max(0, math.ceil(0.1 * len(s)) - 1)] * 1e3

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples) * 1e3


def sgemm_runner(n: int = 2048, threads: int | None = None) -> Callable[[], Any]:
    """A large fp32 ``torch.mm`` (``2 n^3`` FLOP per call) at the benchmark's thread count."""
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    *,
    warmup: int = 5,
    rounds: int = 10,
    round_time: float = 0.25,
    min_iters: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> list[Timing]:
    """Time ``fns`` interleaved; returns one :class:`Timing` per function."""
    iters = []
    for fn in fns:
        for _ in range(max(1, warmup)):
            fn()
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        iters.append(max(min_iters, int(round_time / max(one, 1e-6))))
    timings = [Timing() for _ in fns]
    n = len(fns)
    for r in range(rounds):
        for j in range(n):
            i = (j + r) % n  # rotate the order so no runner always follows the same one
            fn, samples = fns[i], timings[i].samples
            for _ in range(iters[i]):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        if on_round is not None:
            on_round(r)
    return timings


def runner_fn(spec: RunnerSpec) -> Callable[[], Any]:
    """The callable of :func:`build_runner` (a picklable builder for :func:`time_isolated`)."""
    return build_runner(spec).fn


def time_isolated(
    builders: Sequence[tuple[Callable[..., Callable[[], Any]], tuple]],
    *,
    warmup: int = 5,
    rounds: int = 10,
    round_time: float = 0.25,
    gap: float = 0.1,
    timeout: float = 1800.0,
    on_round: Callable[[int], None] | None = None,
) -> list[Timing]:
    """Like :func:`time_interleaved`, but each runner lives in its own spawned process.

    ``builders`` are ``(build, args)`` pairs of picklable module-level functions; ``build(*args)``
    returns the zero-argument callable to time (:func:`runner_fn`, :func:`sgemm_runner`). The
    processes are started and warmed up one after another, then timed in rotated rounds of
    ``round_time`` seconds each, with a ``gap`` after every block so the last runner's worker
    threads stop spinning; only one runs at a time. Runtimes in one process slow each other
    down even when idle (an OpenVINO model compiled next to an onnxruntime session made the
    session 11% slower, and 40% when they alternate in blocks), which isolation removes while
    the rotation still spreads the machine's load over every runner.
    """
    import multiprocessing as mp

    from fastvit.errors import ConfigError

    ctx = mp.get_context("spawn")
    conns, procs = [], []
    try:
        for build, args in builders:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_timing_child, args=(build, args, warmup, child), daemon=True)
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
            _reply(parent, timeout, "ready")
        timings = [Timing() for _ in builders]
        n = len(builders)
        for r in range(rounds):
            for j in range(n):
                i = (j + r) % n
                conns[i].send(round_time)
                timings[i].samples.extend(_reply(conns[i], timeout, "samples"))
                time.sleep(gap)
            if on_round is not None:
                on_round(r)
        return timings
    except (EOFError, OSError) as e:
        raise ConfigError(f"a timing process ended unexpectedly ({type(e).__name__})") from None
    finally:  # one at a time: many runtimes tearing down at once is a burst of load
        for conn, proc in zip(conns, procs):
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _reply(conn: Any, timeout: float, expected: str) -> Any:
    from fastvit.errors import ConfigError

    if not conn.poll(timeout):
        raise ConfigError(f"a timing process gave no answer in {timeout:.0f} s")
    status, value = conn.recv()
    if status != expected:
        raise ConfigError(f"a timing process failed: {value}")
    return value


def _timing_child(
    build: Callable[..., Callable[[], Any]], args: tuple, warmup: int, conn: Any
) -> None:
    """Build, warm up, say ready; then run blocks of ``seconds`` until told to stop (None)."""
    try:
        fn = build(*args)
        for _ in range(max(1, warmup)):
            fn()
        conn.send(("ready", None))
        while (seconds := conn.recv()) is not None:
            samples, end = [], time.perf_counter() + seconds
            while True:
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                samples.append(t1 - t0)
                if t1 >= end:
                    break
            conn.send(("samples", samples))
    except Exception as e:  # report, never hang the parent
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        conn.send(("error", f"{type(e).__name__}: {first}"))
    finally:
        conn.close()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: high-water mark only
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _peak_rss_increase_mb(work: Callable[[], None]) -> float:
    """Peak RSS increase (MiB) while ``work()`` runs, sampled every millisecond by a thread."""
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        work()
    finally:
        stop.set()
        t.join()
    return (max(peak[0], _rss_bytes()) - base) / 2**20


def _in_fresh_process(child_fn: Callable[..., None], args: tuple, timeout: float) -> Any:
    """Run ``child_fn(*args, conn)`` in a spawned process; its ``("ok", value)`` reply, or None
    on an error reply, a timeout or a crash (the child is killed if it outlives the wait)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_fn, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    result = None
    if parent.poll(timeout):
        status, value = parent.recv()
        result = value if status == "ok" else None
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return result


def _memory_child(spec: RunnerSpec, warmup: int, conn: Any) -> None:
    try:
        import numpy  # noqa: F401  (import cost is not the model's)
        import onnxruntime  # noqa: F401
        import timm  # noqa: F401

        import fastvit  # noqa: F401

        if spec.backend.startswith("openvino"):
            import openvino  # noqa: F401

        def work() -> None:
            runner = build_runner(spec)
            for _ in range(max(1, warmup) + 3):
                runner.fn()

        conn.send(("ok", _peak_rss_increase_mb(work)))
    except Exception as e:  # report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def peak_memory_mb(spec: RunnerSpec, warmup: int = 2, timeout: float = 600.0) -> float | None:
    """Peak RSS increase (MiB) of building and running ``spec`` in a fresh process."""
    return _in_fresh_process(_memory_child, (spec, warmup), timeout)


def onnx_latency(
    paths: Sequence[str | os.PathLike],
    input_shape: Sequence[int],
    *,
    threads: int | None = None,
    rounds: int = 5,
) -> list[float]:
    """Median latency (ms) of each ONNX model on one input of ``input_shape``, timed
    interleaved (e.g. an fp32 model and its int8 quantization, side by side)."""
    import numpy as np

    from fastvit.export.onnx import ort_session

    x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(np.float32)
    fns = []
    for p in paths:
        sess = ort_session(p, threads=threads)
        feed = {sess.get_inputs()[0].name: x}
        fns.append(lambda s=sess, f=feed: s.run(None, f))
    timings = time_interleaved(fns, warmup=3, rounds=rounds, round_time=0.2)
    return [t.median_ms for t in timings]


def _callable_memory_child(
    build: Callable[..., Callable[[], Any]],
    args: tuple,
    prime: tuple | None,
    warmup: int,
    calls: int,
    conn: Any,
) -> None:
    try:
        import gc

        import timm  # noqa: F401  (import cost is not the model's)

        import fastvit  # noqa: F401

        if prime is not None:  # one-time costs (lazy imports, kernel set-up) are not either
            prime_fn = build(*prime)
            prime_fn()
            del prime_fn
            gc.collect()

        def work() -> None:
            fn = build(*args)
            for _ in range(max(1, warmup) + max(1, calls)):
                fn()

        conn.send(("ok", _peak_rss_increase_mb(work)))
    except Exception as e:  # report, never hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def peak_memory_of(
    build: Callable[..., Callable[[], Any]],
    *args: Any,
    prime: tuple | None = None,
    warmup: int = 1,
    calls: int = 2,
    timeout: float = 600.0,
) -> float | None:
    """Peak RSS increase (MiB) of ``fn = build(*args)`` plus ``warmup + calls`` calls of
    ``fn()``, in a fresh process (same method as :func:`peak_memory_mb`; ``build`` must be a
    module-level function so it can be sent to the child). ``prime``: arguments of a small
    instance built and run once before the baseline is taken, so one-time costs are excluded.
    ``None`` if the child failed."""
    return _in_fresh_process(_callable_memory_child, (build, args, prime, warmup, calls), timeout)
