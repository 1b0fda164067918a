"""CPU time per process tree, from /proc (Linux): where a benchmark phase's cycles went.

A component is a root pid and everything below it (PostgreSQL's backends are children of the
postmaster). Its CPU time is the sum, over its live processes, of user + system time plus the
time of children they have already reaped; a backend that exits between two samples moves
from its own entry into its parent's reaped-children time, so the total stays continuous.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# The column of CPU time used by processes outside the measured trees (other work on the
# machine: a noisy neighbour shows up here).
OUTSIDE = "outside"


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based
    # from the state field.
    return int(fields[1]), sum(int(value) for value in fields[11:15]) / TICKS


def _table() -> dict[int, tuple[int, float]]:
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree. A root's reaped-children time
    counts for it, so a named child that has exited is counted twice: name live processes."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    # A tree stops where another named tree starts (the mesh's processes are children of the
    # benchmark's, which is measured as a component of its own).
    other_roots = set(roots.values())
    used: dict[str, float] = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                total += table[pid][1]
            todo.extend(child for child in children.get(pid, ()) if child not in other_roots)
        used[name] = total
    return used


class CpuMeter:
    """Samples the named process trees at the start and end of each phase."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = dict(roots)
        self.phases: list[tuple[str, float, int, dict[str, float]]] = []
        self._start: dict[str, float] = {}

    def sample(self, exclude: tuple[str, ...] = ()) -> dict[str, float]:
        """CPU seconds used so far per component (but those excluded)."""
        return cpu_seconds({n: pid for n, pid in self.roots.items() if n not in exclude})

    def start(self) -> None:
        self._start = {**cpu_seconds(self.roots), OUTSIDE: machine_busy_seconds()}

    def stop(self, phase: str, wall_seconds: float, readings: int) -> None:
        end = cpu_seconds(self.roots)
        used = {name: end[name] - self._start.get(name, 0.0) for name in self.roots}
        machine = machine_busy_seconds() - self._start[OUTSIDE]
        used[OUTSIDE] = max(0.0, machine - sum(used.values()))
        self.phases.append((phase, wall_seconds, readings, used))

    def report(self) -> list[str]:
        """A table: per phase, wall time, CPU seconds per component and outside them, and the
        CPU per reading of the components together."""
        names = [*self.roots, OUTSIDE]
        head = f"| {'phase':<10} | {'wall s':>6} | " + " | ".join(f"{n:>9}" for n in names)
        head += f" | {'all':>6} | {'us/reading':>10} |"
        rule = "|".join("-" * len(part) for part in head.split("|")[1:-1])
        lines = [head, f"|{rule}|"]
        for phase, wall, readings, used in self.phases:
            total = sum(value for name, value in used.items() if name != OUTSIDE)
            lines.append(
                f"| {phase:<10} | {wall:>6.2f} | "
                + " | ".join(f"{used[n]:>9.2f}" for n in names)
                + f" | {total:>6.2f} | {1e6 * total / max(readings, 1):>10.2f} |"
            )
        return lines
