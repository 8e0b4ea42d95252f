"""``rlplatform bench updates``: learner updates/s fed from the experience store vs from RLlib's in-memory buffer.

Both sides drive one RLlib learner (the game's default algorithm, the pipeline's hyperparameters) with the
same transitions, in this process, on an otherwise idle machine:

- store: the trainer's own step (``train.trainer``): its replay mirror of the store (SQLite, or Cassandra with
  ``--store``), refreshed from it as in training, draws ``batch_size`` steps from the newest ``replay_window``
  with their followers -> ``n_step``-step transitions -> RLlib's train batch -> ``LearnerGroup.update``, the
  next sample read while an update runs;
- memory: RLlib's own DQN/SAC training step: ``EpisodeReplayBuffer.sample(num_items=batch_size, n_step=n_step)``
  of episodes -> the learner connector -> ``LearnerGroup.update``.

The sides alternate in rounds so that a slow patch of the machine falls on both; each side's rate is the
median over its rounds. The transitions come from random play of the game's simulator.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

from rlplatform.bench.harness import fresh_store
from rlplatform.games import GameSpec, UnknownGameError, game_spec
from rlplatform.store import TransitionBatch
from rlplatform.train.algorithms import Algorithm, AlgorithmConfigError, algorithm_class
from rlplatform.train.mirror import ReplayMirror
from rlplatform.train.trainer import PrefetchingSampler, learner_update, sample_transitions


class BenchUpdatesError(ValueError):
    """A refused option; the message starts with the option's name."""


@dataclass(frozen=True)
class UpdatesBenchConfig:
    game: str
    work_dir: Path
    updates: int = 300  # per side per round
    rounds: int = 3
    steps: int = 20_000  # transitions of random play on both sides
    seed: int = 0
    store: str = "sqlite"  # the store side's adapter (harness.fresh_store)
    learners: int = 0  # learner actors on a local Ray (Algorithm.build_learner_group); 0: in this process
    algorithm: str | None = None  # None: the game's default
    hyperparameters: dict = field(default_factory=dict)  # over the algorithm's defaults


def check_options(game: str, updates: int, rounds: int, steps: int) -> GameSpec:
    """The game's spec (it needs a simulator to play); ``BenchUpdatesError`` naming the option otherwise."""
    for option, value, least in (("--updates", updates, 10), ("--rounds", rounds, 1), ("--steps", steps, 1_000)):
        if value < least:
            raise BenchUpdatesError(f"{option}: must be at least {least}, got {value}")
    try:
        spec = game_spec(game)
    except UnknownGameError as exc:
        raise BenchUpdatesError(f"--game: {exc}") from None
    if spec.simulator is None:
        raise BenchUpdatesError(f"--game: {game!r} has no simulator to play transitions with")
    return spec


def check_config(spec: GameSpec, algorithm: str | None, hyperparameters: dict) -> None:
    """``BenchUpdatesError`` naming ``--config`` when its algorithm or hyperparameters do not fit the game."""
    try:
        algorithm_class(spec, algorithm)(spec, hyperparameters)
    except AlgorithmConfigError as exc:
        raise BenchUpdatesError(f"--config: {exc}") from None


def random_play(spec: GameSpec, steps: int, seed: int) -> tuple[TransitionBatch, list[SingleAgentEpisode]]:
    """``steps`` transitions of uniformly random play, as store rows and as RLlib episodes (the same ones)."""
    env = gym.make(spec.simulator)
    env.action_space.seed(seed)
    rows: dict[str, list] = {k: [] for k in ("episode_id", "t", "obs", "action", "reward", "next_obs", "term", "trunc")}
    episodes: list[SingleAgentEpisode] = []
    try:
        while len(rows["t"]) < steps:
            episodes.append(_play_episode(env, seed + len(episodes), steps - len(rows["t"]), rows))
    finally:
        env.close()
    n = len(rows["t"])
    batch = TransitionBatch(
        episode_id=np.array(rows["episode_id"], dtype=object),
        t=np.array(rows["t"], dtype=np.int64),
        obs=np.array(rows["obs"], dtype=np.float32),
        action=np.array(rows["action"], dtype=np.int64 if spec.discrete else np.float32),
        reward=np.array(rows["reward"], dtype=np.float32),
        next_obs=np.array(rows["next_obs"], dtype=np.float32),
        terminated=np.array(rows["term"], dtype=bool),
        truncated=np.array(rows["trunc"], dtype=bool),
        model_version=np.zeros(n, dtype=np.int64),
    )
    return batch, episodes


