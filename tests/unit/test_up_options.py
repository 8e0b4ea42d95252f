"""`rlplatform up`'s games, targets and training documents, and how a game without a simulator is judged."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from rlplatform.cli.app import _targets, app
from rlplatform.games import game_spec
from rlplatform.stack.launcher import LaunchConfig, Stack, _listenable, live_target_reached
from rlplatform.store.base import LiveReturns
from rlplatform.train.training import training_config


def test_targets_default_to_gymnasium_and_take_one_bare_value_or_per_game_values() -> None:
    assert _targets(["CartPole-v1"], []) == {"CartPole-v1": 475.0}
    assert _targets(["CartPole-v1", "Acrobot-v1"], ["-90"]) == {"CartPole-v1": -90.0, "Acrobot-v1": -90.0}
    both = _targets(["CartPole-v1", "Pendulum-v1"], ["Pendulum-v1=-250"])
    assert both == {"CartPole-v1": 475.0, "Pendulum-v1": -250.0}
    assert _targets(["Cue-v0", "CartPole-v1"], ["8", "CartPole-v1=400"]) == {"Cue-v0": 8.0, "CartPole-v1": 400.0}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--game", "Pendulum-v1"], "Pendulum-v1 has no default"),
        (["--game", "Cue-v0"], "Cue-v0 has no default"),
        (["--target-return", "Pendulum-v1=-250"], "'Pendulum-v1' is not one of the games"),
        (["--target-return", "fast"], "'fast' is not a number or GAME=number"),
        (["--target-return", "1", "--target-return", "2"], "one bare VALUE at most"),
        (["--game", "CartPole-v1", "--game", "CartPole-v1"], "a game is given twice"),
        (["--game", "CartPole-v1", "--algorithm", "SAC"], "SAC"),
    ],
)
def test_bad_games_or_targets_are_refused_before_anything_starts(argv: list[str], message: str, tmp_path) -> None:
    result = CliRunner().invoke(app, ["up", *argv, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def live(version: int, episodes: int, mean_return: float) -> LiveReturns:
    return LiveReturns(version, episodes, mean_return, std_return=1.0, mean_length=10.0)


def test_live_play_judges_the_newest_trained_version_over_enough_episodes() -> None:
    assert not live_target_reached({}, 8.0, 20)
    assert not live_target_reached({0: live(0, 500, 9.0)}, 8.0, 20)  # random play is not a model
    assert not live_target_reached({0: live(0, 100, 5.0), 3: live(3, 19, 9.5)}, 8.0, 20)  # too few episodes
    assert not live_target_reached({2: live(2, 50, 9.0), 3: live(3, 30, 7.9)}, 8.0, 20)  # newest, not best
    assert live_target_reached({2: live(2, 50, 6.0), 3: live(3, 20, 8.0)}, 8.0, 20)


def test_retention_bound_comes_from_the_option_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up --max-transitions-per-game` wins; without it, RLP_MAX_TRANSITIONS_PER_GAME, as its help says."""
    launched = []
    monkeypatch.setattr("rlplatform.stack.launcher.run_stack", lambda cfg: launched.append(cfg) or {"error": None})
    monkeypatch.setenv("RLP_MAX_TRANSITIONS_PER_GAME", "5000")
    assert CliRunner().invoke(app, ["up"]).exit_code == 0
    assert CliRunner().invoke(app, ["up", "--max-transitions-per-game", "2000"]).exit_code == 0
    assert [cfg.max_transitions_per_game for cfg in launched] == [5000, 2000]


def test_launch_options_become_each_games_training_document(tmp_path) -> None:
    """What the training service trains every game of the run with; unset options are left to the algorithm."""
    config = tmp_path / "pendulum.yaml"
    config.write_text("algorithm: SAC\nhyperparameters: {batch_size: 64}\n")
    cfg = LaunchConfig(
        targets={"Pendulum-v1": -250.0},
        trainer_config=config,
        learning_starts=300,
        learners=2,
        seed=3,
        publish_every_updates=50,
    )
    doc = Stack(cfg, tmp_path / "run").training_document()
    hyperparameters = {"batch_size": 64, "learning_starts": 300}
    assert doc == {"algorithm": "SAC", "hyperparameters": hyperparameters, "publish_every_updates": 50, "learners": 2,
                   "seed": 3}  # fmt: skip
    trains_with = training_config(game_spec("Pendulum-v1"), doc, "doc")
    assert (trains_with.algorithm, trains_with.learners, trains_with.seed) == ("SAC", 2, 3)
    assert Stack(LaunchConfig(), tmp_path / "defaults").training_document() == {"seed": 0}


def test_the_dashboard_listens_where_asked_else_on_a_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    launched = []
    monkeypatch.setattr("rlplatform.stack.launcher.run_stack", lambda cfg: launched.append(cfg) or {"error": None})
    for argv in ([], ["--dashboard-port", "9123"], ["--no-dashboard"]):
        assert CliRunner().invoke(app, ["up", *argv]).exit_code == 0
    assert [cfg.dashboard_port for cfg in launched] == [8050, 9123, None]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        other = _listenable(port)
        assert other != port and other > 0
    assert _listenable(port) == port  # free again
    assert _listenable(0) > 0
