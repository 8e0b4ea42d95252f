"""``rlplatform bench learn``: seconds and env steps to a target return, the pipeline against RLlib alone.

Per seed, one after the other on the same cores: RLlib directly on the gymnasium env (its own EnvRunner
and replay buffer) with RLlib's tuned example config as shipped, RLlib directly with the pipeline's
hyperparameters, then the full embedded pipeline (``rlplatform up``). Every side is judged the same way:
the learner's module exported to the ONNX model a client would load, played greedily for 20 episodes by
the trainer's evaluator (``rlplatform.train.evaluate``). The faster RLlib baseline is the one to beat.

The direct sides' clock counts training only (evaluation pauses it), so they are never slowed by being
judged; the pipeline's evaluation runs beside its training, as in ``rlplatform up``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

from rlplatform.games import GameSpec, game_spec
from rlplatform.infra import processes
from rlplatform.train.algorithms import Algorithm, algorithm_class
from rlplatform.train.evaluate import evaluate_onnx

log = logging.getLogger(__name__)

TARGETS: dict[str, float] = {"CartPole-v1": 475.0, "Pendulum-v1": -250.0}
TUNED = "rllib_tuned"
PIPELINE_HP = "rllib_pipeline_hp"
PIPELINE = "pipeline"
DIRECT_SIDES = (TUNED, PIPELINE_HP)
REPORT_EVERY_ENV_STEPS = 200
SIDES = (*DIRECT_SIDES, PIPELINE)


class BenchLearnError(ValueError):
    """A refused option; the message starts with the option's name."""


@dataclass(frozen=True)
class LearnBenchConfig:
    game: str
    seeds: int
    max_minutes: float
    work_dir: Path
    clients: int = 4
    eval_episodes: int = 20
    eval_every_s: float = 10.0


@dataclass
class Run:
    """One side's run for one seed; ``curve`` rows are {"seconds", "env_steps" (None if unknown), "eval_return"}."""

    side: str
    seed: int
    curve: list[dict] = field(default_factory=list)
    seconds_to_target: float | None = None
    env_steps_to_target: int | None = None
    error: str | None = None

    @property
    def reached(self) -> bool:
        return self.seconds_to_target is not None

    def at_least(self, measure: str) -> float:
        """Seconds or env steps to target if reached, else what the run spent without reaching it (0 if unknown):
        a lower bound on what reaching would have taken."""
        if self.reached:
            return float(getattr(self, f"{measure}_to_target") or 0)
        return float(self.curve[-1][measure] or 0) if self.curve else 0.0

    def result(self) -> dict:
        final = self.curve[-1]["eval_return"] if self.curve else None
        keep = ("seed", "seconds_to_target", "env_steps_to_target", "error")
        return {
            **{k: v for k, v in asdict(self).items() if k in keep},
            "reached": self.reached,
            "final_eval_return": final,
        }


def check_options(game: str, seeds: int) -> float:
    """The game's target return; ``BenchLearnError`` naming the option otherwise."""
    if game not in TARGETS:
        raise BenchLearnError(f"--game: {game!r} has no target here; allowed: {', '.join(TARGETS)}")
    if seeds < 1:
        raise BenchLearnError(f"--seeds: must be at least 1, got {seeds}")
    return TARGETS[game]


# ----------------------------------------------------------------------------------------------- configs


