"""The aws profile speaks only the public AWS API: no endpoint override, no emulator-only call."""

from __future__ import annotations

from urllib.parse import urlparse

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app


@pytest.fixture
def requested_hosts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts of every request any boto3 client sends during the test."""
    hosts: list[str] = []
    original = boto3.session.Session.client

    def client(self, *args, **kwargs):
        c = original(self, *args, **kwargs)
        c.meta.events.register("before-send", lambda request, **_: hosts.append(urlparse(request.url).hostname))
        return c

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return hosts


def test_bootstrap_aws_profile_uses_only_public_aws_endpoints(requested_hosts: list[str]) -> None:
    with mock_aws():
        result = CliRunner().invoke(app, ["bootstrap", "--profile", "aws"], env={"RLP_STREAM_NAME": "prod-exp"})
        assert result.exit_code == 0, result.output
        assert boto3.client("kinesis").describe_stream_summary(StreamName="prod-exp")
        assert "rlp-models" in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert requested_hosts
    assert all(h.endswith(".amazonaws.com") for h in requested_hosts), sorted(set(requested_hosts))


def test_bootstrap_aws_profile_refuses_endpoint_overrides() -> None:
    result = CliRunner().invoke(
        app, ["bootstrap", "--profile", "aws"], env={"AWS_ENDPOINT_URL_KINESIS": "http://localhost:4566"}
    )
    assert result.exit_code != 0
    assert "AWS_ENDPOINT_URL_KINESIS" in result.output
