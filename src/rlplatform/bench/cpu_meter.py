"""CPU time of processes on this machine, from ``/proc``: what ``rlplatform bench ingest`` charges to the Spark
driver and to the executors, and ``rlplatform bench store`` to a Cassandra node, per transition."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from rlplatform.infra.processes import proc_stat

_TICK = os.sysconf("SC_CLK_TCK")
# A Spark executor's JVM; its Python workers (which read, parse and write) are its descendants.
EXECUTOR_MAIN = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 once it is gone)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def with_descendants(pids: Iterable[int]) -> set[int]:
    tree, found, todo = _children(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(tree.get(pid, []))
    return found


def _running(main_class: str) -> list[int]:
    """Processes on this machine whose command line names ``main_class``."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and main_class.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def executor_pids() -> set[int]:
    """Every Spark executor on this machine with its descendants."""
    return with_descendants(_running(EXECUTOR_MAIN))


def cassandra_pids() -> set[int]:
    """Every Cassandra node running on this machine (none when the cluster is elsewhere)."""
    return set(_running(CASSANDRA_MAIN))


class CpuMeter:
    """CPU seconds that the processes ``pids()`` names used since ``start``. Processes are listed at the start and
    at the end: one born in between counts whole, one that ended in between is missed."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids
        self.at_start: dict[int, float] = {}

    def start(self) -> CpuMeter:
        self.at_start = {pid: cpu_seconds(pid) for pid in self.pids()}
        return self

    def seconds(self) -> float:
        return sum(max(0.0, cpu_seconds(pid) - self.at_start.get(pid, 0.0)) for pid in self.pids())
