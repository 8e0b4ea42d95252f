"""Where the training service reports each game's trainer: ``trainers/{game_id}/status.json`` in the bucket.

Its own module, without Ray, so that readers (``rlplatform games show``, ``up``, the dashboard) stay light."""

from __future__ import annotations

import json
from typing import Any

from rlplatform.infra import aws

STATUS_PREFIX = "trainers"


def status_key(game_id: str) -> str:
    return f"{STATUS_PREFIX}/{game_id}/status.json"


def read_status(bucket: str, game_id: str) -> dict[str, Any] | None:
    """The service's last word on the game's trainer, or None when no service has run it."""
    body = aws.object_or_none(bucket, status_key(game_id))
    return None if body is None else json.loads(body)