def tuned_config(game: str) -> AlgorithmConfig:
    """RLlib's tuned example for the game as RLlib ships it (one learner, no GPU)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if game == "CartPole-v1":
        from ray.rllib.algorithms.dqn import DQNConfig

        # ray-project/ray rllib/tuned_examples/dqn/cartpole_dqn.py
        return (
            DQNConfig()
            .environment(env=game)
            .training(
                lr=0.0005,
                train_batch_size_per_learner=32,
                replay_buffer_config={
                    "type": "PrioritizedEpisodeReplayBuffer",
                    "capacity": 50000,
                    "alpha": 0.6,
                    "beta": 0.4,
                },
                n_step=(2, 5),
                double_q=True,
                dueling=True,
                epsilon=[(0, 1.0), (10000, 0.02)],
            )
            .rl_module(
                model_config=DefaultModelConfig(
                    fcnet_hiddens=[256],
                    fcnet_activation="tanh",
                    fcnet_bias_initializer="zeros_",
                    head_fcnet_bias_initializer="zeros_",
                    head_fcnet_hiddens=[256],
                )
            )
        )
    if game == "Pendulum-v1":
        from ray.rllib.algorithms.sac import SACConfig
        from torch import nn

        # ray-project/ray rllib/tuned_examples/sac/pendulum_sac.py
        return (
            SACConfig()
            .environment(env=game)
            .training(
                initial_alpha=1.001,
                actor_lr=2e-4,
                critic_lr=8e-4,
                alpha_lr=9e-4,
                lr=None,
                target_entropy="auto",
                n_step=(2, 5),
                tau=0.005,
                train_batch_size_per_learner=256,
                target_network_update_freq=1,
                replay_buffer_config={
                    "type": "PrioritizedEpisodeReplayBuffer",
                    "capacity": 100000,
                    "alpha": 1.0,
                    "beta": 0.0,
                },
                num_steps_sampled_before_learning_starts=256,
            )
            .rl_module(
                model_config=DefaultModelConfig(
                    fcnet_hiddens=[256, 256],
                    fcnet_activation="relu",
                    fcnet_kernel_initializer=nn.init.xavier_uniform_,
                    head_fcnet_hiddens=[],
                    head_fcnet_activation=None,
                    head_fcnet_kernel_initializer="orthogonal_",
                    head_fcnet_kernel_initializer_kwargs={"gain": 0.01},
                )
            )
            .reporting(metrics_num_episodes_for_smoothing=5)
        )
    raise BenchLearnError(f"--game: no RLlib tuned example for {game!r}; allowed: {', '.join(TARGETS)}")


def pipeline_hp_config(algorithm: Algorithm) -> AlgorithmConfig:
    """The pipeline's algorithm config, with its replay window and learning start as RLlib's replay settings."""
    hp = algorithm.hp
    return (
        algorithm.rllib_config()
        .environment(env=algorithm.spec.game_id)
        .training(
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": hp.replay_window},
            num_steps_sampled_before_learning_starts=hp.learning_starts,
        )
    )


# ----------------------------------------------------------------------------------------------- direct


Judge = Callable[[bytes, int], float]


def judge_for(algorithm: Algorithm, episodes: int) -> Judge:
    """ONNX bytes, evaluation index -> greedy mean return, exactly as the trainer judges a published model."""
    spec = algorithm.spec
    _, act_space = spec.manifest_spaces()
    return lambda onnx, index: evaluate_onnx(
        onnx, spec.simulator, algorithm.output, act_space, episodes, 10_000 + index
    )


def export_learner_module(algo: object, algorithm: Algorithm) -> bytes:
    """The learner's module as the ONNX model a client would load (the trainer's export)."""
    results = algo.learner_group.foreach_learner(
        lambda learner: algorithm.export_onnx(learner.module[DEFAULT_POLICY_ID])
    )
    first = next(iter(results))
    return first.get() if hasattr(first, "get") else first


def _env_steps(result: dict) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    value = result.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or result.get(ENV_RUNNER_RESULTS, {}).get(
        NUM_ENV_STEPS_SAMPLED_LIFETIME, 0
    )
    return int(value)


def run_direct(side: str, config: AlgorithmConfig, algorithm: Algorithm, seed: int, cfg: LearnBenchConfig) -> Run:
    """Train with RLlib alone (local EnvRunner and learner), judging every ``eval_every_s`` training seconds."""
    import ray

    run, judge = Run(side, seed), judge_for(algorithm, cfg.eval_episodes)
    config = config.env_runners(num_env_runners=0).learners(num_learners=0).debugging(seed=seed)
    # Reporting only: shorter train() iterations (RLlib's default: 1000 env steps) so the target is seen sooner.
    config = config.reporting(min_sample_timesteps_per_iteration=REPORT_EVERY_ENV_STEPS)
    # RLlib's Algorithm starts Ray; a small local instance per run, shut down before the next side runs.
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        algo = config.build_algo()
        try:
            _train_and_judge(algo, run, lambda i: judge(export_learner_module(algo, algorithm), i), cfg)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    return run


def _train_and_judge(algo: object, run: Run, judge: Callable[[int], float], cfg: LearnBenchConfig) -> None:
    """``algo.train()`` until the target or ``max_minutes`` of training; the clock stops while judging."""
    trained, next_eval, budget = 0.0, cfg.eval_every_s, cfg.max_minutes * 60
    while trained < budget and not run.reached:
        start = time.monotonic()
        result = algo.train()
        trained += time.monotonic() - start
        if trained < next_eval and trained < budget:
            continue
        next_eval, steps = trained + cfg.eval_every_s, _env_steps(result)
        score = judge(len(run.curve))
        run.curve.append({"seconds": round(trained, 1), "env_steps": steps, "eval_return": score})
        log.info("%s seed %d: %.0f s, %d env steps, greedy eval %.1f", run.side, run.seed, trained, steps, score)
        if score >= TARGETS[cfg.game]:
            run.seconds_to_target, run.env_steps_to_target = round(trained, 1), steps


# ----------------------------------------------------------------------------------------------- pipeline


def pipeline_argv(cfg: LearnBenchConfig, seed: int, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "rlplatform", "up", "--game", cfg.game, "--clients", str(cfg.clients),
        "--target-return", str(TARGETS[cfg.game]), "--max-minutes", str(cfg.max_minutes),
        "--run-dir", str(run_dir), "--seed", str(seed), "--eval-episodes", str(cfg.eval_episodes),
    ]  # fmt: skip


def run_pipeline(seed: int, cfg: LearnBenchConfig) -> Run:
    """``rlplatform up`` as a child process (stopped whatever happens); its summary JSON and evaluations."""
    run, run_dir = Run(PIPELINE, seed), cfg.work_dir / f"pipeline-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "stdout.log").open("w") as out, (run_dir / "stderr.log").open("w") as err:
        proc = processes.spawn(pipeline_argv(cfg, seed, run_dir), stdout=out, stderr=err)
        try:
            proc.wait(timeout=cfg.max_minutes * 60 + 300)
        except subprocess.TimeoutExpired:
            run.error = "rlplatform up overran its --max-minutes by 5 minutes"
        finally:
            processes.stop(proc)
    return read_pipeline(run, run_dir, cfg.game)


def read_pipeline(run: Run, run_dir: Path, game: str) -> Run:
    """Fill ``run`` from the last JSON line ``rlplatform up`` printed and its ``summary.json`` evaluations.

    Each evaluation records its seconds and the env steps the game's clients had sent by then."""
    lines = [ln for ln in (run_dir / "stdout.log").read_text().splitlines() if ln.startswith("{")]
    if not lines:
        run.error = run.error or f"rlplatform up printed no summary (see {run_dir}/stderr.log)"
        return run
    g = json.loads(lines[-1]).get("games", {}).get(game, {})
    run.seconds_to_target, run.env_steps_to_target = g.get("seconds_to_solve"), g.get("env_steps_to_solve")
    summary = run_dir / "summary.json"
    evals = json.loads(summary.read_text()).get("evals", {}).get(game, []) if summary.exists() else []
    run.curve = [
        {"seconds": e["seconds"], "env_steps": e.get("env_steps"), "eval_return": e["eval_return"]} for e in evals
    ]
    return run


