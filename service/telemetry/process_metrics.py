"""``process_*`` metrics for the whole service: every process of it, added up.

The service is several processes (the supervisor, the engine core, the API servers), so
one process's own figures would under-report it. This collector reads each one's figures
with prometheus_client's own :class:`ProcessCollector` and adds them up: CPU seconds,
resident and virtual memory, open file descriptors. The start time is the supervisor's,
and the descriptor limit the one process's own (they are per process, not additive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

#: The figures that add up across processes; the others are taken from the root process.
_ADDITIVE = {
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
}


class ServiceProcessCollector(Collector):
    def __init__(self, root_pid: int, proc: Path = Path("/proc")) -> None:
        self._root = root_pid
        self._proc = proc

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, Metric] = {}
        for pid in service_pids(self._root, self._proc):
            one = ProcessCollector(pid=_constant(pid), proc=str(self._proc), registry=None)
            for family in one.collect():
                if family.name not in totals:
                    totals[family.name] = family
                elif family.name in _ADDITIVE and family.samples:
                    kept = totals[family.name]
                    total = kept.samples[0].value + family.samples[0].value
                    kept.samples[0] = kept.samples[0]._replace(value=total)
        yield from totals.values()
        yield GaugeMetricFamily(
            "ff_service_processes", "Processes of the service (supervisor, engine core, "
            "API servers)", value=len(service_pids(self._root, self._proc)),
        )  # fmt: skip


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def service_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    """``root`` and every process below it (Linux /proc); the root first."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found
