"""Model registry on S3: publish versioned ONNX models with a manifest, look up versions and the pointer.

The key layout and manifest schema are the client's (``rlplatform_client.models``): publisher and
subscriber share one definition. The versioned keys are the record of what was published; the latest
pointer names the stable release (``rlplatform.release``) and is only a hint, so the next version number comes
from the keys, never the pointer.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rlplatform.infra import aws
from rlplatform_client.models import (
    MODEL_PREFIX,
    ManifestDocument,
    ModelManifest,
    latest_key,
    publish_model,
)
from rlplatform_client.subscriber import missing_model_raises

__all__ = ["check_model", "check_pointer", "latest_manifest", "next_version", "publish", "published_versions"]

_VERSION_DIR = re.compile(r"/v(\d{6,})/$")


def latest_manifest(bucket: str, game_id: str) -> ModelManifest | None:
    """The manifest the latest pointer names, or None when nothing was published yet.

    Raises ``ManifestError`` when the pointer is not a valid manifest (``ModelSignatureError``: not a valid
    envelope). The signature is not checked: this is what the pointer says, for the platform's own reports.
    """
    body = aws.object_or_none(bucket, latest_key(game_id))
    return None if body is None else ManifestDocument.from_json(body).manifest


def published_versions(bucket: str, game_id: str) -> list[int]:
    """Versions that have a ``models/{game_id}/vNNNNNN/`` key prefix, ascending."""
    pages = (
        aws.s3_client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=f"{MODEL_PREFIX}/{game_id}/", Delimiter="/")
    )
    prefixes = (p["Prefix"] for page in pages for p in page.get("CommonPrefixes", []))
    return sorted(int(m.group(1)) for prefix in prefixes if (m := _VERSION_DIR.search(prefix)))


def next_version(bucket: str, game_id: str) -> int:
    """One more than the highest published version (1 for a new game), whatever the pointer says."""
    return max(published_versions(bucket, game_id), default=0) + 1


def check_pointer(bucket: str, game_id: str) -> None:
    """Raise the ``ModelError`` that makes the latest pointer unusable for clients, if any.

    ``ManifestError``: not a valid manifest; ``ModelMissingError``: it names a model that does not exist.
    """
    manifest = latest_manifest(bucket, game_id)
    if manifest is not None:
        check_model(bucket, manifest)


def check_model(bucket: str, manifest: ModelManifest) -> None:
    """``ModelMissingError`` when the model ``manifest`` names does not exist."""
    with missing_model_raises(bucket, manifest):
        aws.s3_client().head_object(Bucket=bucket, Key=manifest.onnx_key)


def publish(bucket: str, manifest: ModelManifest, onnx_bytes: bytes, signing_key: Ed25519PrivateKey) -> None:
    """The version's model and signed manifest; which version clients play (and the pointer names) is the
    release state's (``rlplatform.release``)."""
    publish_model(aws.s3_client(), bucket, manifest, onnx_bytes, signing_key, pointer=False)
