"""Bootstrap is idempotent and speaks only the plain AWS API (moto's in-process mock, no endpoint)."""

from __future__ import annotations

import os
import threading

import boto3
from moto import mock_aws

from rlplatform.infra import aws
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
    before = dict(os.environ)
    server = aws.MotoServer.start()
    try:
        assert server.process.poll() is None
        server.apply_env()
        assert os.environ["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert dict(os.environ) == before, "stop() must undo apply_env()"


def test_clients_are_made_once_per_endpoint_and_retry_policy(monkeypatch) -> None:
    """Threads share one client; another endpoint or ``fail_fast`` gets a client that reaches it."""
    first = aws.s3_client()
    shared: list = []
    threads = [threading.Thread(target=lambda: shared.append(aws.s3_client())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(client is first for client in shared) and aws.kinesis_client() is not first

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    moved = aws.s3_client()
    assert moved is not first and moved.meta.endpoint_url == "http://127.0.0.1:1234"
    monkeypatch.setattr(aws, "_config", aws._FAIL_FAST)
    patient = moved.meta.config.retries["total_max_attempts"]
    assert aws.s3_client().meta.config.retries["total_max_attempts"] < patient


def test_embedded_environment_drops_the_users_own_aws_settings() -> None:
    """A shell with AWS_ENDPOINT_URL_S3 or AWS_PROFILE must not pull the embedded stack elsewhere."""
    server = aws.MotoServer(port=1234, process=None)  # type: ignore[arg-type] - env() needs no process
    user_shell = {
        "PATH": "/usr/bin",
        "AWS_ENDPOINT_URL_S3": "https://s3.example.com",
        "AWS_ENDPOINT_URL_KINESIS": "https://kinesis.example.com",
        "AWS_PROFILE": "prod",
        "AWS_SESSION_TOKEN": "token",
        "AWS_ACCESS_KEY_ID": "real",
    }
    env = server.env(user_shell)
    assert env["PATH"] == "/usr/bin"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234"
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert not {k for k in env if k.startswith("AWS_ENDPOINT_URL_")}
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert env["AWS_CONFIG_FILE"] == env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull


def test_the_capped_get_records_reads_what_the_installed_moto_stores() -> None:
    """The server swaps in its own ``Shard.get_records``: it must keep working with the moto installed (a patch
    release that changed how records are stamped made every GetRecords an internal error)."""
    from moto.kinesis.models import Shard

    from rlplatform.infra.moto_server import _get_records_capped

    shard = Shard(0, "0", str(2**128 - 1), "123456789012", "us-east-1")
    for n in range(3):
        shard.put_record(f"key-{n}", b"eyJhIjogMX0=", None)  # moto keeps data base64-encoded
    records, last, behind_ms = _get_records_capped(shard, "0", limit=2)
    assert [r.partition_key for r in records] == ["key-0", "key-1"] and last == 2 and behind_ms >= 0
    assert _get_records_capped(shard, str(last), limit=None)[0][0].partition_key == "key-2"
