"""Joining or starting a Ray cluster from a process that stops on SIGTERM by itself."""

from __future__ import annotations

import signal
import threading
from typing import Any

import ray


def init_ray(address: str | None = None, **options: Any) -> None:
    """``ray.init(address, **options)`` that leaves this process's SIGTERM handler as it was.

    ``ray.init`` replaces the handler with one that exits at once (a local Ray's first kills the cluster), so a
    stopped training service would leave its trainers unstopped and their status unwritten, and a stopped trainer
    would not finish its update.
    """
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, **options)
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, previous)
