"""Algorithms as plug-ins: the registry, SAC learning from store-shaped Pendulum transitions, its ONNX export
acted on by the client's subscriber, and how the trainer config file and --algorithm pick an algorithm."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import boto3
import gymnasium as gym
import numpy as np
import pytest
from moto import mock_aws
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from typer.testing import CliRunner

from rlplatform import cli
from rlplatform.games import game_spec
from rlplatform.settings import Settings, SqliteSettings, load_settings
from rlplatform.store import TransitionBatch
from rlplatform.store.sqlite import SqliteStore
from rlplatform.train import trainer as trainer_module
from rlplatform.train.algorithms import (
    ALGORITHMS,
    DEFAULT_BY_ACTION_SPACE,
    AlgorithmConfigError,
    algorithm_class,
)
from rlplatform.train.algorithms.dqn import DQN
from rlplatform.train.algorithms.sac import SAC
from rlplatform.train.trainer import Trainer, TrainerConfig, trainer_config
from rlplatform_client.models import ManifestDocument, latest_key
from rlplatform_client.subscriber import ModelSubscriber
from tests.support import TRUSTED_KEYS

PENDULUM = "Pendulum-v1"
TINY_SAC = {"batch_size": 32, "learning_starts": 100, "hidden": [16]}


def pendulum_batch(n: int, seed: int = 0) -> TransitionBatch:
    """``n`` store-shaped transitions of random play: float32[n, 1] actions in [-2, 2], truncated at t=199."""
    env = gym.make(PENDULUM)
    rng = np.random.default_rng(seed)
    rows, episode_id, t = [], str(uuid.uuid4()), 0
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        action = rng.uniform(-2.0, 2.0, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((episode_id, t, obs, action, reward, next_obs, terminated, truncated))
        obs, t = next_obs, t + 1
        if terminated or truncated:
            (obs, _), episode_id, t = env.reset(), str(uuid.uuid4()), 0
    env.close()
    columns = list(zip(*rows, strict=True))
    return TransitionBatch(
        episode_id=np.array(columns[0], dtype=object),
        t=np.array(columns[1], dtype=np.int64),
        obs=np.array(columns[2], dtype=np.float32),
        action=np.array(columns[3], dtype=np.float32),
        reward=np.array(columns[4], dtype=np.float32),
        next_obs=np.array(columns[5], dtype=np.float32),
        terminated=np.array(columns[6], dtype=bool),
        truncated=np.array(columns[7], dtype=bool),
        model_version=np.zeros(n, dtype=np.int64),
    )


# ---------------------------------------------------------------------- registry


def test_registry_names_and_defaults_per_action_space() -> None:
    assert ALGORITHMS == {"DQN": DQN, "SAC": SAC}
    assert DEFAULT_BY_ACTION_SPACE == {"discrete": "DQN", "box": "SAC"}
    assert algorithm_class(game_spec("CartPole-v1")) is DQN
    assert algorithm_class(game_spec(PENDULUM)) is SAC
    assert (DQN.output, SAC.output) == (
        {"name": "q_values", "kind": "q_values"},
        {"name": "action", "kind": "action", "sample": "action_sample"},
    )


def test_registry_errors_name_the_field_and_the_allowed_values() -> None:
    with pytest.raises(AlgorithmConfigError, match=r"algorithm: unknown 'PPO'; allowed: DQN, SAC"):
        algorithm_class(game_spec("CartPole-v1"), "PPO")
    with pytest.raises(
        AlgorithmConfigError,
        match=r"algorithm: SAC learns box action spaces, but 'CartPole-v1' has a discrete action space; "
        r"allowed for this game: DQN",
    ):
        algorithm_class(game_spec("CartPole-v1"), "SAC")
    with pytest.raises(AlgorithmConfigError, match=r"allowed for this game: SAC"):
        algorithm_class(game_spec(PENDULUM), "DQN")


def test_hyperparameters_are_checked_against_the_algorithms_defaults() -> None:
    spec = game_spec(PENDULUM)
    assert SAC(spec, {"hidden": [32, 32], "tau": 1}).hp.hidden == (32, 32)
    with pytest.raises(AlgorithmConfigError, match=r"hyperparameters.lr: not a SAC hyperparameter; allowed: actor_lr"):
        SAC(spec, {"lr": 0.1})
    with pytest.raises(AlgorithmConfigError, match=r"hyperparameters.batch_size: must be like 256 \(int\), got '8'"):
        SAC(spec, {"batch_size": "8"})


# ---------------------------------------------------------------------- SAC


def test_sac_train_batch_normalises_box_actions_for_rllib() -> None:
    source = pendulum_batch(300)
    batch = (
        SAC(game_spec(PENDULUM))
        .to_train_batch(source, np.ones(len(source), np.int64))
        .policy_batches[DEFAULT_POLICY_ID]
    )
    assert batch["actions"].dtype == np.float32 and batch["actions"].shape == (300, 1)
    np.testing.assert_allclose(batch["actions"], source.action / 2.0, atol=1e-6)  # [-2, 2] -> [-1, 1]
    assert batch["truncateds"].sum() == 1 and batch["terminateds"].sum() == 0


def test_sac_learner_updates_from_a_store_batch() -> None:
    sac = SAC(game_spec(PENDULUM), TINY_SAC)
    group = sac.build_learner_group(seed=0)
    source = pendulum_batch(300)
    before = group.get_weights()
    for step in range(1, 4):
        results = group.update(
            batch=sac.to_train_batch(source[np.arange(32) + step], np.ones(32, np.int64)),
            timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: step},
        )
    losses = results[0][DEFAULT_POLICY_ID]
    assert np.isfinite(float(_peek(losses["qf_loss"]))) and np.isfinite(float(_peek(losses["policy_loss"])))
    after = group.get_weights()
    changed = [
        k
        for k in before[DEFAULT_POLICY_ID]
        if not np.allclose(before[DEFAULT_POLICY_ID][k], after[DEFAULT_POLICY_ID][k])
    ]
    assert any(k.startswith("pi") for k in changed) and any(k.startswith("qf") for k in changed)


def test_sac_q_networks_join_obs_and_action_with_the_fusion_layers_it_is_given() -> None:
    weights = SAC(game_spec(PENDULUM), {**TINY_SAC, "fusion_hidden": [8]}).build_learner_group(seed=0).get_weights()
    fusion = {k: v.shape for k, v in weights[DEFAULT_POLICY_ID].items() if ".fusion_layers." in k and "weight" in k}
    # One [8] layer in each of qf, qf_twin and their targets: RLlib's default would be two layers of 256.
    assert len(fusion) == 4 and all(shape[0] == 8 for shape in fusion.values()), fusion


def test_dqn_onnx_model_gives_rllibs_q_values_from_the_fast_exporter(caplog: pytest.LogCaptureFixture) -> None:
    """RLlib's dueling head uses ``nanmean``, which the TorchScript exporter lacks: the project's symbolic for it
    keeps DQN off the slow dynamo fallback, and the exported model computes RLlib's own Q-values."""
    import onnxruntime as ort
    import torch

    dqn = DQN(game_spec("CartPole-v1"))
    module = dqn.build_learner_group(seed=0)._learner.module[DEFAULT_POLICY_ID]
    with caplog.at_level("DEBUG", logger="rlplatform.train.algorithms.base"):
        model = dqn.export_onnx(module)
    assert "dynamo" not in caplog.text
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = module.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"].numpy()
    q_values = ort.InferenceSession(model).run(None, {"obs": obs})[0]
    np.testing.assert_allclose(q_values, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def pendulum_settings(tmp_path: Path):
    with mock_aws():
        s = Settings(sqlite=SqliteSettings(path=tmp_path / "store.sqlite"), bucket="models")
        boto3.client("s3").create_bucket(Bucket=s.bucket)
        with SqliteStore(s.sqlite.path) as store:
            store.write(PENDULUM, pendulum_batch(400))
        yield s


def test_sac_model_published_and_acted_on_by_the_subscriber_stays_inside_the_box(pendulum_settings: Settings) -> None:
    cfg = TrainerConfig(game_id=PENDULUM, hyperparameters=TINY_SAC, publish_every_updates=5, eval_episodes=1)
    trainer = Trainer(pendulum_settings, cfg)
    assert isinstance(trainer.algorithm, SAC) and trainer.publish_every == 5
    assert Trainer(pendulum_settings, TrainerConfig(game_id=PENDULUM, hyperparameters=TINY_SAC)).publish_every == 500
    trainer.run(threading.Event(), max_updates=5)

    s3 = boto3.client("s3")
    manifest = ManifestDocument.from_json(
        s3.get_object(Bucket="models", Key=latest_key(PENDULUM))["Body"].read()
    ).manifest
    assert manifest.algorithm == "SAC"
    assert manifest.output == {"name": "action", "kind": "action", "sample": "action_sample"}
    assert manifest.action_space == {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}
    assert manifest.eval_return is not None and -2000 < manifest.eval_return <= 0

    subscriber = ModelSubscriber("models", PENDULUM, trusted_keys=TRUSTED_KEYS, s3=s3)
    assert subscriber.poll()
    obs = np.random.default_rng(0).uniform(-8, 8, (200, 3)).astype(np.float32)
    actions = np.array([subscriber.act(o) for o in obs])
    assert actions.shape == (200, 1) and actions.dtype == np.float32
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0) and np.ptp(actions) > 0
    raw = subscriber.forward(obs)  # the graph itself keeps its action inside the box
    assert raw.shape == (200, 1) and np.all(np.abs(raw) <= 2.0)
    # Exploring: a new draw from the policy's squashed Gaussian per call, spread around the greedy action.
    samples = np.array([subscriber.sample(obs[0]) for _ in range(200)])
    assert samples.shape == (200, 1) and samples.dtype == np.float32 and np.all(np.abs(samples) <= 2.0)
    assert len(np.unique(samples)) > 150 and samples.std() > 0.1


