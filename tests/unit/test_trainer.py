"""The trainer learns only from store samples, publishes verifiable ONNX models and resumes."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import uuid
from pathlib import Path

import boto3
import numpy as np
import onnxruntime as ort
import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from moto import mock_aws

from rlplatform import registry
from rlplatform.games import game_spec
from rlplatform.registry import keys
from rlplatform.release import state as release
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store import TransitionBatch
from rlplatform.store.sqlite import SqliteStore
from rlplatform.train.algorithms import AlgorithmConfigError
from rlplatform.train.algorithms.dqn import DQN
from rlplatform.train.trainer import PrefetchingSampler, Trainer, TrainerConfig
from rlplatform_client.models import ManifestDocument, ModelManifest, latest_key, publish_model, sha256_hex
from rlplatform_client.retry import Backoff
from rlplatform_client.subscriber import ModelMissingError
from tests.contract.test_store_contract import episode
from tests.support import SIGNING_KEY

FAST = TrainerConfig(
    hyperparameters={"batch_size": 32, "learning_starts": 100}, publish_every_updates=10, eval_episodes=1
)
SPACES = {
    "algorithm": "DQN",
    "learner_step": 1,
    "observation_space": {"type": "box", "shape": [4], "low": [None] * 4, "high": [None] * 4},
    "action_space": {"type": "discrete", "n": 2},
}


def cartpole_batch(n: int, seed: int = 0) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-0.2, 0.2, (n, 4)).astype(np.float32)
    t = np.arange(n, dtype=np.int64)
    return TransitionBatch(
        episode_id=np.array([str(uuid.uuid4())] * n, dtype=object),
        t=t,
        obs=obs,
        action=rng.integers(0, 2, n).astype(np.int64),
        reward=np.ones(n, dtype=np.float32),
        next_obs=obs + 0.01,
        terminated=(t % 20) == 19,
        truncated=(t % 50) == 24,
        model_version=np.zeros(n, dtype=np.int64),
    )


@pytest.fixture
def settings(tmp_path: Path):
    with mock_aws():
        s = Settings(sqlite=SqliteSettings(path=tmp_path / "store.sqlite"), bucket="models")
        boto3.client("s3").create_bucket(Bucket=s.bucket)
        with SqliteStore(s.sqlite.path) as store:
            store.write("CartPole-v1", cartpole_batch(500))
        yield s


def latest_manifest(s3, bucket: str) -> ModelManifest:
    return ManifestDocument.from_json(
        s3.get_object(Bucket=bucket, Key=latest_key("CartPole-v1"))["Body"].read()
    ).manifest


def test_train_batch_keeps_terminated_and_truncated_apart() -> None:
    source = cartpole_batch(100)
    batch = (
        DQN(game_spec("CartPole-v1"))
        .to_train_batch(source, np.ones(len(source), np.int64))
        .policy_batches["default_policy"]
    )
    assert batch["terminateds"].sum() == 5 and batch["truncateds"].sum() == 2
    np.testing.assert_array_equal(batch["terminateds"], source.terminated)
    np.testing.assert_array_equal(batch["truncateds"], source.truncated)
    assert batch["obs"].dtype == np.float32 and batch["new_obs"].shape == (100, 4)


def test_trainer_publishes_models_and_resumes_with_increasing_versions(settings: Settings) -> None:
    Trainer(settings, FAST).run(threading.Event(), max_updates=20)

    s3 = boto3.client("s3")
    manifest = latest_manifest(s3, settings.bucket)
    assert manifest.version == 2 and manifest.learner_step == 20 and manifest.algorithm == "DQN"
    assert manifest.output == {"name": "q_values", "kind": "q_values"}
    model = s3.get_object(Bucket=settings.bucket, Key=manifest.onnx_key)["Body"].read()
    assert sha256_hex(model) == manifest.sha256
    q = ort.InferenceSession(model).run(None, {"obs": np.zeros((3, 4), np.float32)})[0]
    assert q.shape == (3, 2) and np.all(np.isfinite(q))

    resumed = Trainer(settings, FAST)
    assert resumed.status.updates == 20 and resumed.status.version == 2
    resumed.run(threading.Event(), max_updates=30)
    latest = latest_manifest(s3, settings.bucket)
    assert latest.version == 3 and latest.learner_step == 30


def test_with_a_canary_share_a_new_version_is_the_candidate_and_newer_ones_wait_for_its_verdict(
    settings: Settings,
) -> None:
    trainer = Trainer(settings, dataclasses.replace(FAST, canary_share=0.25))
    trainer.run(threading.Event(), max_updates=40)
    current, _ = release.read_release(settings.bucket, "CartPole-v1", keys.signing_keys(settings).trusted)
    assert (current.stable, current.candidate, current.share) == (1, 2, 0.25)  # v3 and v4 did not restart it
    assert trainer.releaser.waiting.version == 4  # the newest waits; v3 will be skipped
    assert latest_manifest(boto3.client("s3"), settings.bucket).version == 1
    changes = release.history(settings.bucket, "CartPole-v1")
    assert [(c.by, c.action, c.after["candidate"]) for c in changes] == [
        ("trainer", "publish", None), ("trainer", "publish", 2)
    ]  # fmt: skip


def test_the_trainer_judges_its_candidate_and_rolls_back_a_worse_one(settings: Settings) -> None:
    """A candidate whose clients' episodes return much less than the stable version's over the same period."""
    trainer = Trainer(settings, dataclasses.replace(FAST, canary_share=0.5))
    trainer.run(threading.Event(), max_updates=30)  # v1 stable, v2 the candidate, v3 waiting
    trusted = keys.signing_keys(settings).trusted
    with SqliteStore(settings.sqlite.path) as store:
        said = trainer.releaser.judge(store)  # the watch begins: play stored from now on is judged
        assert said.startswith("v2 against v1: waiting for 50 finished episodes")
        assert said.endswith("; v3 waits for the verdict")
        rng = np.random.default_rng(0)
        for _ in range(60):
            store.write("CartPole-v1", episode(int(rng.integers(40, 60)), version=1, reward=1.0))
            store.write("CartPole-v1", episode(int(rng.integers(5, 15)), version=2, reward=1.0))
        trainer.releaser.judge(store)
    current, _ = release.read_release(settings.bucket, "CartPole-v1", trusted)
    assert (current.stable, current.candidate) == (1, 3)  # after the verdict, the waiting version is the candidate
    judged, proposed = release.history(settings.bucket, "CartPole-v1")[-2:]
    assert (judged.by, judged.action, judged.before["candidate"]) == ("judge", "rollback", 2)
    assert judged.why.startswith("worse: p ") and "50 episodes each" in judged.why
    assert (proposed.by, proposed.action, proposed.after["candidate"]) == ("trainer", "publish", 3)
    assert trainer.releaser.waiting is None


def test_a_checkpoint_of_other_networks_is_refused_naming_both_and_kept(settings: Settings) -> None:
    Trainer(settings, FAST).run(threading.Event(), max_updates=10)
    narrower = TrainerConfig(hyperparameters={**FAST.hyperparameters, "hidden": 32}, publish_every_updates=10)
    with pytest.raises(AlgorithmConfigError) as info:
        Trainer(settings, narrower)
    message = str(info.value)
    assert f"s3://{settings.bucket}/checkpoints/CartPole-v1/" in message
    assert "'hidden': 32" in message and "'hidden': 64" in message
    assert Trainer(settings, FAST).status.updates == 10  # the checkpoint is still there, and still resumes


def test_trainer_waits_for_learning_starts(settings: Settings) -> None:
    trainer = Trainer(settings, TrainerConfig(hyperparameters={"learning_starts": 10_000}))
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    trainer.run(stop)
    assert trainer.status.updates == 0 and trainer.status.stored_rows == 500
    assert trainer.publish_every == 1_000  # DQN's cadence: the config left it unset


def test_trainer_refuses_dqn_for_continuous_games(settings: Settings) -> None:
    with pytest.raises(AlgorithmConfigError, match="algorithm: DQN learns discrete action spaces, but 'Pendulum-v1'"):
        Trainer(settings, TrainerConfig(game_id="Pendulum-v1", algorithm="DQN"))


def test_next_version_comes_from_versioned_keys_not_a_bogus_pointer(settings: Settings) -> None:
    s3 = boto3.client("s3")
    for version in (1, 2, 3):
        publish_model(
            s3, settings.bucket, ModelManifest.create("CartPole-v1", version, b"m", **SPACES), b"m", SIGNING_KEY
        )
    bogus = ModelManifest.create("CartPole-v1", 8, b"never uploaded", **SPACES)
    s3.put_object(Bucket=settings.bucket, Key=latest_key("CartPole-v1"), Body=bogus.to_json())
    assert registry.published_versions(settings.bucket, "CartPole-v1") == [1, 2, 3]
    with pytest.raises(ModelMissingError) as info:
        registry.check_pointer(settings.bucket, "CartPole-v1")
    assert (info.value.key, info.value.version) == (bogus.onnx_key, 8)

    trainer = Trainer(settings, FAST)
    assert trainer.status.version == 3
    trainer.run(threading.Event(), max_updates=10)
    assert latest_manifest(s3, settings.bucket).version == 4
    assert registry.published_versions(settings.bucket, "CartPole-v1") == [1, 2, 3, 4]


@pytest.mark.parametrize("pointer", [b"\x00garbage", b'{"version": 8}', b"[]"])
def test_trainer_starts_and_publishes_with_a_garbage_pointer(
    settings: Settings, pointer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=settings.bucket, Key=latest_key("CartPole-v1"), Body=pointer)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(settings, FAST)
    assert "latest model pointer is broken" in caplog.text and trainer.status.version == 0
    trainer.run(threading.Event(), max_updates=10)
    assert latest_manifest(s3, settings.bucket).version == 1


def test_trainer_waits_out_unreachable_s3_and_publishes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_publish = registry.publish
    failures = [EndpointConnectionError(endpoint_url="http://s3.example"), ConnectTimeoutError(endpoint_url="x")]

    def flaky_publish(*args: object) -> None:
        if failures:
            raise failures.pop(0)
        real_publish(*args)

    monkeypatch.setattr(registry, "publish", flaky_publish)
    cfg = dataclasses.replace(FAST, unreachable_backoff=Backoff(base_s=0.0, cap_s=0.0))
    with caplog.at_level(logging.WARNING):
        Trainer(settings, cfg).run(threading.Event(), max_updates=10)
    assert "S3 unreachable at " in caplog.text and ", retrying in 0 s" in caplog.text
    assert "S3 reachable again at " in caplog.text
    assert latest_manifest(boto3.client("s3"), settings.bucket).version == 1


def test_trainer_stops_while_waiting_for_an_unreachable_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()

    def locked(*_: object) -> int:
        stop.set()  # As SIGTERM would, while the trainer waits for the store.
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteStore, "count", locked)
    trainer = Trainer(settings, FAST, stop=stop)
    with caplog.at_level(logging.INFO):
        trainer.run(stop)
    assert f"store (sqlite) unreachable at {settings.sqlite.path}, retrying in 1 s" in caplog.text
    assert "stopped while store (sqlite) was unreachable" in caplog.text and trainer.status.updates == 0


def test_the_prefetching_sampler_hands_out_samples_in_draw_order_one_read_ahead() -> None:
    drawn: list[int] = []
    first_taken = threading.Event()

    def draw() -> int:
        if len(drawn) == 1:  # the read-ahead of the second sample starts only once the first is taken
            assert first_taken.wait(10)
        drawn.append(len(drawn))
        return drawn[-1]

    with PrefetchingSampler(draw) as sampler:
        assert sampler.take() == 0
        first_taken.set()
        assert [sampler.take() for _ in range(3)] == [1, 2, 3]
    # In order, and at most one sample read ahead (cancelled at close if it had not started).
    assert drawn[:4] == [0, 1, 2, 3] and len(drawn) <= 5


def test_the_prefetching_sampler_raises_a_read_ahead_error_on_the_next_take() -> None:
    calls = iter([1, None])

    def draw() -> int:
        value = next(calls)
        if value is None:
            raise LookupError("no transitions stored")
        return value

    with PrefetchingSampler(draw) as sampler:
        assert sampler.take() == 1
        with pytest.raises(LookupError, match="no transitions stored"):
            sampler.take()
