"""The README main job (`fastvit train` on the digits) under one competing 2-thread process.

Compares, interleaved in one run, PyTorch's default thread count (one per core: what every
command used before automatic thread selection, reproduced with ``--threads <cores>``) with the
automatic choice (no ``--threads``: CPUs available minus the load, see ``fastvit.threads``).
A 2-thread matrix-multiply loop runs in the background the whole time. Prints wall-clock
seconds per run, the ratio, and the machine load before and after (``uptime``).

    PYTHONPATH=src python benchmarks/bench_threads.py --epochs 1 --batches 10 --repeats 1

Measured 2026-11-27 on the shared 2-core machine (load 16.6 before, 16.9 after; 2-thread
competitor running), ``--epochs 1 --batches 10 --repeats 1``: torch default (2 threads)
1148.5 s, automatic choice (1 thread) 287.0 s: 4.0x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a = (a @ a).tanh_()
"""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_job(threads: int | None, epochs: int, batches: int | None, out: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "fastvit.cli.main",
        "train",
        "--epochs",
        str(epochs),
        "--no-tensorboard",
        "--no-plot",
        "--no-progress",
        "--output",
        str(out),
    ]
    if batches:
        cmd += ["--limit-train-batches", str(batches), "--limit-val-batches", str(batches)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {proc.stderr.strip()[-400:]}")
    setup = next((ln for ln in proc.stdout.splitlines() if ln.startswith("training ")), "")
    choice = setup[setup.find(", threads") : setup.find(" -> ")] if ", threads" in setup else ""
    print(f"    {seconds:.1f} s{choice}", flush=True)  # e.g. "287.0 s, threads 1 (auto; ...)"
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="10 = the README main job")
    p.add_argument("--batches", type=int, default=None, help="limit batches per epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-competitor", action="store_true")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"before: {uptime()}")
    comp = None
    if not args.no_competitor:
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR])
        time.sleep(3)
    times: dict[str, list[float]] = {"default": [], "auto": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for name, threads in (("default", cores), ("auto", None)):
                    print(f"  {name} #{i + 1}", flush=True)
                    times[name].append(
                        run_job(threads, args.epochs, args.batches, Path(tmp) / f"{name}{i}")
                    )
    finally:
        if comp is not None:
            comp.terminate()
            comp.wait()
    print(f"after:  {uptime()}")
    d, a = statistics.median(times["default"]), statistics.median(times["auto"])
    print(f"torch default ({cores} threads): {', '.join(f'{t:.1f}' for t in times['default'])} s")
    print(f"automatic choice:               {', '.join(f'{t:.1f}' for t in times['auto'])} s")
    print(f"median ratio default / auto: {d / a:.2f}x")


if __name__ == "__main__":
    main()
