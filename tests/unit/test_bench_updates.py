"""``rlplatform bench updates``: option refusal, one play as both sides' data, both sides really update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlplatform.bench.updates import BenchUpdatesError, check_options, random_play
from rlplatform.cli import app
from rlplatform.games import game_spec
from rlplatform.settings import Settings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"updates": 5}, r"^--updates: must be at least 10, got 5"),
        ({"rounds": 0}, r"^--rounds: must be at least 1, got 0"),
        ({"steps": 10}, r"^--steps: must be at least 1000, got 10"),
        ({"game": "NoSuchGame-v0"}, r"^--game: .*NoSuchGame-v0"),
    ],
)
def test_bad_options_are_refused_naming_the_option(args: dict, message: str) -> None:
    options = {"game": "CartPole-v1", "updates": 10, "rounds": 1, "steps": 1000, **args}
    with pytest.raises(BenchUpdatesError, match=message):
        check_options(**options)


def test_store_rows_and_episodes_hold_the_same_transitions() -> None:
    batch, episodes = random_play(game_spec("CartPole-v1"), 1000, seed=3)
    assert len(batch) == 1000 == sum(len(e) for e in episodes)
    first = episodes[0]
    n = len(first)
    np.testing.assert_array_equal(batch.obs[:n], np.asarray(first.get_observations())[:-1])
    np.testing.assert_array_equal(batch.next_obs[:n], np.asarray(first.get_observations())[1:])
    np.testing.assert_array_equal(batch.action[:n], first.get_actions())
    assert batch.terminated[n - 1] == first.is_terminated and not batch.terminated[: n - 1].any()
    assert episodes[-1].is_truncated or episodes[-1].is_terminated  # the last one is cut at 1000 steps
    assert batch.truncated[-1] or batch.terminated[-1]
    assert len(set(batch.episode_id)) == len(episodes)


def test_the_command_prints_both_rates_and_their_ratio(tmp_path: Path) -> None:
    args = ["bench", "updates", "--updates", "10", "--rounds", "1", "--steps", "1000", "--work-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["algorithm"] == "DQN" and out["transitions"] == 1000
    assert out["updates_per_s_store"] > 0 and out["updates_per_s_memory"] > 0
    assert out["ratio"] == pytest.approx(out["updates_per_s_store"] / out["updates_per_s_memory"], rel=0.01)


def test_the_store_side_can_be_cassandra(
    cassandra_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learner fed from a real Cassandra node (a fresh keyspace, dropped afterwards)."""
    monkeypatch.setenv("RLP_CASSANDRA_CONTACT_POINTS", cassandra_settings.cassandra.contact_points)
    monkeypatch.setenv("RLP_CASSANDRA_PORT", str(cassandra_settings.cassandra.port))
    args = ["bench", "updates", "--store", "cassandra", "--updates", "10", "--rounds", "1", "--steps", "1000"]
    result = CliRunner().invoke(app, [*args, "--work-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["store"] == "cassandra" and out["transitions"] == 1000 and out["updates_per_s_store"] > 0


def test_the_command_refuses_a_bad_option_before_running() -> None:
    result = CliRunner().invoke(app, ["bench", "updates", "--rounds", "0"])
    assert result.exit_code == 2
    assert "--rounds" in result.output
