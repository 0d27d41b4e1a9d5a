"""Keep torch's CPU thread count at the cores other processes leave free.

Why: torch runs each operation on all its OpenMP threads and waits at a barrier for the
slowest. When another CPU-bound process shares the cores, one of our threads is often
descheduled, and every one of the thousands of small operations in a decode step waits
for it (while the others spin). Measured on the 2-core benchmark machine (docs/benchmarks.md):
sampling 16 prompts took 3.1x longer next to one busy process with 2 threads, and
1.5x longer with 1 thread. The governor below notices the other load within a
second and uses only the cores it leaves free, returning to all of them when it ends.

The load of other processes is measured, not guessed: the CPU time the whole machine
spent busy (/proc/stat) minus this process's own CPU time, over the last interval.
Where /proc/stat is missing (not Linux) the governor keeps the thread count fixed.

The command line enables it (`enable()`; `ALIGNKIT_THREADS=N` fixes N threads instead,
and an explicit `OMP_NUM_THREADS`, which torchrun sets to 1 per process, is left alone);
library code calls `tick()` between operations, a no-op unless enabled.
"""

from __future__ import annotations

import os
import time

import torch

from alignkit.errors import AlignkitError

INTERVAL_S = 1.0
_governor: ThreadGovernor | None = None


def available_cores() -> int:
    """CPUs this process may run on (affinity mask, and a cgroup CPU quota if set)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores or 1)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (user, nice, system, irq,
    softirq), or None without /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def threads_for(cores: int, others_busy_cores: float) -> int:
    """Threads to use when other processes keep `others_busy_cores` cores busy: the
    cores left, rounded to nearest, at least 1."""
    return max(1, min(cores, int(cores - others_busy_cores + 0.5)))


class ThreadGovernor:
    """Sets torch.set_num_threads from the other processes' load, at most once per
    `interval` seconds. Call `tick()` from the thread that runs the torch operations
    (OpenMP thread counts are per calling thread)."""

    def __init__(self, cores: int | None = None, interval: float = INTERVAL_S, read=None):
        self.cores = cores or available_cores()
        self.interval = interval
        # read() -> (monotonic seconds, machine busy CPU seconds or None, own CPU seconds)
        self.read = read or (
            lambda: (time.monotonic(), machine_busy_seconds(), time.process_time())
        )
        self.clock = time.monotonic if read is None else (lambda: self.read()[0])
        self.last = self.read()
        torch.set_num_threads(self.cores)

    def tick(self) -> None:
        if self.clock() - self.last[0] < self.interval:
            return
        now = self.read()
        elapsed = now[0] - self.last[0]
        if now[1] is None:
            return
        others = ((now[1] - self.last[1]) - (now[2] - self.last[2])) / elapsed
        self.last = now
        wanted = threads_for(self.cores, max(0.0, others))
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)


def enable(setting: str | None = None) -> None:
    """Start governing threads (setting "auto", the default) or fix them ("N")."""
    global _governor
    setting = setting or os.environ.get("ALIGNKIT_THREADS")
    if setting is None and "OMP_NUM_THREADS" in os.environ:
        return  # an explicit OpenMP setting (torchrun sets 1 per process) is respected
    if setting in (None, "auto"):
        _governor = ThreadGovernor()
        return
    try:
        count = int(setting)
    except ValueError:
        raise AlignkitError(
            f"ALIGNKIT_THREADS must be 'auto' or a number of threads, got {setting!r}"
        ) from None
    if count < 1:
        raise AlignkitError(f"ALIGNKIT_THREADS must be at least 1, got {count}")
    torch.set_num_threads(count)
    _governor = None


def tick() -> None:
    """Adjust the thread count if the governor is on and its interval has passed."""
    if _governor is not None:
        _governor.tick()
