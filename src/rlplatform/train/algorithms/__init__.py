"""Algorithms as plug-ins: a name -> class registry and the default per kind of action space.

A third algorithm is one module with an ``Algorithm`` subclass and one line in ``ALGORITHMS``.
"""

from __future__ import annotations

from rlplatform.games import GameSpec
from rlplatform.train.algorithms.base import BOX, DISCRETE, Algorithm, AlgorithmConfigError, Hyperparameters
from rlplatform.train.algorithms.dqn import DQN
from rlplatform.train.algorithms.sac import SAC

__all__ = [
    "ALGORITHMS",
    "DEFAULT_BY_ACTION_SPACE",
    "Algorithm",
    "AlgorithmConfigError",
    "Hyperparameters",
    "algorithm_class",
    "known_algorithm",
]

ALGORITHMS: dict[str, type[Algorithm]] = {"DQN": DQN, "SAC": SAC}
DEFAULT_BY_ACTION_SPACE: dict[str, str] = {DISCRETE: "DQN", BOX: "SAC"}


def algorithm_class(spec: GameSpec, name: str | None = None) -> type[Algorithm]:
    """The algorithm named ``name`` (the game's default per action space when None), checked to fit the game.

    Raises ``AlgorithmConfigError`` naming the field and the allowed values.
    """
    cls = known_algorithm(name or DEFAULT_BY_ACTION_SPACE[DISCRETE if spec.discrete else BOX])
    if reason := cls.unfit_reason(spec):
        fitting = [n for n, c in ALGORITHMS.items() if c.unfit_reason(spec) is None]
        raise AlgorithmConfigError(f"{reason}; allowed for this game: {', '.join(fitting) or 'none'}")
    return cls


def known_algorithm(name: str) -> type[Algorithm]:
    """The class registered as ``name``; ``AlgorithmConfigError`` naming the allowed names otherwise."""
    cls = ALGORITHMS.get(name)
    if cls is None:
        raise AlgorithmConfigError(f"algorithm: unknown {name!r}; allowed: {', '.join(ALGORITHMS)}")
    return cls
