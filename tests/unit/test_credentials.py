"""A game's credentials come from a refresh hook: fetched at the first request and again before they expire."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from rlplatform_client import ExperienceProducer, TemporaryCredentials, refreshing_session


def test_credentials_are_fetched_when_first_needed_and_again_before_they_expire() -> None:
    fetched: list[str] = []

    def fetch() -> TemporaryCredentials:
        key = f"ASIAPLAYER{len(fetched)}"
        fetched.append(key)
        lifetime = timedelta(minutes=5) if len(fetched) == 1 else timedelta(hours=1)  # the first: about to expire
        return TemporaryCredentials(key, "secret", "token", datetime.now(UTC) + lifetime)

    session = refreshing_session(fetch, region_name="us-east-1")
    assert fetched == []  # nothing is fetched before a request needs it
    with mock_aws():
        boto3.client("kinesis", region_name="us-east-1").create_stream(StreamName="exp", ShardCount=1)
        producer = ExperienceProducer("exp", "CartPole-v1", "player-1", kinesis=session.client("kinesis"))
        producer.record(str(uuid.uuid4()), 0, [0.0] * 4, 1, 1.0, [0.0] * 4, True, False, 0)
        assert producer.close(timeout=30)
        assert producer.stats["steps_acked"] == 1
    assert fetched == ["ASIAPLAYER0", "ASIAPLAYER1"]  # the first expired within botocore's refresh window
    assert session.get_credentials().get_frozen_credentials().access_key == "ASIAPLAYER1"


def test_naive_expiration_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TemporaryCredentials("a", "b", None, datetime.now())
