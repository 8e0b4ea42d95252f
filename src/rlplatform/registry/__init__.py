"""Model registry on S3: versioned ONNX models and signed manifests per game (``models``), the keys that sign
them (``keys``), and what each published version is worth from the play it produced (``report``)."""

from rlplatform.registry.models import (
    check_model,
    check_pointer,
    latest_manifest,
    next_version,
    publish,
    published_versions,
)

__all__ = ["check_model", "check_pointer", "latest_manifest", "next_version", "publish", "published_versions"]
