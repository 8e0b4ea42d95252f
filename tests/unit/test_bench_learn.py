"""``rlplatform bench learn``: option refusal, the results arithmetic, the tuned config, the shared judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID
from typer.testing import CliRunner

from rlplatform.bench import learn as bench_learn
from rlplatform.bench.learn import PIPELINE, PIPELINE_HP, TUNED, BenchLearnError, Run, check_options, summarize
from rlplatform.cli import app
from rlplatform.games import game_spec
from rlplatform.train.algorithms import algorithm_class


def test_unknown_game_and_too_few_seeds_are_refused_naming_the_option() -> None:
    with pytest.raises(BenchLearnError, match=r"^--game: 'Breakout-v5'.*CartPole-v1"):
        check_options("Breakout-v5", 1)
    with pytest.raises(BenchLearnError, match=r"^--seeds: must be at least 1"):
        check_options("CartPole-v1", 0)
    assert check_options("Pendulum-v1", 2) == -250.0


@pytest.mark.parametrize(("args", "option"), [(["--game", "Nope-v0"], "--game"), (["--seeds", "0"], "--seeds")])
def test_the_command_refuses_bad_options_before_running_anything(args: list[str], option: str) -> None:
    result = CliRunner().invoke(app, ["bench", "learn", "--game", "CartPole-v1", *args])
    assert result.exit_code == 2
    assert option in result.output


def _run(side: str, seed: int, seconds: float | None, steps: int | None) -> Run:
    return Run(side, seed, [{"seconds": 1.0, "env_steps": 10, "eval_return": 9.0}], seconds, steps)


def test_medians_count_missed_seeds_as_slowest_and_ratios_use_the_faster_direct_side() -> None:
    runs = [
        _run(TUNED, 0, 100.0, 20_000),
        _run(TUNED, 1, None, None),
        _run(TUNED, 2, 120.0, 10_000),
        _run(PIPELINE_HP, 0, 60.0, 30_000),
        _run(PIPELINE_HP, 1, 80.0, 40_000),
        _run(PIPELINE_HP, 2, 70.0, 50_000),
        _run(PIPELINE, 0, 140.0, 60_000),
        _run(PIPELINE, 1, None, None),
        _run(PIPELINE, 2, 210.0, None),
    ]
    out = summarize(runs)
    assert out["medians"][TUNED] == {"seconds_to_target": 120.0, "env_steps_to_target": 20_000, "reached": "2/3"}
    assert out["medians"][PIPELINE_HP]["seconds_to_target"] == 70.0
    assert out["medians"][PIPELINE] == {"seconds_to_target": 210.0, "env_steps_to_target": None, "reached": "2/3"}
    assert out["best_direct"] == {"seconds": PIPELINE_HP, "env_steps": TUNED}
    assert out["ratio_seconds"] == 3.0
    assert out["ratio_env_steps"] is None  # the pipeline's median seed has no env steps
    assert out["runs"][TUNED][1] == {
        "seed": 1,
        "seconds_to_target": None,
        "env_steps_to_target": None,
        "error": None,
        "reached": False,
        "final_eval_return": 9.0,
    }
    json.dumps(out)


def test_no_direct_side_reaching_gives_null_ratios() -> None:
    out = summarize([_run(TUNED, 0, None, None), _run(PIPELINE_HP, 0, None, None), _run(PIPELINE, 0, 5.0, 50)])
    assert out["best_direct"] == {"seconds": None, "env_steps": None}
    assert out["ratio_seconds"] is None and out["ratio_env_steps"] is None


def _missed(side: str, seed: int, seconds: float, steps: int) -> Run:
    """A run that trained ``seconds`` (its last evaluation) without reaching the target."""
    return Run(side, seed, [{"seconds": 10.0, "env_steps": 100, "eval_return": 9.0},
                            {"seconds": seconds, "env_steps": steps, "eval_return": 300.0}])  # fmt: skip


def test_direct_runs_that_missed_bound_the_ratio_by_the_training_they_got() -> None:
    runs = [
        *(_missed(TUNED, seed, 480.0, 50_000 + seed) for seed in range(3)),
        _missed(PIPELINE_HP, 0, 480.0, 20_000),
        _run(PIPELINE_HP, 1, 400.0, 30_000),
        _missed(PIPELINE_HP, 2, 480.0, 25_000),
        _run(PIPELINE, 0, 200.0, 80_000),
        _run(PIPELINE, 1, 300.0, 100_000),
        _run(PIPELINE, 2, 240.0, 90_000),
    ]
    out = summarize(runs)
    assert out["ratio_seconds"] is None and out["ratio_env_steps"] is None
    assert out["ratio_seconds_at_most"] == round(240.0 / 480.0, 3)
    assert out["ratio_env_steps_at_most"] == round(90_000 / 25_000, 3)  # RLlib alone used fewer env steps
    assert out["pipeline_slowest_over_median"] == round(300.0 / 240.0, 3)


def test_the_bound_is_the_ratio_when_every_direct_run_reached_and_none_when_the_pipeline_missed() -> None:
    reached = [_run(TUNED, 0, 100.0, 1_000), _run(PIPELINE_HP, 0, 80.0, 2_000), _run(PIPELINE, 0, 40.0, 4_000)]
    out = summarize(reached)
    assert out["ratio_seconds_at_most"] == out["ratio_seconds"] == 0.5
    assert out["ratio_env_steps_at_most"] == out["ratio_env_steps"] == 4.0
    out = summarize([*reached[:2], _missed(PIPELINE, 0, 480.0, 9_000)])
    assert out["ratio_seconds_at_most"] is None and out["pipeline_slowest_over_median"] is None


def test_tuned_cartpole_config_is_rllibs_shipped_example() -> None:
    config = bench_learn.tuned_config("CartPole-v1")
    assert (config.lr, config.train_batch_size_per_learner, config.n_step) == (0.0005, 32, (2, 5))
    assert config.double_q and config.dueling
    assert config.replay_buffer_config["type"] == "PrioritizedEpisodeReplayBuffer"
    assert config.replay_buffer_config["capacity"] == 50_000
    assert config.epsilon == [(0, 1.0), (10000, 0.02)]
    assert config.model_config["fcnet_hiddens"] == [256] and config.model_config["head_fcnet_hiddens"] == [256]


def test_pipeline_hp_config_carries_the_pipelines_hyperparameters() -> None:
    spec = game_spec("CartPole-v1")
    algorithm = algorithm_class(spec)(spec)
    config = bench_learn.pipeline_hp_config(algorithm)
    assert config.train_batch_size_per_learner == algorithm.hp.batch_size
    assert config.replay_buffer_config["capacity"] == algorithm.hp.replay_window
    assert config.num_steps_sampled_before_learning_starts == algorithm.hp.learning_starts
    assert config.model_config["fcnet_hiddens"] == [algorithm.hp.hidden]


@pytest.mark.parametrize(("game", "low", "high"), [("CartPole-v1", 8.0, 500.0), ("Pendulum-v1", -2000.0, 0.0)])
def test_the_shared_judge_scores_an_exported_tuned_module(game: str, low: float, high: float) -> None:
    spec = game_spec(game)
    algorithm = algorithm_class(spec)(spec)
    obs_space, act_space = spec.spaces()
    config = bench_learn.tuned_config(game).environment(observation_space=obs_space, action_space=act_space)
    group = config.build_learner_group(spaces={DEFAULT_POLICY_ID: (obs_space, act_space)})
    onnx = next(iter(group.foreach_learner(lambda learner: algorithm.export_onnx(learner.module[DEFAULT_POLICY_ID]))))
    score = bench_learn.judge_for(algorithm, episodes=2)(onnx.get() if hasattr(onnx, "get") else onnx, 0)
    assert low <= score <= high  # an untrained network still plays whole episodes


def test_pipeline_results_are_read_from_up_output(tmp_path: Path) -> None:
    summary = {"games": {"CartPole-v1": {"seconds_to_solve": 90.5, "env_steps_to_solve": 30_000}}}
    (tmp_path / "stdout.log").write_text("starting\n" + json.dumps(summary) + "\n")
    evals = [
        {"seconds": 30.0, "env_steps": 9_000, "version": 1, "eval_return": 20.0},
        {"seconds": 90.5, "env_steps": 30_000, "version": 4, "eval_return": 480},
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"evals": {"CartPole-v1": evals}}))
    run = bench_learn.read_pipeline(Run(PIPELINE, 0), tmp_path, "CartPole-v1")
    assert (run.reached, run.seconds_to_target, run.env_steps_to_target) == (True, 90.5, 30_000)
    assert [p["env_steps"] for p in run.curve] == [9_000, 30_000]


def test_pipeline_without_summary_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "stdout.log").write_text("Traceback ...\n")
    run = bench_learn.read_pipeline(Run(PIPELINE, 0), tmp_path, "CartPole-v1")
    assert not run.reached and "no summary" in run.error


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    bench_learn.plot([_run(TUNED, 0, None, None), _run(PIPELINE, 0, None, None)], 475.0, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
