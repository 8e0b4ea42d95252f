"""Models as releases, end to end on the embedded stack: a deliberately bad version reaches only its canary share
of the clients and the judge withdraws it by itself, while the stable version never stops serving; a good version
is promoted by itself; the release history says who made each move."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from rlplatform import registry
from rlplatform.games import game_spec
from rlplatform.registry import keys
from rlplatform.release import state as release
from rlplatform.stack.launcher import LaunchConfig, Progress, Stack, _drain
from rlplatform.train.status import read_status
from rlplatform.train.training import read_training, write_training
from rlplatform_client.contract import decode_chunk
from rlplatform_client.models import ManifestDocument, ModelManifest, manifest_key
from rlplatform_client.releases import ReleaseState, in_candidate_share
from tests.support import client_stats, started_stack, stream_records, wait_for
from tests.unit.test_subscriber import tiny_model

pytestmark = pytest.mark.e2e
GAME = "CartPole-v1"
SHARE = 0.5
CLIENTS = 4


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Clients that explore alike: the canary and the others then differ only in the version they play.
    cfg = LaunchConfig(targets={GAME: 1e9}, clients=CLIENTS, client_steps_per_second=150, publish_every_updates=500,
                       learning_starts=300, client_epsilon=0.05)  # fmt: skip
    with started_stack(cfg, tmp_path / "run") as s:
        yield s


def stable_version(stack: Stack) -> int:
    state = release.peek_release(stack.settings.bucket, GAME)
    return 0 if state is None else state.stable


def client_ids(stack: Stack) -> list[str]:
    return sorted(s["client_id"] for s in client_stats(stack.client_stats_dir(GAME)))


def split_version(stack: Stack, clients: list[str]) -> int:
    """The next free version number whose canary share holds some of the clients, not all (numbers may skip)."""
    version = registry.next_version(stack.settings.bucket, GAME)
    while len({in_candidate_share(GAME, version, c, SHARE) for c in clients}) < 2:
        version += 1
    return version


def propose(stack: Stack, version: int, onnx: bytes, output: dict, why: str) -> None:
    """Publish ``version`` as the trainer would, and make it the candidate for SHARE of the clients."""
    observation_space, action_space = game_spec(GAME).manifest_spaces()
    manifest = ModelManifest.create(
        GAME, version, onnx, algorithm="DQN", learner_step=0, observation_space=observation_space,
        action_space=action_space, output=output,
    )  # fmt: skip
    signing = keys.signing_keys(stack.settings)
    registry.publish(stack.settings.bucket, manifest, onnx, signing.signing)

    def move(state: ReleaseState | None) -> ReleaseState:
        return release.on_publish(state, GAME, version, SHARE)

    release.change(stack.settings.bucket, GAME, signing, move, by="trainer", action="publish", why=why)


def judged(stack: Stack, version: int, action: str) -> bool:
    return any(
        (c.by, c.action, c.before and c.before["candidate"]) == ("judge", action, version)
        for c in release.history(stack.settings.bucket, GAME)
    )


def test_a_bad_version_reaches_only_its_canary_and_is_withdrawn_and_a_good_one_is_promoted(stack: Stack) -> None:
    bucket, alive = stack.settings.bucket, stack.check_alive
    # A stable version that plays well, from the real trainer (every version is stable at once so far).
    wait_for(lambda: (m := registry.latest_manifest(bucket, GAME)) and (m.eval_return or 0) >= 100, 300,
             "a published version with a greedy return of 100", alive)  # fmt: skip
    # Canary from now on, and no more versions from the trainer: the test proposes the next ones.
    doc = {**read_training(bucket, GAME), "publish_every_updates": 10**9, "canary_share": SHARE}
    write_training(bucket, game_spec(GAME), doc)
    wait_for(lambda: (s := read_status(bucket, GAME)) and s["training"] == doc and s["state"] == "running", 120,
             "the trainer restarted with the canary", alive)  # fmt: skip
    stable = stable_version(stack)
    clients = client_ids(stack)
    assert len(clients) == CLIENTS

    # A deliberately bad version: all-zero weights, so it always pushes left (CartPole falls in ~10 steps).
    bad = split_version(stack, clients)
    propose(stack, bad, tiny_model(np.zeros((4, 2))), {"name": "q", "kind": "q_values"}, "deliberately bad")
    wait_for(lambda: judged(stack, bad, "rollback"), 300, f"the judge to withdraw v{bad}", alive)
    assert stable_version(stack) == stable

    # A good version: the stable one's weights under a new number, so it plays as well; promoted by itself.
    good = split_version(stack, clients)
    manifest, onnx = published_model(stack, stable)
    propose(stack, good, onnx, manifest.output, "the stable version's weights again")
    wait_for(lambda: judged(stack, good, "promote"), 600, f"the judge to promote v{good}", alive)
    assert stable_version(stack) == good

    stack.stop_clients()
    _drain(stack, stack.cfg, Progress.of(stack.cfg))
    played = versions_played_by_client(stack)
    canary = {c for c in clients if in_candidate_share(GAME, bad, c, SHARE)}
    assert canary and canary != set(clients)
    for client in clients:  # only the canary share ever acted with the bad version; the others kept stable
        assert (bad in played[client]) == (client in canary), (client, played[client])
        assert stable in played[client], (client, played[client])

    moves = [(c.by, c.action, c.after["stable"], c.after["candidate"]) for c in release.history(bucket, GAME)]
    assert moves[-4:] == [
        ("trainer", "publish", stable, bad), ("judge", "rollback", stable, None),
        ("trainer", "publish", stable, good), ("judge", "promote", good, None),
    ], moves  # fmt: skip


def published_model(stack: Stack, version: int) -> tuple[ModelManifest, bytes]:
    """A published version's manifest and ONNX bytes."""
    s3 = boto3.client("s3")
    document = s3.get_object(Bucket=stack.settings.bucket, Key=manifest_key(GAME, version))["Body"].read()
    manifest = ManifestDocument.from_json(document).manifest
    return manifest, s3.get_object(Bucket=stack.settings.bucket, Key=manifest.onnx_key)["Body"].read()


def versions_played_by_client(stack: Stack) -> dict[str, set[int]]:
    """Per client, the model versions of its stored steps: each stored step's version, the step's episode tied to
    its client by the records in the stream."""
    client_of = {}
    for record in stream_records(stack.settings.stream_name):
        chunk = decode_chunk(record["Data"])
        client_of[chunk.episode_id] = chunk.client_id
    with sqlite3.connect(stack.settings.sqlite.path) as conn:
        (table,) = conn.execute("SELECT table_name FROM games WHERE game_id = ?", (GAME,)).fetchone()
        rows = conn.execute(f"SELECT DISTINCT episode_id, model_version FROM {table}").fetchall()
    played: dict[str, set[int]] = defaultdict(set)
    for episode_id, version in rows:
        played[client_of[episode_id]].add(version)
    return played
