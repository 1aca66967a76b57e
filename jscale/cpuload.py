"""How much of this machine's CPU other processes took while jscale timed or trained something.

Wall times read on a shared CPU are longer than on an idle one (the long tier's sweeps, which shared 2 cores with
another job, took about 4x their estimate, part of it from the sharing), so `jscale run` and `jscale plan` say so.
Linux only (/proc/stat); elsewhere nothing is said. Other processes' CPU time = the machine's busy time less this
process's own (its threads and the children it waited for, such as `--workers`).
"""

from __future__ import annotations

import os
import time

NOTE_SHARE = 0.1  # from this share of the cores taken by other processes on, a timing says so


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_shares(workers: int, cpus: list[int] | None = None) -> list[list[int]] | None:
    """The CPU cores each worker runs on: equal, disjoint shares of this process's cores (leftovers unused, so that
    every worker has as many threads and computes the same bits); None (no pinning) where there are fewer cores
    than workers or the platform cannot pin."""
    if cpus is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
    per = len(cpus) // workers
    return [cpus[i * per:(i + 1) * per] for i in range(workers)] if per >= 1 else None


def _busy_s() -> float | None:
    """Seconds of CPU the whole machine has spent busy since boot (/proc/stat), or None where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Others:
    """Started on creation; share() is the fraction of this machine's cores other processes used since."""

    def __init__(self):
        self.wall, self.busy, self.own = time.perf_counter(), _busy_s(), _own_s()

    def share(self) -> float | None:
        busy = _busy_s()
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        others = (busy - self.busy) - (_own_s() - self.own)
        return min(1.0, max(0.0, others / (wall * cores())))


def note(share: float | None, consequence: str, now: bool = False) -> str:
    """"other processes used 55% of the 2 cores meanwhile: <consequence>" ("are using ... now" with now), or ""
    below NOTE_SHARE or where unknown."""
    if share is None or share < NOTE_SHARE:
        return ""
    used = "are using" if now else "used"
    return f"other processes {used} {100 * share:.0f}% of the {cores()} cores {'now' if now else 'meanwhile'}: " \
           f"{consequence}"


def now(seconds: float = 0.25) -> float | None:
    """The share other processes take of the cores right now, sampled over `seconds` (this process sleeping)."""
    o = Others()
    time.sleep(seconds)
    return o.share()
