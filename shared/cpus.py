"""How many CPUs this process may run on: the default number of worker processes of both halves."""

from __future__ import annotations

import os


def usable_cpus(most: int) -> int:
    """The CPUs in this process's affinity mask (os.cpu_count() unless taskset or systemd's
    CPUAffinity= narrowed it), between 1 and ``most``."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, min(count, most))
