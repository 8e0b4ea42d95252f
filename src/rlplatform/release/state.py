"""A game's release state in the bucket (``rlplatform_client.releases``), changed only through ``change``.

Every change reads the state and its ETag, applies one of the moves below, and writes the result signed, with
one more ``revision``, conditionally on that ETag (S3's ``If-Match``; ``If-None-Match: *`` for the first
state): of two writers at once, the second's write fails and it starts again from what the first wrote, so
neither change is lost. Then, as the revision's owner, it adds the history entry
``models/{game_id}/releases/{revision:08d}.json`` (what moved, from where to where, why, by whom, when; never
overwritten) and, when the stable version moved, points the latest pointer at it (for readers of the pointer:
reports, clients that predate release states).

The moves are plain functions of the state, so the rules are tested without a bucket: ``on_publish`` (the
trainer), ``promote`` and ``reject`` (the judge, or an operator), ``rollback``, ``pin`` and ``unpin`` (an
operator). A move that is not possible raises ``ReleaseRefused`` naming why, and nothing is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rlplatform.infra import aws
from rlplatform.registry.keys import SigningKeys
from rlplatform_client.models import MODEL_PREFIX, error_code, is_missing, latest_key, manifest_key
from rlplatform_client.releases import ReleaseState, read_release_document, release_document, release_key

log = logging.getLogger(__name__)

# Writers that lose this many races in a row give up (ReleaseConflict): something writes in a loop.
MAX_ATTEMPTS = 10
# S3's answers to a conditional write that lost (412), or that raced another conditional write (409).
_LOST_RACE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})

Move = Callable[[ReleaseState | None], ReleaseState]


class ReleaseRefused(ValueError):
    """A move that is not possible from the current state; nothing was changed."""


class ReleaseConflict(RuntimeError):
    """Other writers changed the state every time this one tried to."""


@dataclass(frozen=True)
class Change:
    """One history entry: the states before and after ``revision``'s change."""

    revision: int
    at: str
    by: str  # "trainer", "judge" or "operator" (with who, where known)
    action: str
    why: str
    before: dict[str, Any] | None
    after: dict[str, Any]


def history_prefix(game_id: str) -> str:
    return f"{MODEL_PREFIX}/{game_id}/releases/"


def history_key(game_id: str, revision: int) -> str:
    return f"{history_prefix(game_id)}{revision:08d}.json"


# ------------------------------------------------------------------------------------------------ moves


def on_publish(state: ReleaseState | None, game_id: str, version: int, share: float) -> ReleaseState:
    """A new version: the first is stable; later ones are the candidate for ``share`` of the clients (replacing a
    waiting candidate), or stable at once when ``share`` is 0."""
    if state is None:
        return ReleaseState(game_id, 1, stable=version)
    if version <= max(state.stable, state.candidate or 0):
        raise ReleaseRefused(f"v{version} is not newer than stable v{state.stable} and candidate {_v(state.candidate)}")
    if share == 0:
        return replace(state, stable=version, candidate=None, share=0.0)
    return replace(state, candidate=version, share=share)


def promote(state: ReleaseState | None) -> ReleaseState:
    """The candidate becomes stable for every client."""
    current = _existing(state)
    if current.candidate is None:
        raise ReleaseRefused(f"{current.game_id} has no candidate to promote (stable is v{current.stable})")
    return replace(current, stable=current.candidate, candidate=None, share=0.0)


def reject(state: ReleaseState | None) -> ReleaseState:
    """The candidate is withdrawn; its clients go back to the stable version."""
    current = _existing(state)
    if current.candidate is None:
        raise ReleaseRefused(f"{current.game_id} has no candidate to reject (stable is v{current.stable})")
    return replace(current, candidate=None, share=0.0)


def rollback(state: ReleaseState | None, to: int, published: list[int]) -> ReleaseState:
    """Stable moves back to the published version ``to``, older than the current stable; a candidate is
    withdrawn with it."""
    current = _existing(state)
    if to < 1:
        raise ReleaseRefused(f"v{to}: there is no version before v1 to roll back to")
    if to not in published:
        raise ReleaseRefused(f"{current.game_id} has no published v{to} (published: {_versions(published)})")
    if to >= current.stable:
        raise ReleaseRefused(f"v{to} is not older than stable v{current.stable}: a rollback goes back")
    return replace(current, stable=to, candidate=None, share=0.0)


