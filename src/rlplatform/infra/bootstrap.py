"""Idempotent creation of the Kinesis stream and the S3 bucket, on boto3 alone.

No other rlplatform import on purpose: LocalStack runs this very file from its init hook
(``compose/localstack/ready.d``), so the emulator, moto and real AWS are set up by the same code.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError


def bootstrap(stream_name: str, shard_count: int, bucket: str, kinesis: Any = None, s3: Any = None) -> None:
    """Create the stream (waiting until ACTIVE) and the bucket unless they already exist."""
    kinesis = kinesis or boto3.client("kinesis")
    s3 = s3 or boto3.client("s3")
    try:
        kinesis.create_stream(StreamName=stream_name, ShardCount=shard_count)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=stream_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    try:
        region = s3.meta.region_name
        if region and region != "us-east-1":
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        else:
            s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
