"""Game specs: what a game declares about itself, kept in the bucket so every stage reads the same catalog.

A game is any program that produces observations (a flat float32 vector of length ``d``) and takes actions
(discrete ``0..n-1`` or a continuous box ``low``/``high`` per dimension); it does not have to be a gymnasium
environment. Its spec document lives at ``games/{game_id}/spec.json``::

    {"v": 1, "game_id": "Racer-v1",
     "observation_space": {"type": "box", "shape": [8], "dtype": "float32"},
     "action_space": {"type": "discrete", "n": 3},        # or {"type": "box", "low": [-1, 0], "high": [1, 1]}
     "simulator": null}                                     # optional gymnasium id, for local evaluation only

The spaces use the model manifest's JSON form. A spec never changes once declared: declaring another spec
under the same id is refused with the differences named (a new spec is a new ``game_id``, e.g. ``-v2``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .models import is_missing

# The game the tools play when none is named (and the platform's own test game).
DEFAULT_GAME = "CartPole-v1"
GAMES_PREFIX = "games"
SPEC_VERSION = 1
MAX_OBS_DIM = 65_536
MAX_DISCRETE_ACTIONS = 65_536
MAX_ACTION_DIM = 256


class GameSpecError(ValueError):
    """A spec document that breaks the schema; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"spec.{field}: {reason}")
        self.field = field
        self.reason = reason


class GameSpecConflict(ValueError):
    """A game id declared already with a different spec; ``differences`` lists what differs."""

    def __init__(self, game_id: str, differences: list[str]) -> None:
        super().__init__(
            f"game {game_id!r} is declared already with another spec ({'; '.join(differences)}); "
            "a declared spec never changes: declare the new one under a new game_id (e.g. a new -vN suffix)"
        )
        self.game_id = game_id
        self.differences = differences


@dataclass(frozen=True)
class GameSpec:
    """Observation length and action space of one game.

    ``n_actions`` for discrete actions; ``action_low``/``action_high`` (one bound per dimension, +-inf for an
    unbounded one) for a continuous box. ``simulator``: a gymnasium id that simulates the game, if any.
    """

    game_id: str
    obs_dim: int
    n_actions: int | None  # discrete action spaces
    action_low: tuple[float, ...] | None = None  # continuous (Box) action spaces
    action_high: tuple[float, ...] | None = None
    simulator: str | None = None

    @property
    def discrete(self) -> bool:
        return self.n_actions is not None

    def manifest_spaces(self) -> tuple[dict, dict]:
        """``(observation_space, action_space)`` in JSON form (unbounded box bounds are ``null``)."""
        obs = {"type": "box", "shape": [self.obs_dim], "dtype": "float32"}
        if self.discrete:
            return obs, {"type": "discrete", "n": self.n_actions}
        return obs, {
            "type": "box",
            "shape": [len(self.action_low)],
            "low": [_json_bound(x) for x in self.action_low],
            "high": [_json_bound(x) for x in self.action_high],
        }

    def spaces(self) -> tuple[Any, Any]:
        """gymnasium spaces ``(Box[obs_dim] float32, Discrete(n) | Box[k])``; needs gymnasium installed."""
        import gymnasium as gym
        import numpy as np

        obs = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        if self.discrete:
            return obs, gym.spaces.Discrete(self.n_actions)
        return obs, gym.spaces.Box(np.array(self.action_low, np.float32), np.array(self.action_high, np.float32))

    def to_document(self) -> dict:
        obs, action = self.manifest_spaces()
        return {
            "v": SPEC_VERSION,
            "game_id": self.game_id,
            "observation_space": obs,
            "action_space": action,
            "simulator": self.simulator,
        }

    @classmethod
    def from_document(cls, doc: Any) -> GameSpec:
        """Validate a spec document; ``GameSpecError`` names the first bad field."""
        if not isinstance(doc, dict):
            raise GameSpecError("(document)", "must be a JSON object")
        if doc.get("v", SPEC_VERSION) != SPEC_VERSION:
            raise GameSpecError("v", f"unknown spec version {doc.get('v')!r}; supported: {SPEC_VERSION}")
        game_id = doc.get("game_id")
        if not isinstance(game_id, str) or not 1 <= len(game_id) <= 64 or "/" in game_id:
            raise GameSpecError("game_id", f"must be a string of 1..64 characters without '/', got {game_id!r}")
        simulator = doc.get("simulator")
        if simulator is not None and (not isinstance(simulator, str) or not simulator):
            raise GameSpecError("simulator", f"must be a gymnasium id or null, got {simulator!r}")
        obs_dim = _obs_dim(doc.get("observation_space"))
        action = doc.get("action_space")
        if not isinstance(action, dict) or action.get("type") not in ("discrete", "box"):
            raise GameSpecError("action_space.type", "must be 'discrete' or 'box'")
        if action["type"] == "discrete":
            n = action.get("n")
            if not _is_int(n) or not 1 <= n <= MAX_DISCRETE_ACTIONS:
                raise GameSpecError("action_space.n", f"must be an int in 1..{MAX_DISCRETE_ACTIONS}, got {n!r}")
            return cls(game_id, obs_dim, n, simulator=simulator)
        low, high = _bounds(action, "low"), _bounds(action, "high")
        if len(low) != len(high) or not 1 <= len(low) <= MAX_ACTION_DIM:
            raise GameSpecError(
                "action_space", f"low and high need the same length, 1..{MAX_ACTION_DIM}: {len(low)} and {len(high)}"
            )
        if "shape" in action and action["shape"] != [len(low)]:
            raise GameSpecError(
                "action_space.shape", f"must be [{len(low)}] (the bounds' length), got {action['shape']}"
            )
        if bad := [j for j, (lo, hi) in enumerate(zip(low, high, strict=True)) if not lo <= hi]:
            raise GameSpecError(f"action_space.low[{bad[0]}]", f"{low[bad[0]]} exceeds high {high[bad[0]]}")
        return cls(game_id, obs_dim, None, low, high, simulator)

    @classmethod
    def from_gym_spaces(cls, game_id: str, observation_space: Any, action_space: Any) -> GameSpec:
        """The spec of a game played through gymnasium spaces: a flat ``Box`` observation, a ``Discrete`` or a
        1-D ``Box`` action (the game is its own simulator); ``GameSpecError`` for any other."""
        import gymnasium as gym

        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise GameSpecError("observation_space", f"{game_id!r} has no flat Box observation space")
        obs_dim = int(observation_space.shape[0])
        if isinstance(action_space, gym.spaces.Discrete):
            return cls(game_id, obs_dim, int(action_space.n), simulator=game_id)
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            low, high = tuple(action_space.low.tolist()), tuple(action_space.high.tolist())
            return cls(game_id, obs_dim, None, low, high, simulator=game_id)
        raise GameSpecError("action_space", f"{game_id!r} has an unsupported action space {action_space}")

    def differences(self, other: GameSpec) -> list[str]:
        """What differs between two specs, one readable line per field (empty when equal)."""
        mine, theirs = self.to_document(), other.to_document()
        return [f"{key}: {mine[key]} != {theirs[key]}" for key in mine if mine[key] != theirs[key]]