def pin(state: ReleaseState | None) -> ReleaseState:
    current = _existing(state)
    if current.pinned:
        raise ReleaseRefused(f"{current.game_id} is pinned already")
    return replace(current, pinned=True)


def unpin(state: ReleaseState | None) -> ReleaseState:
    current = _existing(state)
    if not current.pinned:
        raise ReleaseRefused(f"{current.game_id} is not pinned")
    return replace(current, pinned=False)


def _existing(state: ReleaseState | None) -> ReleaseState:
    if state is None:
        raise ReleaseRefused("no release state: nothing has been published for this game yet")
    return state


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _versions(published: list[int]) -> str:
    return ", ".join(f"v{v}" for v in published) or "none"


# ------------------------------------------------------------------------------------------------ bucket


def read_release(
    bucket: str, game_id: str, trusted: Mapping[str, Ed25519PublicKey]
) -> tuple[ReleaseState | None, str | None]:
    """The game's release state and its ETag ((None, None) before the first), verified with ``trusted``."""
    try:
        response = aws.s3_client().get_object(Bucket=bucket, Key=release_key(game_id))
    except ClientError as exc:
        if is_missing(exc):
            return None, None
        raise
    state, _ = read_release_document(response["Body"].read(), trusted)
    if state.game_id != game_id:
        raise ReleaseRefused(f"{release_key(game_id)} holds the release state of {state.game_id!r}")
    return state, response["ETag"]


def peek_release(bucket: str, game_id: str) -> ReleaseState | None:
    """The game's release state as stored, its signature not checked: for the platform's own reports."""
    body = aws.object_or_none(bucket, release_key(game_id))
    return None if body is None else read_release_document(body, {}, verify=False)[0]


def change(
    bucket: str,
    game_id: str,
    keys: SigningKeys,
    move: Move,
    *,
    by: str,
    action: str,
    why: str,
) -> ReleaseState:
    """Apply ``move`` to the current state and store the result signed, retrying from the state that won a race.

    ``ReleaseRefused`` (from ``move``, or a stored state that is not this game's), ``ModelSignatureError`` (a
    stored state no trusted key signed), ``ReleaseConflict``."""
    s3 = aws.s3_client()
    for _ in range(MAX_ATTEMPTS):
        before, etag = read_release(bucket, game_id, keys.trusted)
        after = replace(
            move(before),
            revision=1 if before is None else before.revision + 1,
            updated_at=datetime.now(UTC).isoformat(),
        )
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        body = release_document(after, keys.signing)
        try:
            s3.put_object(Bucket=bucket, Key=release_key(game_id), Body=body, **condition)
        except ClientError as exc:
            if error_code(exc) in _LOST_RACE:
                log.info("%s: release state changed meanwhile; applying %s to the new one", game_id, action)
                continue
            raise
        entry = Change(
            after.revision, after.updated_at, by, action, why, None if before is None else asdict(before), asdict(after)
        )
        s3.put_object(
            Bucket=bucket,
            Key=history_key(game_id, after.revision),
            Body=json.dumps(asdict(entry), indent=2).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
        if before is None or before.stable != after.stable:
            manifest = s3.get_object(Bucket=bucket, Key=manifest_key(game_id, after.stable))["Body"].read()
            s3.put_object(Bucket=bucket, Key=latest_key(game_id), Body=manifest, ContentType="application/json")
        log.info("%s: release r%d: %s by %s (%s)", game_id, after.revision, action, by, why)
        return after
    raise ReleaseConflict(f"{game_id}: the release state changed under each of {MAX_ATTEMPTS} attempts to {action}")


def history(bucket: str, game_id: str) -> list[Change]:
    """Every change to the game's release state, oldest first."""
    pages = aws.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=history_prefix(game_id))
    entries = []
    for page in pages:
        for item in page.get("Contents", []):
            body = aws.s3_client().get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            entries.append(Change(**json.loads(body)))
    return sorted(entries, key=lambda c: c.revision)
