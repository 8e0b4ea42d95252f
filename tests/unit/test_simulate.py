import json
import os
import sys
import threading

import boto3
import numpy as np
import pytest
from moto import mock_aws
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from rlplatform_client.cli import app
from rlplatform_client.games import GameSpec
from rlplatform_client.models import ModelManifest, latest_key, manifest_document, publish_model
from rlplatform_client.simulate import (
    BotClient,
    MissingDependencyError,
    SimConfig,
    epsilon,
    gaussian_explore,
    import_gymnasium,
)
from rlplatform_client.subscriber import ModelSubscriber
from tests.support import SIGNING_KEY, TRUSTED_KEYS


def test_epsilon_follows_apex_schedule() -> None:
    assert epsilon(0, 8) == pytest.approx(0.4)
    assert epsilon(7, 8) == pytest.approx(0.4**8)
    assert epsilon(0, 1) == pytest.approx(0.4)
    values = [epsilon(i, 5) for i in range(5)]
    assert values == sorted(values, reverse=True)


def test_missing_gymnasium_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # Makes `import gymnasium` raise ImportError.
    with pytest.raises(MissingDependencyError, match=r"rlplatform-client\[simulate\]"):
        import_gymnasium()


def test_cli_exposes_simulate() -> None:
    result = CliRunner().invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--clients", "--stream", "--bucket", "--seconds", "--episodes-per-client", "--stats-dir"):
        assert option in result.output


def test_bot_client_plays_records_and_writes_stats(tmp_path) -> None:
    cfg = SimConfig(
        game="CartPole-v1",
        clients=2,
        stream="exp",
        bucket="models-bkt",
        trusted_keys=TRUSTED_KEYS.decode(),
        episodes_per_client=2,
        stats_dir=str(tmp_path),
        chunk_steps=16,
    )
    with mock_aws():
        boto3.client("kinesis").create_stream(StreamName="exp", ShardCount=1)
        boto3.client("s3").create_bucket(Bucket="models-bkt")
        client = BotClient(cfg, 1, os.getppid(), threading.Event())
        assert client.run() == 0
    stats = json.loads((tmp_path / "client-1.json").read_text())
    assert stats["done"] is True and stats["flushed"] is True
    assert stats["episodes"] == 2 and stats["model_version"] == 0
    assert stats["steps_acked"] == stats["steps_recorded"] > 0
    assert stats["epsilon"] == pytest.approx(0.4**8)
    assert [p.name for p in tmp_path.iterdir()] == ["client-1.json"]  # No temp files left behind.


def test_bot_client_keeps_playing_with_a_pointer_to_a_missing_model(tmp_path) -> None:
    cfg = SimConfig(
        game="CartPole-v1",
        clients=1,
        stream="exp",
        bucket="models-bkt",
        trusted_keys=TRUSTED_KEYS.decode(),
        episodes_per_client=3,
        stats_dir=str(tmp_path),
        poll_seconds=0,  # Polls before every step: a tight retry loop would show in rejected_loads.
    )
    manifest = ModelManifest.create(
        "CartPole-v1",
        4,
        b"never uploaded",
        algorithm="DQN",
        learner_step=1,
        observation_space={"type": "box", "shape": [4], "low": [None] * 4, "high": [None] * 4},
        action_space={"type": "discrete", "n": 2},
    )
    with mock_aws():
        boto3.client("kinesis").create_stream(StreamName="exp", ShardCount=1)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models-bkt")
        s3.put_object(Bucket="models-bkt", Key=latest_key("CartPole-v1"), Body=manifest_document(manifest, SIGNING_KEY))
        client = BotClient(cfg, 0, os.getppid(), threading.Event())
        assert client.run() == 0
    stats = json.loads((tmp_path / "client-0.json").read_text())
    assert stats["episodes"] == 3 and stats["steps_recorded"] >= 3 * 8 and stats["model_version"] == 0
    # Dozens of polls, a handful of attempts: the subscriber backs off the missing model.
    assert 1 <= stats["rejected_loads"] <= 3


def test_gaussian_exploration_stays_inside_the_box_and_scales_with_its_width() -> None:
    rng = np.random.default_rng(0)
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)
    greedy = np.array([1.9, 5.0], np.float32)
    noisy = np.array([gaussian_explore(greedy, low, high, 0.1, rng) for _ in range(2000)])
    assert noisy.dtype == np.float32 and np.all(noisy >= low) and np.all(noisy <= high)
    assert noisy[:, 1].std() == pytest.approx(0.5, rel=0.1)  # 0.1 of half the width 10
    assert noisy[:, 0].max() == 2.0  # clipped, not resampled


