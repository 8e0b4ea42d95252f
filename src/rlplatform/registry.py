"""Model registry on S3: publish versioned ONNX models with a manifest, look up the latest version.

The key layout and manifest schema are the client's (``rlplatform_client.models``): publisher and
subscriber share one definition.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from rlplatform import aws
from rlplatform_client.models import ModelManifest, latest_key, publish_model

__all__ = ["latest_manifest", "publish"]


def latest_manifest(bucket: str, game_id: str) -> ModelManifest | None:
    """The manifest the latest pointer names, or None when nothing was published yet."""
    try:
        body = aws.s3_client().get_object(Bucket=bucket, Key=latest_key(game_id))["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return ModelManifest.from_json(body)


def publish(bucket: str, manifest: ModelManifest, onnx_bytes: bytes) -> None:
    publish_model(aws.s3_client(), bucket, manifest, onnx_bytes)
