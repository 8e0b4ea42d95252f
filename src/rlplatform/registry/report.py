"""``rlplatform models``: every published version of a game beside how the clients that ran it played.

Live returns come from the store (``ExperienceStore.live_returns``): every chunk carries the model version
that chose its actions, so each finished episode is credited to the version that played it. They are the
returns of the *exploring* clients (epsilon-greedy or action noise), so they sit below what greedy play of
the same model would score; the simulator evaluation, where a game has a simulator, is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from rlplatform import registry
from rlplatform.infra import aws
from rlplatform.store import ExperienceStore
from rlplatform.store.base import LiveReturns
from rlplatform_client.models import ManifestDocument, ModelError, ModelManifest, manifest_key

LIVE_NOTE = "live: finished episodes of the exploring clients (not greedy play) that one version played whole"


@dataclass(frozen=True)
class VersionReport:
    version: int
    manifest: ModelManifest | None  # None for version 0 (random play) or an unreadable manifest
    live: LiveReturns | None


def version_reports(bucket: str, game_id: str, store: ExperienceStore) -> list[VersionReport]:
    """Version 0 (play before any model) and every published version, newest last."""
    live = store.live_returns(game_id)
    versions = sorted({0, *registry.published_versions(bucket, game_id), *live})
    return [VersionReport(v, read_manifest(bucket, game_id, v) if v else None, live.get(v)) for v in versions]


def read_manifest(bucket: str, game_id: str, version: int) -> ModelManifest | None:
    """The version's manifest, or None where it is missing or unreadable."""
    try:
        body = aws.s3_client().get_object(Bucket=bucket, Key=manifest_key(game_id, version))["Body"].read()
        return ManifestDocument.from_json(body).manifest
    except (ClientError, ModelError):
        return None


def live_cell(live: LiveReturns | None) -> str:
    if live is None:
        return "-"
    return f"{live.mean_return:.1f} ± {live.std_return:.1f} (n={live.episodes}, len {live.mean_length:.0f})"