def action_model(sample: float | None = None) -> bytes:
    """obs [None, 3] float32 -> action [None, 1] = 10 * obs[0]: far outside Pendulum's [-2, 2] for most obs;
    with ``sample``, a second output ``action_sample`` [None, 1] that is always ``sample``."""
    w = numpy_helper.from_array(np.array([[10.0], [0.0], [0.0]], dtype=np.float32), name="W")
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["action"])]
    outputs = [helper.make_tensor_value_info("action", TensorProto.FLOAT, [None, 1])]
    initializers = [w]
    if sample is not None:
        zero = numpy_helper.from_array(np.zeros((3, 1), np.float32), name="Z")
        const = numpy_helper.from_array(np.array([sample], np.float32), name="C")
        nodes += [
            helper.make_node("MatMul", ["obs", "Z"], ["zeros"]),
            helper.make_node("Add", ["zeros", "C"], ["action_sample"]),
        ]
        outputs.append(helper.make_tensor_value_info("action_sample", TensorProto.FLOAT, [None, 1]))
        initializers += [zero, const]
    obs = helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph(nodes, "tiny_action", [obs], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


# One Pendulum client of one episode, trusting the session's signing key.
PENDULUM_CLIENT = SimConfig(
    game="Pendulum-v1",
    clients=1,
    stream="exp",
    bucket="models-bkt",
    episodes_per_client=1,
    trusted_keys=TRUSTED_KEYS.decode(),
)


def choices_with(data: bytes, output: dict, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(obs, float32[n, 1] actions) a Pendulum client chooses for one observation with this model published."""
    cfg = PENDULUM_CLIENT
    manifest = ModelManifest.create(
        "Pendulum-v1",
        1,
        data,
        algorithm="SAC",
        learner_step=1,
        observation_space={"type": "box", "shape": [3], "low": [None] * 3, "high": [None] * 3},
        action_space={"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]},
        output=output,
    )
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models-bkt")
        publish_model(s3, "models-bkt", manifest, data, SIGNING_KEY)
        client = BotClient(cfg, 0, os.getppid(), threading.Event())
        client.subscriber = ModelSubscriber("models-bkt", "Pendulum-v1", trusted_keys=TRUSTED_KEYS, s3=s3)
        assert client.subscriber.poll()
        env = import_gymnasium().make("Pendulum-v1")
        obs, _ = env.reset(seed=0)
        return obs, np.array([client._choose(env, obs) for _ in range(n)])


def test_bot_client_explores_around_an_action_model_inside_the_box() -> None:
    obs, actions = choices_with(action_model(), {"name": "action", "kind": "action"})
    greedy = np.clip(10 * obs[0], -2, 2)
    assert actions.shape == (500, 1) and np.all(np.abs(actions) <= 2.0)
    assert actions.std() > 0 and abs(np.median(actions) - greedy) < 0.5  # epsilon 0.4: noise std 0.8


def test_bot_client_explores_with_the_models_own_sample_when_it_has_one() -> None:
    output = {"name": "action", "kind": "action", "sample": "action_sample"}
    _, actions = choices_with(action_model(sample=1.25), output, n=50)
    assert actions.dtype == np.float32 and np.all(actions == 1.25)  # no noise of its own on top


def test_a_client_keeps_playing_its_model_when_the_pointer_names_one_that_does_not_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another game's model (obs [None, 4]) with its true digest behind a Pendulum manifest: the client's poll
    logs the refusal, keeps v1 and goes on choosing actions."""
    cfg = PENDULUM_CLIENT
    spaces = {
        "observation_space": {"type": "box", "shape": [3], "dtype": "float32"},
        "action_space": {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]},
    }
    good, other = action_model(), _model_with_obs_dim(4)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models-bkt")
        client = BotClient(cfg, 0, os.getppid(), threading.Event())
        env = import_gymnasium().make("Pendulum-v1")
        spec = GameSpec.from_gym_spaces("Pendulum-v1", env.observation_space, env.action_space)
        client.subscriber = ModelSubscriber("models-bkt", "Pendulum-v1", trusted_keys=TRUSTED_KEYS, s3=s3, spec=spec)
        for version, data in ((1, good), (2, other)):
            manifest = ModelManifest.create(
                "Pendulum-v1", version, data, algorithm="SAC", learner_step=version,
                output={"name": "action", "kind": "action"}, **spaces,
            )  # fmt: skip
            publish_model(s3, "models-bkt", manifest, data, SIGNING_KEY)
            client._poll()
        assert client.subscriber.version == 1 and client.subscriber.rejected_loads == 1
        assert "does not run on a float32[1, 3] observation" in caplog.text
        obs, _ = env.reset(seed=0)
        assert np.all(np.abs(client._choose(env, obs)) <= 2.0)


def _model_with_obs_dim(obs_dim: int) -> bytes:
    w = numpy_helper.from_array(np.zeros((obs_dim, 1), np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["action"])],
        "other_game",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, obs_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()
