"""How much of the machine other processes are using now: a speed gate measured on a busy machine gates
the load, not gradlab (two busy loops moved scratch/fused GRU from 0.96 to 1.72 on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

BUSY = 0.25  # others using more than a quarter of the CPUs: too busy to gate a speed ratio


def _busy_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot (Linux), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class OthersMeter:
    """The share of all CPUs that processes other than this one kept busy since it was made (Linux)."""

    def __init__(self):
        self.start, self.own = _busy_ticks(), os.times()

    def share(self) -> float | None:
        if self.start is None:
            return None
        now, own = _busy_ticks(), os.times()
        total = now[1] - self.start[1]
        if total <= 0:
            return None
        own_ticks = (own.user + own.system - self.own.user - self.own.system) * os.sysconf("SC_CLK_TCK")
        return max(0.0, (now[0] - self.start[0] - own_ticks) / total)
