"""Exponential backoff, and waiting out an unreachable endpoint: one helper for every stage.

It lives in the client package because clients back off too and must not import the platform; the
platform imports it from here.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

T = TypeVar("T")
log = logging.getLogger(__name__)
# Error codes that mean "slow down" (Kinesis reads are limited per shard), not "your request is wrong".
_THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "ProvisionedThroughputExceededException"}
)


@dataclass(frozen=True)
class Backoff:
    """Delays that double from ``base_s`` up to ``cap_s``.

    ``jitter`` draws each delay uniformly from [0, delay] ("full jitter"): many clients failing at
    once then spread their retries instead of hitting the service again in lockstep.
    """

    base_s: float = 1.0
    cap_s: float = 30.0
    jitter: bool = False

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` (>= 1) consecutive failures."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        ceiling = min(self.cap_s, self.base_s * 2 ** min(failures - 1, 64))
        return (rng or random).uniform(0.0, ceiling) if self.jitter else ceiling


class RetryStopped(Exception):
    """``stop`` was set while waiting to retry; the last failure is the ``__cause__``."""


def aws_unreachable(exc: BaseException) -> bool:
    """Worth waiting for: no connection, a timeout, or the service's own 5xx/throttling."""
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in _THROTTLED
    return False


def retry(
    call: Callable[[], T],
    *,
    service: str,
    endpoint: str,
    unreachable: Callable[[BaseException], bool],
    stop: threading.Event | None = None,
    backoff: Backoff = Backoff(),
    logger: logging.Logger = log,
) -> T:
    """``call()`` until it returns, waiting out failures that ``unreachable`` accepts.

    Every other exception propagates at once. Logs "<service> unreachable at <endpoint>, retrying in
    N s" per failure and one line when it is reachable again. Raises ``RetryStopped`` when ``stop`` is
    set during a wait, so a stopping process does not hang on a dead endpoint.
    """
    waiter = stop or threading.Event()
    failures = 0
    started = time.monotonic()
    while True:
        try:
            result = call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            failures += 1
            delay = backoff.delay(failures)
            logger.warning("%s unreachable at %s, retrying in %.0f s (%s)", service, endpoint, delay, exc)
            if waiter.wait(delay):
                raise RetryStopped(f"stopped while {service} was unreachable at {endpoint}") from exc
            continue
        if failures:
            logger.warning(
                "%s reachable again at %s after %d failures (%.0f s)",
                service,
                endpoint,
                failures,
                time.monotonic() - started,
            )
        return result
