"""Trainer state in the bucket, so a trainer restarted on any node resumes where the last one checkpointed.

One object per game, ``checkpoints/{game_id}/trainer.tar.gz``: RLlib's learner checkpoint
(``LearnerGroup.save_to_path``) and the trainer's own counters (``trainer.json``), written with one PutObject,
so a reader finds either the whole new checkpoint or the whole previous one, never a mix. Only the trainer
identity writes under ``checkpoints/`` (``deploy/policies/trainer.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlplatform.infra import aws

CHECKPOINT_PREFIX = "checkpoints"
_LEARNER = "learner"
_STATE = "trainer.json"


def checkpoint_key(game_id: str) -> str:
    return f"{CHECKPOINT_PREFIX}/{game_id}/trainer.tar.gz"


def checkpoint_url(bucket: str, game_id: str) -> str:
    return f"s3://{bucket}/{checkpoint_key(game_id)}"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint unpacked on local disk for as long as its ``load`` context lasts."""

    state: dict[str, Any]  # the trainer's counters and what wrote it (trainer.json)
    learner_dir: Path  # for LearnerGroup.restore_from_path


def save(bucket: str, game_id: str, learner_group: Any, state: dict[str, Any]) -> None:
    """Checkpoint ``learner_group`` (an RLlib ``LearnerGroup``) and ``state`` as the game's one checkpoint."""
    with tempfile.TemporaryDirectory(prefix="rlp-checkpoint-") as tmp:
        learner_group.save_to_path(Path(tmp) / _LEARNER)
        (Path(tmp) / _STATE).write_text(json.dumps(state))
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            tar.add(tmp, arcname=".")
    aws.s3_client().put_object(Bucket=bucket, Key=checkpoint_key(game_id), Body=packed.getvalue())


def fetch(bucket: str, game_id: str) -> bytes | None:
    """The game's packed checkpoint, or None when it has none yet."""
    return aws.object_or_none(bucket, checkpoint_key(game_id))


@contextlib.contextmanager
def unpacked(packed: bytes) -> Iterator[Checkpoint]:
    """A fetched checkpoint unpacked in a temporary directory, removed when the context ends."""
    with tempfile.TemporaryDirectory(prefix="rlp-checkpoint-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links out or devices, whoever wrote it
        yield Checkpoint(json.loads((Path(tmp) / _STATE).read_text()), Path(tmp) / _LEARNER)