# ----------------------------------------------------------------------------------------------- results


def median_or_none(values: list[float | None]) -> float | None:
    """Median counting a run that missed the target (None) as slower than any; None when the median missed."""
    if not values:
        return None
    m = statistics.median([math.inf if v is None else float(v) for v in values])
    return None if math.isinf(m) else m


def summarize(runs: list[Run]) -> dict:
    """Per side the runs and medians; the best direct side per measure; pipeline / best direct ratios."""
    by_side = {side: [r for r in runs if r.side == side] for side in SIDES}
    medians = {
        side: {
            "seconds_to_target": median_or_none([r.seconds_to_target for r in rs]),
            "env_steps_to_target": median_or_none([r.env_steps_to_target for r in rs]),
            "reached": f"{sum(r.reached for r in rs)}/{len(rs)}",
        }
        for side, rs in by_side.items()
    }
    out: dict = {"runs": {side: [r.result() for r in rs] for side, rs in by_side.items()}, "medians": medians}
    best, ratios = {}, {}
    for measure, key in (("seconds", "seconds_to_target"), ("env_steps", "env_steps_to_target")):
        reached = [s for s in DIRECT_SIDES if medians[s][key] is not None]
        best[measure] = min(reached, key=lambda s: medians[s][key]) if reached else None
        pipe = medians[PIPELINE][key]
        ratios[f"ratio_{measure}"] = (
            round(pipe / medians[best[measure]][key], 3) if best[measure] and pipe is not None else None
        )
        ratios[f"ratio_{measure}_at_most"] = ratio_at_most(pipe, [by_side[s] for s in DIRECT_SIDES], measure)
    spread = slowest_over_median([r.seconds_to_target for r in by_side[PIPELINE]])
    return {**out, "best_direct": best, **ratios, "pipeline_slowest_over_median": spread}


