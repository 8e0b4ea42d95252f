"""``rlplatform bench dashboard``: a tiny run reads every stored step, agrees with the full recompute and reports
positive timings; the data it stores looks like play; bad options are refused naming the option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.dashboard.bench import (
    BenchDashboardError,
    DashboardBenchConfig,
    check_options,
    play,
    run_dashboard_bench,
)
from rlplatform.store.base import EpisodeSteps, live_returns_of


def test_a_tiny_run_reads_every_step_and_matches_the_full_recompute(tmp_path: Path) -> None:
    work = tmp_path / "work"
    cfg = DashboardBenchConfig(transitions=5_000, new_steps=500, refreshes=2, work_dir=work)

    result = run_dashboard_bench(cfg)

    assert (result["transitions"], result["new_steps"], result["games"]) == (5_000, 500, 1)
    assert result["matches_full_recompute"] is True
    assert result["catch_up"]["refreshes"] == 1 and result["catch_up"]["seconds"] > 0
    for part in ("refresh_idle", "refresh_new_steps"):
        assert result[part]["refreshes"] == 2 and result[part]["median_s"] > 0
        assert result[part]["s3_requests_per_refresh"] > 0
    assert "read_seqs" not in result["refresh_idle"]["store_calls_per_refresh"]  # nothing new: nothing read
    assert result["refresh_new_steps"]["store_calls_per_refresh"]["read_seqs"] == 1
    assert result["full_recompute"]["transitions"] == 6_000 and result["full_recompute"]["median_s"] > 0
    assert result["machine"]["cpus"] >= 1
    assert not work.exists()  # the store is deleted, and the work dir with it when empty


def test_play_is_interleaved_whole_episodes_with_unfinished_ones_at_the_end() -> None:
    batch = play(20_000, np.random.default_rng(1))
    ended = batch.terminated | batch.truncated
    assert len(batch) == 20_000 and not (batch.terminated & batch.truncated).any()
    assert (batch.t[batch.truncated] == 499).all() and (batch.t[batch.terminated] < 499).all()
    assert batch.episode_id[0] != batch.episode_id[256]  # another client's chunk follows the first
    steps = EpisodeSteps(batch.episode_id, batch.t, batch.reward, ended, batch.model_version)
    live = live_returns_of(steps)
    assert sorted(live) == [0, 1, 2, 3]
    assert sum(r.episodes for r in live.values()) == ended.sum()  # every finished episode is whole
    assert len(set(batch.episode_id)) > ended.sum()  # and some are still running


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"store": "cassandra"}, r"^store: only sqlite"),
        ({"transitions": 999}, r"^--transitions: at least 1000"),
        ({"transitions": 1500, "games": 2}, r"^--transitions: at least 1000 per game"),
        ({"new_steps": 0}, r"^--new-steps: "),
        ({"new_steps": 10**7}, r"^--new-steps: "),
        ({"refreshes": 0}, r"^--refreshes: at least 1"),
        ({"games": 0}, r"^--games: at least 1"),
    ],
)
def test_bad_options_are_refused_naming_the_option(change: dict, message: str) -> None:
    with pytest.raises(BenchDashboardError, match=message):
        check_options(DashboardBenchConfig(**{"transitions": 5_000, **change}))


def test_the_command_refuses_a_bad_option_before_running() -> None:
    result = CliRunner().invoke(app, ["bench", "dashboard", "--transitions", "10"])
    assert result.exit_code == 2 and "--transitions" in result.output


def test_the_command_prints_one_json_line(tmp_path: Path) -> None:
    args = ["bench", "dashboard", "--transitions", "2000", "--games", "2", "--new-steps", "200", "--refreshes", "1"]
    result = CliRunner().invoke(app, [*args, "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["games"] == 2 and out["transitions"] == 2000 and out["matches_full_recompute"] is True
