"""How many CPU threads to use: the CPUs this process may run on, minus what others keep busy.

PyTorch starts one OpenMP thread per core it sees. When another process keeps some of those
cores busy, OpenMP's spinning threads wait on each other and a job can run 20x slower instead of
2x. So every command picks its thread count from:

* the CPUs available to the process: the affinity mask (``taskset``, ``docker --cpuset-cpus``)
  and the cgroup CPU quota (``docker --cpus``, Kubernetes limits), not ``os.cpu_count()``;
* the current load: the CPUs other processes keep busy during a 0.2 s sample of /proc/stat,
  or the threads runnable at that instant when more (not the 1-minute load average: it lags a
  job that just started or ended by a minute).

``--threads N`` overrides the choice; the setup line of each command prints it, and a warning
says when the machine is oversubscribed (more runnable threads than CPUs).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fastvit.errors import ConfigError


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 cfs files); None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _busy_cpus(interval: float = 0.2) -> float | None:
    """CPUs kept busy by other processes right now, sampled from /proc/stat over ``interval``."""

    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        t0, i0 = snapshot()
        own0 = time.process_time()
        time.sleep(interval)
        t1, i1 = snapshot()
        own = time.process_time() - own0
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    ncpu = os.cpu_count() or 1
    busy = (1.0 - (i1 - i0) / (t1 - t0)) * ncpu  # in CPUs, all processes
    return max(0.0, busy - own / interval)


def _runnable_others() -> int | None:
    """Threads of other processes runnable at this instant (/proc/loadavg's 4th field, minus
    the one reading it)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def current_load(sample: float = 0.2) -> float | None:
    """Threads other processes keep runnable now: the larger of the CPUs they kept busy over a
    ``sample``-second window and the threads runnable at this instant.

    The 1-minute load average is only the fallback where /proc is missing: it lags both ways
    (it keeps counting a job that ended a minute ago, so a command run right after another got
    one thread on an idle machine) and in some containers it never falls below ~1 on an idle
    host.
    """
    values = [v for v in (_busy_cpus(sample), _runnable_others()) if v is not None]
    if values:
        return float(max(values))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a command uses and why."""

    threads: int
    cpus: int
    load: float | None
    requested: bool  # given with --threads

    @property
    def oversubscribed(self) -> bool:
        """More runnable threads (others' load plus ours) than CPUs."""
        return self.load is not None and self.load + self.threads > self.cpus + 0.5

    def describe(self) -> str:
        """'threads 1 (2 CPUs available, load 2.3)' for the setup line."""
        load = f", load {self.load:.1f}" if self.load is not None else ""
        how = "--threads" if self.requested else "auto"
        return f"threads {self.threads} ({how}; {self.cpus} CPUs available{load})"

    def warning(self, timed: bool = True) -> str | None:
        """A one-line warning when the machine is oversubscribed, else None.

        With ``timed=False`` (a command that reports no speed) only an explicit ``--threads``
        that oversubscribes is worth a warning: the automatic choice already did what it could.
        """
        if not self.oversubscribed or (not timed and not self.requested):
            return None
        assert self.load is not None
        hint = (
            "fewer --threads may be faster"
            if self.requested and self.threads > 1
            else "timings will be slower and noisier than on an idle machine"
        )
        return (
            f"the machine is busy (load {self.load:.1f} on {self.cpus} CPUs) and this "
            f"process uses {self.threads} thread{'s' if self.threads > 1 else ''}; {hint}"
        )


def choose_threads(
    requested: int | None = None, *, cpus: int | None = None, load: float | None = None
) -> ThreadChoice:
    """The thread count for a command: ``requested`` if given, else the idle CPUs (at least 1).

    ``cpus``/``load`` default to :func:`available_cpus` / :func:`current_load` (tests pass them).
    """
    if requested is not None and requested < 1:
        raise ConfigError(f"--threads must be at least 1, got {requested}")
    cpus = available_cpus() if cpus is None else cpus
    load = current_load() if load is None else load
    if requested is not None:
        return ThreadChoice(int(requested), cpus, load, True)
    busy = 0.0 if load is None else load
    idle = math.floor(cpus - busy + 0.5)  # CPUs the others leave free
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun processes here
    return ThreadChoice(max(1, min(cpus, idle) // procs), cpus, load, False)


def apply_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count and give it to PyTorch (intra-op); return the choice.

    Without ``requested`` the choice never exceeds PyTorch's current setting: a program (or a
    test) that already lowered it, e.g. ``torch.set_num_threads(1)``, keeps its value.
    """
    import dataclasses

    import torch

    choice = choose_threads(requested)
    if requested is None and choice.threads > torch.get_num_threads():
        choice = dataclasses.replace(choice, threads=torch.get_num_threads())
    torch.set_num_threads(choice.threads)
    return choice
