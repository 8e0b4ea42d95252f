"""Release state: the moves and their refusals, the client rule, the signed document, and changes in a bucket
(conditional writes, so two writers at once both land; a history entry per change; the pointer follows stable)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws

from rlplatform.registry import publish, published_versions
from rlplatform.registry.keys import SigningKeys
from rlplatform.registry.models import latest_manifest
from rlplatform.release import state as release
from rlplatform.release.state import ReleaseRefused
from rlplatform_client.models import ManifestDocument, ModelManifest, ModelSignatureError, manifest_document
from rlplatform_client.releases import (
    ReleaseError,
    ReleaseState,
    in_candidate_share,
    read_release_document,
    release_document,
    release_key,
)
from rlplatform_client.signing import key_id
from tests.support import SIGNING_KEY

GAME = "CartPole-v1"
KEYS = SigningKeys(SIGNING_KEY, {key_id(SIGNING_KEY.public_key()): SIGNING_KEY.public_key()})
TRUSTED = KEYS.trusted


def state(**fields: object) -> ReleaseState:
    return ReleaseState(**{"game_id": GAME, "revision": 1, "stable": 1, **fields})


# ------------------------------------------------------------------------------------------------ moves


def test_the_first_version_is_stable_and_later_ones_are_candidates_for_their_share() -> None:
    first = release.on_publish(None, GAME, 1, share=0.1)
    assert (first.stable, first.candidate) == (1, None)
    second = release.on_publish(first, GAME, 2, share=0.1)
    assert (second.stable, second.candidate, second.share) == (1, 2, 0.1)
    third = release.on_publish(second, GAME, 3, share=0.1)  # a newer version replaces a waiting candidate
    assert (third.stable, third.candidate) == (1, 3)
    assert release.on_publish(third, GAME, 4, share=0.0) == state(stable=4)  # no canary: stable at once


@pytest.mark.parametrize(
    ("move", "message"),
    [
        (lambda s: release.on_publish(s, GAME, 2, 0.1), "v2 is not newer than stable v1 and candidate v2"),
        (lambda s: release.promote(release.reject(s)), "no candidate to promote (stable is v1)"),
        (lambda s: release.reject(release.reject(s)), "no candidate to reject"),
        (lambda s: release.rollback(s, 1, [1, 2]), "v1 is not older than stable v1"),
        (lambda s: release.rollback(s, 0, [1, 2]), "v0: there is no version before v1"),
        (lambda s: release.unpin(s), "is not pinned"),
        (lambda s: release.pin(release.pin(s)), "is pinned already"),
        (lambda s: release.promote(None), "nothing has been published"),
    ],
)
def test_an_impossible_move_is_refused_saying_why(move, message: str) -> None:
    with pytest.raises(ReleaseRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        move(state(candidate=2, share=0.1))


def test_a_rollback_goes_back_to_a_published_version_and_withdraws_the_candidate() -> None:
    current = state(stable=5, candidate=6, share=0.2)
    assert release.rollback(current, 3, [1, 2, 3, 4, 5, 6]) == state(stable=3)
    with pytest.raises(ReleaseRefused, match=r"no published v3 \(published: v1, v5, v6\)"):
        release.rollback(current, 3, [1, 5, 6])


# ------------------------------------------------------------------------------------------------ the client rule


def test_a_client_is_in_the_candidates_share_by_a_stable_hash_of_its_id() -> None:
    canary = state(candidate=2, share=0.25)
    clients = [f"client-{i}" for i in range(4000)]
    chosen = [canary.version_for(c) for c in clients]
    assert chosen == [canary.version_for(c) for c in clients]  # the same answer at every poll
    assert 0.22 < chosen.count(2) / len(clients) < 0.28
    # The documented rule, as a client in another language computes it.
    digest = hashlib.sha256(f"{GAME}/2/client-7".encode()).digest()
    assert in_candidate_share(GAME, 2, "client-7", 0.25) == (int.from_bytes(digest[:8], "big") < 0.25 * 2**64)
    # Each candidate goes to another sample of clients.
    other = state(candidate=3, share=0.25)
    assert {c for c in clients if canary.version_for(c) == 2} != {c for c in clients if other.version_for(c) == 3}
    assert state(candidate=2, share=1.0).version_for("x") == 2 and state(candidate=2, share=0.0).version_for("x") == 1
    assert canary.version_for(None) == 1  # no id: stable


# ------------------------------------------------------------------------------------------------ the document


def test_a_release_document_is_verified_and_checked_field_by_field() -> None:
    document = release_document(state(candidate=2, share=0.1), SIGNING_KEY)
    read, signer = read_release_document(document, TRUSTED)
    assert read == state(candidate=2, share=0.1) and signer == key_id(SIGNING_KEY.public_key())

    with pytest.raises(ModelSignatureError, match="does not trust"):
        read_release_document(release_document(state(), Ed25519PrivateKey.generate()), TRUSTED)
    envelope = json.loads(document)
    envelope["payload"] = envelope["payload"][:-4] + "AAA="
    with pytest.raises((ModelSignatureError, ReleaseError)):
        read_release_document(json.dumps(envelope).encode(), TRUSTED)
    manifest = ModelManifest.create(GAME, 1, b"onnx", algorithm="DQN", learner_step=1,
                                    observation_space={"type": "box", "shape": [4]},
                                    action_space={"type": "discrete", "n": 2})  # fmt: skip
    with pytest.raises(ModelSignatureError, match="payloadType"):  # a signed manifest is not a release state
        read_release_document(manifest_document(manifest, SIGNING_KEY), TRUSTED)
    with pytest.raises(ReleaseError, match="share: must be a number in"):
        state(share=1.5)
    with pytest.raises(ReleaseError, match="release state: stable: must be an int >= 1"):
        state(stable=0)


# ------------------------------------------------------------------------------------------------ in a bucket


@pytest.fixture
def bucket() -> Iterator[str]:
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        yield "models"


def publish_version(bucket: str, version: int) -> None:
    onnx = f"model {version}".encode()
    manifest = ModelManifest.create(GAME, version, onnx, algorithm="DQN", learner_step=100 * version,
                                    observation_space={"type": "box", "shape": [4]},
                                    action_space={"type": "discrete", "n": 2})  # fmt: skip
    publish(bucket, manifest, onnx, SIGNING_KEY)


def published_change(bucket: str, version: int, share: float) -> ReleaseState:
    publish_version(bucket, version)
    move = lambda s: release.on_publish(s, GAME, version, share)  # noqa: E731
    return release.change(bucket, GAME, KEYS, move, by="trainer", action="publish", why=f"v{version} published")


def test_changes_are_signed_recorded_and_the_pointer_follows_stable(bucket: str) -> None:
    published_change(bucket, 1, 0.1)
    published_change(bucket, 2, 0.1)
    assert latest_manifest(bucket, GAME).version == 1  # a candidate does not move the pointer
    release.change(bucket, GAME, KEYS, release.promote, by="judge", action="promote", why="not worse")
    assert latest_manifest(bucket, GAME).version == 2
    move = lambda s: release.rollback(s, 1, published_versions(bucket, GAME))  # noqa: E731
    final = release.change(bucket, GAME, KEYS, move, by="operator", action="rollback", why="by hand")

    stored, _ = release.read_release(bucket, GAME, TRUSTED)
    assert stored == final and (final.revision, final.stable, final.candidate) == (4, 1, None)
    assert ManifestDocument.from_json(
        boto3.client("s3").get_object(Bucket=bucket, Key="models/CartPole-v1/latest.json")["Body"].read()
    ).manifest.version == 1  # fmt: skip
    entries = release.history(bucket, GAME)
    assert [(c.revision, c.by, c.action) for c in entries] == [
        (1, "trainer", "publish"), (2, "trainer", "publish"), (3, "judge", "promote"), (4, "operator", "rollback")
    ]  # fmt: skip
    assert entries[2].before["candidate"] == 2 and entries[2].after["stable"] == 2
    assert entries[3].why == "by hand" and entries[0].before is None


def test_two_writers_at_once_both_land(bucket: str) -> None:
    published_change(bucket, 1, 0.1)
    published_change(bucket, 2, 0.1)
    raced = []

    def pin_while_the_judge_writes(current: ReleaseState | None) -> ReleaseState:
        if not raced:  # between this writer's read and its write, another change lands
            raced.append(release.change(bucket, GAME, KEYS, release.promote, by="judge", action="promote", why="ok"))
        return release.pin(current)

    final = release.change(bucket, GAME, KEYS, pin_while_the_judge_writes, by="operator", action="pin", why="freeze")
    assert (final.stable, final.candidate, final.pinned, final.revision) == (2, None, True, 4)
    assert [c.action for c in release.history(bucket, GAME)] == ["publish", "publish", "promote", "pin"]


def test_a_state_no_trusted_key_signed_is_refused_and_left_alone(bucket: str) -> None:
    published_change(bucket, 1, 0.1)
    forged = release_document(state(stable=1, revision=9), Ed25519PrivateKey.generate())
    boto3.client("s3").put_object(Bucket=bucket, Key=release_key(GAME), Body=forged)
    with pytest.raises(ModelSignatureError):
        release.change(bucket, GAME, KEYS, release.pin, by="operator", action="pin", why="")
    assert boto3.client("s3").get_object(Bucket=bucket, Key=release_key(GAME))["Body"].read() == forged
