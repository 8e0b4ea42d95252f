"""Unit tests talk to moto's in-process mock only: dummy credentials, no custom endpoints."""

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from rlplatform.settings import Settings

BUCKET = Settings.model_fields["bucket"].default


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        # A real endpoint override would route calls past moto's in-process mock.
        if name.startswith("AWS_ENDPOINT_URL") or name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """moto's in-process S3 with the settings' default bucket made."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
