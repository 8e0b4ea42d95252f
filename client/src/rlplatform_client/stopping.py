"""Stopping processes: stop events set by SIGTERM/SIGINT, safely, and children that die with their parent.

``Event.set()`` called inside a signal handler can deadlock: the handler runs in the main thread, and if the
signal lands while that thread holds the event's internal (non-reentrant) lock, inside ``stop.wait()`` between
waking up and returning, ``set()`` waits forever for a lock its own thread holds (the hazard of cpython#126434).
Simulated clients spend most of their time in ``stop.wait()``, and one of them once hung 90 s after SIGTERM,
until it was killed, without a line logged. The handler below only starts a thread that sets the event.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from typing import Any


def set_on_signals(stop: threading.Event, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> dict[int, Any]:
    """Make ``signums`` set ``stop``; returns the previous handlers (for ``signal.signal`` to restore)."""

    def handler(signum: int, _frame: Any) -> None:
        threading.Thread(target=stop.set, name=f"stop-on-signal-{signum}", daemon=True).start()

    return {signum: signal.signal(signum, handler) for signum in signums}


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, so a crashed starter leaves nothing behind."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
