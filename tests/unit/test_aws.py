"""Bootstrap is idempotent and speaks only the plain AWS API (moto's in-process mock, no endpoint)."""

from __future__ import annotations

import boto3
from moto import mock_aws

from rlplatform import aws
from rlplatform.settings import Settings


def test_bootstrap_creates_stream_and_bucket_and_is_idempotent() -> None:
    settings = Settings(stream_name="exp", bucket="models-bucket", shard_count=3)
    with mock_aws():
        aws.bootstrap(settings)
        aws.bootstrap(settings)  # a second run (restart, another service) changes nothing
        summary = boto3.client("kinesis").describe_stream_summary(StreamName="exp")["StreamDescriptionSummary"]
        assert summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 3
        assert [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]] == ["models-bucket"]


def test_moto_server_runs_in_its_own_process_and_stops() -> None:
    server = aws.MotoServer.start()
    try:
        assert server.process.poll() is None
        assert server.env()["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
    assert server.process.poll() is not None
