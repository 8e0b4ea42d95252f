"""Per-game training documents: what the training service trains a game with, checked field by field."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.games import GameCatalog, game_spec
from rlplatform.infra import aws
from rlplatform.train.algorithms import AlgorithmConfigError
from rlplatform.train.training import read_training, training_config, training_key, write_training

CARTPOLE = game_spec("CartPole-v1")
PENDULUM = game_spec("Pendulum-v1")


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        monkeypatch.setenv("RLP_BUCKET", "models")
        yield "models"


def test_no_document_trains_with_the_games_default_algorithm() -> None:
    assert training_config(CARTPOLE, {}, "doc").algorithm == "DQN"
    assert training_config(PENDULUM, None, "doc").algorithm == "SAC"


def test_a_document_sets_algorithm_hyperparameters_and_cadence() -> None:
    doc = {"algorithm": "SAC", "hyperparameters": {"batch_size": 64}, "publish_every_updates": 50, "learners": 2}
    cfg = training_config(PENDULUM, doc | {"seed": 7}, "doc")
    assert (cfg.algorithm, dict(cfg.hyperparameters), cfg.publish_every_updates) == ("SAC", {"batch_size": 64}, 50)
    assert (cfg.learners, cfg.seed) == (2, 7)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"algorithm": "PPO9"}, "doc: algorithm: unknown 'PPO9'"),
        ({"algorithm": "SAC"}, "doc: algorithm: SAC learns box action spaces"),
        ({"hyperparameters": {"batch_size": 0}}, "doc: hyperparameters.batch_size: must be at least 1"),
        ({"hyperparameters": {"hiden": 3}}, "doc: hyperparameters.hiden: not a DQN hyperparameter"),
        ({"publish_every_updates": 0}, "doc: publish_every_updates: must be an int >= 1"),
        ({"retired": "yes"}, "doc: retired: must be true or false"),
        ({"learners": -1}, "doc: learners: must be an int in [0, 64]"),
        ({"seed": 1.5}, "doc: seed: must be an int"),
        ({"learnerz": 2}, "doc: learnerz: unknown key"),
        ([1, 2], "doc: must be a mapping"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(doc: object, message: str) -> None:
    with pytest.raises(AlgorithmConfigError) as info:
        training_config(CARTPOLE, doc, "doc")
    assert message in str(info.value)


def test_a_document_is_stored_only_once_checked(bucket: str) -> None:
    with pytest.raises(AlgorithmConfigError):
        write_training(bucket, CARTPOLE, {"algorithm": "SAC"})
    assert read_training(bucket, "CartPole-v1") == {}
    write_training(bucket, CARTPOLE, {"publish_every_updates": 10})
    assert read_training(bucket, "CartPole-v1") == {"publish_every_updates": 10}


def test_a_document_that_is_not_json_is_reported_not_hidden(bucket: str) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=training_key("CartPole-v1"), Body=b"{oops")
    with pytest.raises(AlgorithmConfigError, match="not JSON"):
        read_training(bucket, "CartPole-v1")


def test_configure_replaces_the_document_and_retire_keeps_it(bucket: str, tmp_path) -> None:
    GameCatalog(bucket).register(CARTPOLE)
    config = tmp_path / "c.yaml"
    config.write_text("hyperparameters:\n  batch_size: 64\n")
    runner = CliRunner()
    result = runner.invoke(app, ["games", "configure", "CartPole-v1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "trains with DQN" in result.output
    result = runner.invoke(app, ["games", "configure", "CartPole-v1", "--retire"])
    assert result.exit_code == 0 and "retired" in result.output
    assert read_training(bucket, "CartPole-v1") == {"hyperparameters": {"batch_size": 64}, "retired": True}
    shown = json.loads(runner.invoke(app, ["games", "show", "CartPole-v1"]).output)
    assert shown["training"]["retired"] is True and shown["trainer"] == "no training service has run it"


def test_configure_refuses_an_undeclared_game_and_a_bad_document(bucket: str, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["games", "configure", "Nope-v0", "--retire"])
    assert result.exit_code == 1 and "'Nope-v0' is not declared" in result.output
    GameCatalog(bucket).register(CARTPOLE)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"algorithm": "SAC"}))
    result = runner.invoke(app, ["games", "configure", "CartPole-v1", "--config", str(config)])
    assert result.exit_code == 1 and "algorithm: SAC learns box action spaces" in result.output
    assert read_training(bucket, "CartPole-v1") == {}


def test_register_declares_a_gymnasium_id_with_gymnasiums_spec(bucket: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["games", "register", "CartPole-v1", "--gymnasium"])
    assert result.exit_code == 0, result.output
    assert GameCatalog(bucket).declared("CartPole-v1") == CARTPOLE
    result = runner.invoke(app, ["games", "register", "NotAGymGame-v0", "--gymnasium"])
    assert result.exit_code == 1 and "NotAGymGame-v0" in result.output


def test_register_with_a_config_stores_the_document_before_the_spec(bucket: str, tmp_path) -> None:
    """The training service starts a declared game's trainer at once: it must find the document already there."""
    config = tmp_path / "c.yaml"
    config.write_text("algorithm: SAC\nhyperparameters:\n  batch_size: 64\n")
    written: list[str] = []

    def put(params: dict, **_: object) -> None:
        written.append(params["Key"])

    events = aws.s3_client().meta.events
    events.register("before-parameter-build.s3.PutObject", put)
    try:
        result = CliRunner().invoke(app, ["games", "register", "Pendulum-v1", "--gymnasium", "--config", str(config)])
    finally:
        events.unregister("before-parameter-build.s3.PutObject", put)
    assert result.exit_code == 0, result.output
    assert "declared Pendulum-v1" in result.output and "Pendulum-v1: trains with SAC" in result.output
    assert written == [training_key("Pendulum-v1"), "games/Pendulum-v1/spec.json"]
    assert read_training(bucket, "Pendulum-v1") == {"algorithm": "SAC", "hyperparameters": {"batch_size": 64}}


def test_register_with_a_bad_config_or_another_spec_stores_nothing(bucket: str, tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"algorithm": "SAC"}))
    result = runner.invoke(app, ["games", "register", "CartPole-v1", "--gymnasium", "--config", str(bad)])
    assert result.exit_code == 1 and "algorithm: SAC learns box action spaces" in result.output
    assert GameCatalog(bucket).declared("CartPole-v1") is None and read_training(bucket, "CartPole-v1") == {}

    GameCatalog(bucket).register(CARTPOLE)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"publish_every_updates": 10}))
    args = ["games", "register", "CartPole-v1", "--obs-size", "3", "--actions", "2", "--config", str(good)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "CartPole-v1" in result.output
    assert read_training(bucket, "CartPole-v1") == {}
    result = runner.invoke(app, ["games", "register", "CartPole-v1", "--gymnasium", "--config", str(good)])
    assert result.exit_code == 0 and "already declared, same spec" in result.output
    assert read_training(bucket, "CartPole-v1") == {"publish_every_updates": 10}