def spec_key(game_id: str) -> str:
    return f"{GAMES_PREFIX}/{game_id}/spec.json"


def read_declared(s3: Any, bucket: str, game_id: str) -> GameSpec | None:
    """The declared spec of ``game_id``, or None when it is not declared."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=spec_key(game_id))["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return GameSpec.from_document(json.loads(body))


def declare_game(bucket: str, spec: GameSpec, *, s3: Any = None) -> bool:
    """Declare ``spec`` in the bucket's catalog: the operator's action (a shipped game reads its spec and holds
    no credentials that write the catalog); idempotent, so test clients of the embedded profile may call it at
    every start.

    True if it was new, False if declared already with the same spec. Raises ``GameSpecConflict`` naming the
    differences when the id is declared with another spec.
    """
    if s3 is None:
        import boto3  # Lazy: callers that inject a client need no AWS config.

        s3 = boto3.client("s3")  # Endpoint from AWS_ENDPOINT_URL[_S3] if set.
    existing = read_declared(s3, bucket, spec.game_id)
    if existing is not None:
        if differences := existing.differences(spec):
            raise GameSpecConflict(spec.game_id, differences)
        return False
    body = json.dumps(spec.to_document(), indent=2).encode()
    s3.put_object(Bucket=bucket, Key=spec_key(spec.game_id), Body=body, ContentType="application/json")
    return True


def _obs_dim(space: Any) -> int:
    if not isinstance(space, dict) or space.get("type", "box") != "box":
        raise GameSpecError("observation_space", 'must be {"type": "box", "shape": [d], "dtype": "float32"}')
    shape = space.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or not _is_int(shape[0]) or not 1 <= shape[0] <= MAX_OBS_DIM:
        raise GameSpecError("observation_space.shape", f"must be [d] with d in 1..{MAX_OBS_DIM}, got {shape!r}")
    if space.get("dtype", "float32") != "float32":
        raise GameSpecError("observation_space.dtype", f"must be float32, got {space.get('dtype')!r}")
    return shape[0]


def _bounds(action: dict, name: str) -> tuple[float, ...]:
    values = action.get(name)
    if not isinstance(values, list):
        raise GameSpecError(f"action_space.{name}", "must be a list of numbers (null for unbounded)")
    unbounded = -math.inf if name == "low" else math.inf
    out = []
    for j, x in enumerate(values):
        if x is None:
            out.append(unbounded)
        elif isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise GameSpecError(f"action_space.{name}[{j}]", f"must be a finite number or null, got {x!r}")
        else:
            out.append(float(x))
    return tuple(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_bound(x: float) -> float | None:
    return None if math.isinf(x) else x