def slowest_over_median(seconds: list[float | None]) -> float | None:
    """The slowest run's seconds over the median's; None when a run missed the target (or there is none)."""
    if not seconds or None in seconds:
        return None
    return round(max(seconds) / statistics.median(seconds), 3)


def ratio_at_most(pipe_median: float | None, direct_sides: list[list[Run]], measure: str) -> float | None:
    """An upper bound on pipeline / best direct median that also holds when direct runs missed the target.

    A missed run counts as what it spent without reaching (``Run.at_least``); each side's median of those
    lower bounds is at most its true median, so pipeline / the smallest of them is at least the true ratio.
    Equal to ``ratio_<measure>`` when every direct run reached."""
    bounds = [statistics.median(r.at_least(measure) for r in runs) for runs in direct_sides if runs]
    if pipe_median is None or not bounds or min(bounds) <= 0:
        return None
    return round(pipe_median / min(bounds), 3)


def plot(runs: list[Run], target: float, path: Path) -> None:
    """Two panels: greedy eval return against seconds and against env steps, one line per side per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    colors = dict(zip(SIDES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for run in runs:
        label = f"{run.side} seed {run.seed}"
        axes[0].plot(
            [p["seconds"] for p in run.curve],
            [p["eval_return"] for p in run.curve],
            ".-",
            c=colors[run.side],
            label=label,
        )
        known = [p for p in run.curve if p["env_steps"] is not None]
        axes[1].plot(
            [p["env_steps"] for p in known], [p["eval_return"] for p in known], ".-", c=colors[run.side], label=label
        )
    for ax, xlabel in zip(
        axes, ("seconds (direct: training only)", "env steps (pipeline: sent by its clients)"), strict=True
    ):
        ax.axhline(target, color="grey", linestyle="--", label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("greedy eval return (20 episodes)")
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_learn_bench(cfg: LearnBenchConfig) -> dict:
    """Alternate the three sides per seed; the summary dict (the JSON line) and the PNG in ``cfg.work_dir``."""
    target = check_options(cfg.game, cfg.seeds)
    spec: GameSpec = game_spec(cfg.game)
    algorithm = algorithm_class(spec)(spec)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for seed in range(cfg.seeds):
        for side, config in ((TUNED, tuned_config(cfg.game)), (PIPELINE_HP, pipeline_hp_config(algorithm))):
            runs.append(_guarded(lambda: run_direct(side, config, algorithm, seed, cfg), side, seed))  # noqa: B023
        runs.append(_guarded(lambda: run_pipeline(seed, cfg), PIPELINE, seed))  # noqa: B023
        (cfg.work_dir / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    png = cfg.work_dir / "learning_curves.png"
    plot(runs, target, png)
    head = {"game": cfg.game, "algorithm": algorithm.name, "target_return": target, "seeds": cfg.seeds}
    return {**head, "max_minutes": cfg.max_minutes, **summarize(runs), "png": str(png), "work_dir": str(cfg.work_dir)}


def _guarded(fn: Callable[[], Run], side: str, seed: int) -> Run:
    """A side that fails counts as not reaching, with its error; the other sides still run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, never hidden
        log.exception("%s seed %d failed", side, seed)
        return Run(side, seed, error=f"{type(exc).__name__}: {exc}")
