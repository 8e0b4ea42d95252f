"""Game specs (observation and action spaces) and validation of chunks against them."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlplatform.store.base import TransitionBatch
from rlplatform_client.contract import Chunk, ContractError


@dataclass(frozen=True)
class GameSpec:
    game_id: str
    obs_dim: int
    n_actions: int | None  # discrete action spaces
    action_low: tuple[float, ...] | None = None  # continuous (Box) action spaces
    action_high: tuple[float, ...] | None = None

    @property
    def discrete(self) -> bool:
        return self.n_actions is not None

    def spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Space]:
        obs = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        if self.discrete:
            return obs, gym.spaces.Discrete(self.n_actions)
        return obs, gym.spaces.Box(np.array(self.action_low, np.float32), np.array(self.action_high, np.float32))

    def manifest_spaces(self) -> tuple[dict, dict]:
        obs = {"type": "box", "shape": [self.obs_dim], "dtype": "float32"}
        if self.discrete:
            return obs, {"type": "discrete", "n": self.n_actions}
        return obs, {
            "type": "box",
            "shape": [len(self.action_low)],
            "low": list(self.action_low),
            "high": list(self.action_high),
        }


class UnknownGameError(LookupError):
    pass


def game_spec(game_id: str) -> GameSpec:
    """The spec of a registered gymnasium game with a flat Box observation space.

    Raises ``UnknownGameError`` for every game that cannot be resolved here, including registered ones
    whose environment cannot be built on this machine (Box2D, MuJoCo, ... not installed).
    """
    spec = _resolve(game_id)
    if isinstance(spec, str):
        raise UnknownGameError(f"game_id: {spec}")
    return spec


@functools.cache
def _resolve(game_id: str) -> GameSpec | str:
    """The spec, or why there is none. Failures are cached too: a client repeating an unbuildable game id
    must not make ingest import and fail an environment once per record."""
    if game_id not in gym.registry:
        return f"unknown game {game_id!r}"
    try:
        env = gym.make(game_id)
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
    except Exception as exc:  # noqa: BLE001 - gymnasium and env packages raise anything (DependencyNotInstalled, ...)
        return f"{game_id!r} cannot be built here: {type(exc).__name__}: {exc}"[:500]
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        return f"{game_id!r} has no flat Box observation space"
    if isinstance(act_space, gym.spaces.Discrete):
        return GameSpec(game_id, obs_space.shape[0], int(act_space.n))
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return GameSpec(
            game_id, obs_space.shape[0], None, tuple(act_space.low.tolist()), tuple(act_space.high.tolist())
        )
    return f"{game_id!r} has an unsupported action space {act_space}"


def validate_chunk(chunk: Chunk, spec: GameSpec) -> None:
    """Raise ``ContractError`` naming the field when a chunk does not fit its game's spec."""
    for i, step in enumerate(chunk.steps):
        for name in ("obs", "next_obs"):
            values = getattr(step, name)
            if len(values) != spec.obs_dim:
                raise ContractError(
                    f"steps[{i}].{name}", f"length must be {spec.obs_dim}, got {len(values)}", "bad_length"
                )
        _validate_action(step.action, spec, f"steps[{i}].action")


def _validate_action(action: int | list[float], spec: GameSpec, field: str) -> None:
    if spec.discrete:
        if not isinstance(action, int) or not 0 <= action < spec.n_actions:
            raise ContractError(
                field, f"must be an int in [0, {spec.n_actions}), got {action!r}", "action_out_of_range"
            )
        return
    if not isinstance(action, list) or len(action) != len(spec.action_low):
        raise ContractError(
            field, f"must be a list of {len(spec.action_low)} numbers, got {action!r}", "action_out_of_range"
        )
    for j, (x, lo, hi) in enumerate(zip(action, spec.action_low, spec.action_high, strict=True)):
        if not (lo <= x <= hi or math.isinf(lo) and math.isinf(hi)):
            raise ContractError(f"{field}[{j}]", f"must be in [{lo}, {hi}], got {x}", "action_out_of_range")


def chunks_to_batch(chunks: list[Chunk], spec: GameSpec) -> TransitionBatch:
    """Flatten validated chunks of one game into columnar arrays."""
    steps = [(c, s) for c in chunks for s in c.steps]
    action_dtype = np.int64 if spec.discrete else np.float32
    return TransitionBatch(
        episode_id=np.array([c.episode_id for c, _ in steps], dtype=object),
        t=np.array([s.t for _, s in steps], dtype=np.int64),
        obs=np.array([s.obs for _, s in steps], dtype=np.float32).reshape(len(steps), spec.obs_dim),
        action=np.array([s.action for _, s in steps], dtype=action_dtype),
        reward=np.array([s.reward for _, s in steps], dtype=np.float32),
        next_obs=np.array([s.next_obs for _, s in steps], dtype=np.float32).reshape(len(steps), spec.obs_dim),
        terminated=np.array([s.terminated for _, s in steps], dtype=bool),
        truncated=np.array([s.truncated for _, s in steps], dtype=bool),
        model_version=np.array([c.model_version for c, _ in steps], dtype=np.int64),
    )