def _peek(value: object) -> float:
    return value.peek() if hasattr(value, "peek") else value


# ---------------------------------------------------------------------- choosing per game


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_sets_algorithm_and_hyperparameters_and_the_command_line_wins(tmp_path: Path, suffix: str) -> None:
    doc = {"algorithm": "SAC", "hyperparameters": {"batch_size": 64, "tau": 0.01}}
    path = tmp_path / f"pendulum{suffix}"
    path.write_text(
        json.dumps(doc) if suffix == ".json" else "algorithm: SAC\nhyperparameters:\n  batch_size: 64\n  tau: 0.01\n"
    )
    cfg = trainer_config(PENDULUM, config_file=path)
    assert cfg.algorithm == "SAC" and cfg.hyperparameters == {"batch_size": 64, "tau": 0.01}
    cfg = trainer_config("CartPole-v1", config_file=path, algorithm="DQN", hyperparameters={"batch_size": 16})
    assert cfg.algorithm == "DQN" and cfg.hyperparameters["batch_size"] == 16
    assert trainer_config(PENDULUM).algorithm is None  # the default for the game's action space


def test_config_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"algo": "SAC"}))
    with pytest.raises(AlgorithmConfigError, match=r"algo: unknown key; allowed: algorithm, hyperparameters"):
        trainer_config(PENDULUM, config_file=path)
    path.write_text(json.dumps({"hyperparameters": [1]}))
    with pytest.raises(AlgorithmConfigError, match=r"hyperparameters: must be a mapping"):
        trainer_config(PENDULUM, config_file=path)


def test_train_command_algorithm_flag_wins_over_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[TrainerConfig] = []

    class Recorder:
        def __init__(self, _settings: Settings, cfg: TrainerConfig, **_: object) -> None:
            seen.append(cfg)

        def run(self, *_: object, **__: object) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    path = tmp_path / "cartpole.yaml"
    path.write_text("algorithm: SAC\nhyperparameters: {batch_size: 64}\n")
    runner = CliRunner()
    result = runner.invoke(cli.app, ["train", "--game", "CartPole-v1", "--config", str(path), "--algorithm", "DQN"])
    assert result.exit_code == 0, result.output
    assert seen[-1].algorithm == "DQN" and seen[-1].hyperparameters == {"batch_size": 64}
    monkeypatch.undo()  # the real Trainer refuses the name before it trains or publishes anything
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=load_settings().bucket)
        result = runner.invoke(cli.app, ["train", "--game", "CartPole-v1", "--algorithm", "PPO"])
    assert result.exit_code == 2 and "algorithm: unknown 'PPO'; allowed: DQN, SAC" in result.output