def _play_episode(env: gym.Env, seed: int, max_steps: int, rows: dict[str, list]) -> SingleAgentEpisode:
    """One episode (cut at ``max_steps``, as truncated) appended to ``rows``; the same steps as an episode."""
    episode_id = str(uuid.uuid4())
    obs, _ = env.reset(seed=seed)
    episode = SingleAgentEpisode(observation_space=env.observation_space, action_space=env.action_space)
    episode.add_env_reset(observation=obs)
    for t in range(max_steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or t == max_steps - 1
        episode.add_env_step(next_obs, action, float(reward), terminated=terminated, truncated=truncated)
        for key, value in zip(rows, (episode_id, t, obs, action, reward, next_obs, terminated, truncated), strict=True):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            break
    return episode.to_numpy()


def updates_per_second(step: Callable[[], None], updates: int) -> float:
    """Rate of ``updates`` calls of ``step``, after a few unmeasured ones (first-call costs)."""
    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(updates):
        step()
    return updates / (time.perf_counter() - started)


def run_updates_bench(cfg: UpdatesBenchConfig) -> dict:
    """Both sides' updates/s (median over rounds, and every round) and ``ratio`` = store / memory."""
    spec = check_options(cfg.game, cfg.updates, cfg.rounds, cfg.steps)
    algorithm: Algorithm = algorithm_class(spec, cfg.algorithm)(spec, cfg.hyperparameters)
    hp = algorithm.hp
    torch.set_num_threads(1)  # as the trainer runs
    transitions, episodes = random_play(spec, cfg.steps, cfg.seed)
    buffer = EpisodeReplayBuffer(capacity=hp.replay_window)
    buffer.add(episodes)
    if cfg.learners:
        ray.init(num_cpus=max(cfg.learners, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        return _run(cfg, algorithm, transitions, buffer)
    finally:
        if cfg.learners:
            ray.shutdown()


def _run(
    cfg: UpdatesBenchConfig,
    algorithm: Algorithm,
    transitions: TransitionBatch,
    buffer: EpisodeReplayBuffer,
) -> dict:
    hp = algorithm.hp
    learner_group = algorithm.build_learner_group(cfg.seed, cfg.learners)
    rng = np.random.default_rng(cfg.seed)
    updates = 0

    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with fresh_store(cfg.store, cfg.work_dir) as (_, store):
        store.write(cfg.game, transitions)
        mirror = ReplayMirror(store, cfg.game, hp.replay_window)
        sampler = PrefetchingSampler(lambda: sample_transitions(mirror, hp, rng))

        def from_store() -> None:  # as the trainer does: the next sample is read during this update
            nonlocal updates
            updates += 1
            batch, steps = sampler.take()
            learner_update(learner_group, algorithm, batch, steps, updates)

        def from_memory() -> None:
            nonlocal updates
            updates += 1
            sampled = buffer.sample(num_items=hp.batch_size, n_step=hp.n_step, gamma=hp.gamma, sample_episodes=True)
            learner_group.update(episodes=sampled, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: updates})

        rounds: dict[str, list[float]] = {"store": [], "memory": []}
        with sampler:
            for _ in range(cfg.rounds):
                rounds["store"].append(updates_per_second(from_store, cfg.updates))
                rounds["memory"].append(updates_per_second(from_memory, cfg.updates))
        # The trainer's sampler alone: the most updates/s one trainer process can feed, however many learners.
        samples_per_s = updates_per_second(lambda: sample_transitions(mirror, hp, rng), cfg.updates)
    learner_group.shutdown()
    rates = {side: statistics.median(values) for side, values in rounds.items()}
    return {
        "game": cfg.game,
        "store": cfg.store,
        "algorithm": algorithm.name,
        "batch_size": hp.batch_size,
        "transitions": len(transitions),
        "updates_per_s_store": round(rates["store"], 1),
        "updates_per_s_memory": round(rates["memory"], 1),
        "ratio": round(rates["store"] / rates["memory"], 3),
        "learners": cfg.learners,
        "samples_per_s": round(samples_per_s, 1),
        "rounds": {side: [round(v, 1) for v in values] for side, values in rounds.items()},
    }
