"""SIGTERM/SIGINT set a stop event even while the main thread is waiting on that event."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

WAITER = """
import threading
from rlplatform_client.stopping import set_on_signals
stop = threading.Event()
set_on_signals(stop)
print("ready", flush=True)
while not stop.wait(0.0005):  # in and out of the event's internal lock all the time, as game loops are
    pass
print("stopped", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_main_thread_that_waits_on_the_event(signum: int) -> None:
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            proc.send_signal(signum)
            out, _ = proc.communicate(timeout=20)
            assert out == "stopped\n" and proc.returncode == 0
        finally:
            proc.kill()
            proc.wait()
