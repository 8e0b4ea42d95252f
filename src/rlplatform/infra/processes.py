"""Child processes that never outlive their starter and are not hit by the terminal's Ctrl-C."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
from pathlib import Path

from rlplatform_client.stopping import die_with_parent


def init_pool_worker() -> None:
    """Initializer for worker processes of a pool: die with the parent, and leave Ctrl-C to the parent, which
    stops its workers in order (a worker killed by SIGINT would fail the work in flight)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def freeze_heap() -> None:
    """Leave the objects alive now (modules, clients, a store) out of every later garbage collection.

    Spark's reused Python workers run a full ``gc.collect()`` after every task (``pyspark/daemon.py``); with
    boto3, pyarrow and a store loaded that scan took ~130 ms of CPU per task, the larger part of ingest's CPU
    at a few hundred steps/s. Frozen, the collection after a task scans only that task's objects. Called once
    a worker's long-lived objects exist; a later call freezes what was created since.
    """
    gc.collect()  # garbage existing now is freed, not frozen
    gc.freeze()


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen:
    """Start ``argv`` in its own session: Ctrl-C reaches only the starter, which stops children in order."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent, **kwargs)


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM the leader (it shuts its own children down), SIGKILL after ``timeout_s``, then reap the
    rest of its session (e.g. a JVM the leader started)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    kill_session(proc.pid)
    return proc.returncode


def kill_session(sid: int) -> None:
    """SIGKILL every process in session ``sid``; one that exits between the listing and the kill is fine."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def session_members(sid: int) -> list[int]:
    """Processes still in session ``sid``: what the leader started, whatever process group they
    moved to (Ray workers make their own group, so killing the leader's group is not enough)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := proc_stat(int(entry.name))) is None:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6, the session id; zombies are dead, just not reaped
            members.append(int(entry.name))
    return members


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None once the process is gone. Split after the
    ")" that closes the command name, which may itself hold spaces and parentheses."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def interrupt_on_sigterm() -> None:
    """SIGTERM (and Ctrl-C, even in a background job, which inherits SIGINT ignored) raise KeyboardInterrupt,
    so a command's ``finally`` blocks stop what it started."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
