"""gymnasium ids as games: a registered environment with a flat Box observation space is a game with no
declaration needed, and its own simulator."""

from __future__ import annotations

import functools

import gymnasium as gym

from rlplatform.games.spec import GameSpec, GameSpecError, UnknownGameError


def game_spec(game_id: str) -> GameSpec:
    """The spec of a registered gymnasium game with a flat Box observation space.

    Raises ``UnknownGameError`` for every game that cannot be resolved here, including registered ones
    whose environment cannot be built on this machine (Box2D, MuJoCo, ... not installed).
    """
    if game_id not in gym.registry:  # before the cache: ids a client invents must not fill it
        raise UnknownGameError(f"game_id: unknown game {game_id!r}")
    spec = _resolve(game_id)
    if isinstance(spec, str):
        raise UnknownGameError(f"game_id: {spec}")
    return spec


@functools.cache
def _resolve(game_id: str) -> GameSpec | str:
    """The spec of a registered id, or why there is none. Failures are cached too: a client repeating an
    unbuildable game id must not make ingest import and fail an environment once per record."""
    try:
        env = gym.make(game_id)
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
    except Exception as exc:  # noqa: BLE001 - gymnasium and env packages raise anything (DependencyNotInstalled, ...)
        return f"{game_id!r} cannot be built here: {type(exc).__name__}: {exc}"[:500]
    try:
        return GameSpec.from_gym_spaces(game_id, obs_space, act_space)
    except GameSpecError as exc:
        return exc.reason


def reward_threshold(game_id: str) -> float | None:
    """gymnasium's own "solved" return for a registered id (CartPole-v1: 475); None where it sets none."""
    spec = gym.registry.get(game_id)
    return None if spec is None or spec.reward_threshold is None else float(spec.reward_threshold)
