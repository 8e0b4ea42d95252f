"""The launcher's supervisor restarts crashed stages (real child processes) with a limit, and counts;
the drain keeps ingest alive until every acknowledged step is stored."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlplatform.stack.launcher import LaunchConfig, Progress, Stack, _drain
from rlplatform.stack.supervisor import StageFailed, Supervisor
from rlplatform.stack.view import _fmt_restarts
from rlplatform_client.retry import Backoff
from tests.support import Clock

CRASH = [sys.executable, "-c", "import sys; print('started', flush=True); sys.exit(3)"]
RUN = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def supervisor(tmp_path: Path, clock: Clock) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path, lambda: dict(os.environ), max_restarts=2, backoff=Backoff(1.0, 30.0), clock=clock)
    try:
        yield sup
    finally:
        for name in list(sup.procs):
            sup.terminate(name, timeout_s=5)
        assert all(proc.poll() is not None for proc in sup.procs.values())


def exited(sup: Supervisor, name: str) -> int:
    return sup.procs[name].wait(timeout=30)


def test_crashed_stage_is_restarted_after_backoff_up_to_the_limit(supervisor: Supervisor, clock: Clock) -> None:
    supervisor.spawn("trainer", CRASH, restartable=True)
    first = supervisor.procs["trainer"]
    assert exited(supervisor, "trainer") == 3

    supervisor.check()  # Crash seen: restart 1 is due in 1 s, not before.
    assert supervisor.procs["trainer"] is first and supervisor.restarts == {"trainer": 0}
    clock.now += 1.0
    supervisor.check()
    assert supervisor.procs["trainer"] is not first and supervisor.restarts == {"trainer": 1}

    assert exited(supervisor, "trainer") == 3
    supervisor.check()
    clock.now += 1.9  # The second restart waits twice as long.
    supervisor.check()
    assert supervisor.restarts == {"trainer": 1}
    clock.now += 0.1
    supervisor.check()
    assert supervisor.restarts == {"trainer": 2}

    assert exited(supervisor, "trainer") == 3
    with pytest.raises(StageFailed, match=r"trainer exited with code 3 after 2 restarts \(limit 2\); see .*log"):
        supervisor.check()
    assert (supervisor.logs / "trainer.log").read_text().count("started") == 3


def test_unlimited_check_restarts_beyond_the_limit_for_the_named_stages_only(
    supervisor: Supervisor, clock: Clock
) -> None:
    supervisor.spawn("ingest", CRASH, restartable=True)
    supervisor.spawn("trainer", CRASH, restartable=True)
    supervisor.restarts.update(ingest=2, trainer=2)  # Both have used up their restarts.
    assert exited(supervisor, "ingest") == exited(supervisor, "trainer") == 3
    clock.now += 100
    supervisor.check(stages=("ingest",), unlimited=True)  # Schedules the restart, after its backoff delay.
    assert supervisor.restarts == {"ingest": 2, "trainer": 2}
    clock.now += 30
    supervisor.check(stages=("ingest",), unlimited=True)
    assert supervisor.restarts == {"ingest": 3, "trainer": 2}


def test_an_optional_stage_out_of_restarts_is_left_stopped_and_the_others_go_on(
    supervisor: Supervisor, clock: Clock
) -> None:
    supervisor.spawn("dashboard", CRASH, optional=True)
    supervisor.spawn("ingest", RUN, restartable=True)
    supervisor.restarts["dashboard"] = 2  # its restarts used up
    assert exited(supervisor, "dashboard") == 3
    clock.now += 100
    supervisor.check()
    supervisor.check()  # found dead again: already given up, not restarted, not a failure
    assert supervisor.restarts == {"dashboard": 2, "ingest": 0} and "dashboard" in supervisor.stopped
    assert supervisor.procs["ingest"].poll() is None


def test_stage_that_may_not_restart_fails_at_once(supervisor: Supervisor) -> None:
    supervisor.spawn("clients", CRASH)
    exited(supervisor, "clients")
    with pytest.raises(StageFailed, match="clients exited with code 3; see"):
        supervisor.check()
    assert supervisor.restarts == {}


def test_running_and_deliberately_stopped_stages_are_left_alone(supervisor: Supervisor) -> None:
    supervisor.spawn("ingest", RUN, restartable=True)
    supervisor.spawn("clients", RUN)
    supervisor.check()
    assert supervisor.terminate("clients", timeout_s=5) is not None
    supervisor.check()
    assert supervisor.procs["ingest"].poll() is None and supervisor.restarts == {"ingest": 0}


def test_restart_limit_is_a_launch_setting_and_shown() -> None:
    assert LaunchConfig().max_restarts == 3
    assert _fmt_restarts({"ingest": 0, "trainer": 1}, 3) == "ingest 0/3, trainer 1/3"


# An ingest stand-in: crashes on its first start, then stores 22 transitions and keeps running.
FLAKY_INGEST = """
import sys, uuid
from pathlib import Path
import numpy as np
from rlplatform.store import TransitionBatch
from rlplatform.store.sqlite import SqliteStore
marker = Path(sys.argv[2])
if not marker.exists():
    marker.touch()
    sys.exit(1)
n = 22
obs = np.zeros((n, 4), np.float32)
batch = TransitionBatch(np.array([str(uuid.uuid4())] * n, dtype=object), np.arange(n), obs, np.zeros(n, np.int64),
    np.ones(n, np.float32), obs, np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64))
with SqliteStore(sys.argv[1]) as store:
    store.write("CartPole-v1", batch)
import time; time.sleep(120)
"""


@pytest.fixture
def acked_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack whose clients had 22 steps acknowledged, with a crashing ingest stand-in."""
    cfg = LaunchConfig(restart_backoff=Backoff(0.0, 0.0), drain_timeout_s=60)
    stack = Stack(cfg, tmp_path / "run")
    stack.supervisor.env = lambda: dict(os.environ)
    stack.client_stats_dir("CartPole-v1").mkdir(parents=True)
    (stack.client_stats_dir("CartPole-v1") / "client-0.json").write_text(json.dumps({"steps_acked": 22}))
    try:
        yield stack
    finally:
        stack.stop()


def test_drain_restarts_ingest_until_every_acknowledged_step_is_stored(acked_stack: Stack, tmp_path: Path) -> None:
    argv = [sys.executable, "-c", FLAKY_INGEST, str(acked_stack.settings.sqlite.path), str(tmp_path / "crashed")]
    acked_stack.supervisor.spawn("ingest", argv, restartable=True)
    acked_stack.supervisor.restarts["ingest"] = 3  # Out of restarts: the drain restarts it all the same.
    progress = Progress.of(acked_stack.cfg)
    _drain(acked_stack, acked_stack.cfg, progress)
    cartpole = progress.games["CartPole-v1"]
    assert cartpole.transitions_sent == cartpole.stored_rows == 22
    assert acked_stack.restarts == {"ingest": 4}


def test_drain_gives_up_after_its_timeout_and_says_how_far_it_got(acked_stack: Stack) -> None:
    cfg = dataclasses.replace(acked_stack.cfg, drain_timeout_s=0.5)
    acked_stack.supervisor.spawn("ingest", RUN, restartable=True)  # Alive, but stores nothing.
    with pytest.raises(TimeoutError, match="store holds 0 of 22 acknowledged CartPole-v1 transitions after 0.5 s"):
        _drain(acked_stack, cfg, Progress.of(cfg))
