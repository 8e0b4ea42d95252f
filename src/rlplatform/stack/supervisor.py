"""Supervision of a stack's child processes: a crashed stage is restarted with its own command, within limits.

Restartable stages resume from their own checkpoints (ingest from Spark's, the trainer from its learner
checkpoint), so a restart costs time, never data.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path

from rich.console import Console

from rlplatform.infra import processes
from rlplatform_client.retry import Backoff

console = Console(stderr=True)


class StageFailed(RuntimeError):
    """A stage exited and may not (or may no longer) be restarted."""


class Supervisor:
    """Child processes by stage name; a crashed restartable stage is started again with the same command.

    A restart waits ``backoff.delay(n)`` after the crash was seen (a stage that crashes at start does not
    spin), and each stage gets at most ``max_restarts``; ``check`` raises ``StageFailed`` beyond that, except for
    an optional stage (one the run does not need, such as the dashboard), which is then left stopped.
    """

    def __init__(
        self,
        logs: Path,
        env: Callable[[], dict[str, str]],
        max_restarts: int,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logs = logs
        self.env = env
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.clock = clock
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}  # restartable stages only
        self.stopped: set[str] = set()  # deliberately terminated, so not a failure when found dead
        self.optional: set[str] = set()
        self._argv: dict[str, list[str]] = {}
        self._restart_at: dict[str, float] = {}

    def spawn(self, name: str, argv: list[str], restartable: bool = False, optional: bool = False) -> None:
        """Start ``name``; a restartable or optional stage is restarted when it crashes."""
        self._argv[name] = argv
        if restartable or optional:
            self.restarts.setdefault(name, 0)
        if optional:
            self.optional.add(name)
        self._start(name)

    def check(self, stages: Collection[str] | None = None, unlimited: bool = False) -> None:
        """Restart crashed restartable stages (of ``stages``; all by default) that are due; raise
        ``StageFailed`` for a crash that may not be restarted. ``unlimited`` ignores the restart limit."""
        for name, proc in list(self.procs.items()):
            if (stages is None or name in stages) and name not in self.stopped and proc.poll() is not None:
                self._restart(name, proc.returncode, unlimited)

    def terminate(self, name: str, timeout_s: float = 90.0) -> int | None:
        proc = self.procs.get(name)
        self.stopped.add(name)
        return None if proc is None else processes.stop(proc, timeout_s)

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _restart(self, name: str, code: int, unlimited: bool) -> None:
        restarts = self.restarts.get(name)
        if restarts is None:
            raise StageFailed(f"{name} exited with code {code}; see {self.log_path(name)}")
        if restarts >= self.max_restarts and not unlimited:
            failure = (
                f"{name} exited with code {code} after {restarts} restarts (limit {self.max_restarts}); "
                f"see {self.log_path(name)}"
            )
            if name not in self.optional:
                raise StageFailed(failure)
            console.print(f"[red]{failure}; the run goes on without it[/]")
            self.stopped.add(name)
            return
        if name not in self._restart_at:
            delay = self.backoff.delay(restarts + 1)
            self._restart_at[name] = self.clock() + delay
            console.print(f"[yellow]{name} exited with code {code}; restart {restarts + 1} in {delay:.0f} s[/]")
        if self.clock() < self._restart_at[name]:
            return
        del self._restart_at[name]
        processes.stop(self.procs[name], timeout_s=5)  # reaps what the dead leader left (e.g. its JVM)
        self.restarts[name] = restarts + 1
        self._start(name)

    def _start(self, name: str) -> None:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child owns it from here on
        self.procs[name] = processes.spawn(
            self._argv[name], env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
