"""Backoff delays double up to a cap; ``retry`` waits out unreachable endpoints and nothing else."""

from __future__ import annotations

import logging
import random
import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from rlplatform_client.retry import Backoff, RetryStopped, aws_unreachable, retry


class NoWait(threading.Event):
    """A stop event whose waits return at once (not set), recording the delays asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.delays.append(timeout)
        return self.is_set()


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [Backoff(1, 30).delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(1, 30).delay(10_000) == 30
    with pytest.raises(ValueError, match="failures must be >= 1"):
        Backoff().delay(0)


def test_backoff_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    delays = [Backoff(1, 8, jitter=True).delay(n, rng) for n in (1, 3, 9) for _ in range(200)]
    assert min(delays) >= 0 and max(delays[:200]) <= 1 and max(delays[200:400]) <= 4 and max(delays) <= 8
    assert len(set(delays)) > 500


def test_retry_waits_out_unreachable_endpoint_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = [EndpointConnectionError(endpoint_url="http://s3"), EndpointConnectionError(endpoint_url="x"), "ok"]

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    stop = NoWait()
    with caplog.at_level(logging.WARNING):
        result = retry(call, service="S3", endpoint="http://127.0.0.1:1", unreachable=aws_unreachable, stop=stop)
    assert result == "ok" and stop.delays == [1, 2]
    assert "S3 unreachable at http://127.0.0.1:1, retrying in 1 s" in caplog.text
    assert "S3 unreachable at http://127.0.0.1:1, retrying in 2 s" in caplog.text
    assert "S3 reachable again at http://127.0.0.1:1 after 2 failures" in caplog.text


def test_retry_raises_other_errors_at_once() -> None:
    def call() -> None:
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get")

    stop = NoWait()
    with pytest.raises(ClientError):
        retry(call, service="S3", endpoint="e", unreachable=aws_unreachable, stop=stop)
    assert stop.delays == []


def test_retry_gives_up_when_stopped() -> None:
    stop = NoWait()
    stop.set()

    def call() -> None:
        raise EndpointConnectionError(endpoint_url="e")

    with pytest.raises(RetryStopped, match="stopped while S3 was unreachable at e") as info:
        retry(call, service="S3", endpoint="e", unreachable=aws_unreachable, stop=stop)
    assert isinstance(info.value.__cause__, EndpointConnectionError)


def test_aws_unreachable_accepts_server_errors_and_throttling_only() -> None:
    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert aws_unreachable(client_error("InternalError", 500))
    assert aws_unreachable(client_error("SlowDown", 503))
    assert aws_unreachable(client_error("ThrottlingException", 400))
    assert not aws_unreachable(client_error("NoSuchKey", 404))
    assert not aws_unreachable(ValueError("bad"))
