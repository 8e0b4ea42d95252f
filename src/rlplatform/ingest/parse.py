"""Record bytes -> validated columnar transitions, fast.

Two paths with one verdict. The fast path (orjson, no per-step objects, vectorised checks with
numpy) accepts only records it can prove valid; anything else, or anything it is unsure about, goes
to the reference path (``decode_chunk`` + ``validate_chunk``), which either accepts the record or
raises the precise ``ContractError`` naming the field. So the fast path changes speed, never verdicts.

``parse`` is what ingest calls: whatever the bytes hold, it returns rows or a ``Rejected`` with a reason,
never an exception, so one record cannot fail the batch it arrived in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from rlplatform.games import GameSpec, UnknownGameError, game_spec
from rlplatform.ingest.dead_letters import PARSER_ERROR
from rlplatform.store import TransitionBatch
from rlplatform_client.contract import (
    GZIP_MAGIC,
    MAX_FLOAT32,
    MAX_INDEX,
    MAX_RECORD_BYTES,
    MAX_STEPS_PER_CHUNK,
    SUPPORTED_VERSIONS,
    Chunk,
    ContractError,
    canonical_episode_id,
    decode_chunk,
    gunzip_bounded,
)

log = logging.getLogger(__name__)
Resolver = Callable[[str], GameSpec]
_NUMBER_TYPES = frozenset({float, int})


@dataclass(frozen=True)
class Rejected:
    """Why a record was not stored: a dead-letter kind, the field it names, a readable message."""

    kind: str
    field: str
    error: str


def parse(data: bytes, resolve: Resolver = game_spec) -> tuple[str, TransitionBatch] | Rejected:
    """``(game_id, transitions)`` of a valid record, else why not. Never raises for any input.

    ``resolve`` maps a game id to its spec or raises ``UnknownGameError`` (``GameCatalog.resolve`` in ingest).
    """
    try:
        return parse_record(data, resolve)
    except ContractError as exc:
        return Rejected(exc.kind, exc.field, str(exc))
    except UnknownGameError as exc:
        return Rejected("unknown_game", "game_id", str(exc))
    except Exception as exc:  # noqa: BLE001 - the safety net that keeps one record from stopping ingest
        log.exception("parser failed on a record (%d bytes); dead-lettered as %s", len(data), PARSER_ERROR)
        return Rejected(PARSER_ERROR, "record", f"record: the parser failed: {type(exc).__name__}: {exc}"[:1000])


def parse_record(data: bytes, resolve: Resolver = game_spec) -> tuple[str, TransitionBatch]:
    """``(game_id, transitions)`` of one valid record; raises ``ContractError``/``UnknownGameError``."""
    fast = _fast_parse(data, resolve)
    if fast is not None:
        return fast
    chunk = decode_chunk(data)
    spec = resolve(chunk.game_id)
    validate_chunk(chunk, spec)
    return chunk.game_id, chunks_to_batch([chunk], spec)


def _fast_parse(data: bytes, resolve: Resolver = game_spec) -> tuple[str, TransitionBatch] | None:
    """The record's transitions if it is certainly valid, else None (the reference path decides)."""
    if len(data) > MAX_RECORD_BYTES:
        return None
    try:
        if data[:2] == GZIP_MAGIC:
            data = gunzip_bounded(data)
        doc = orjson.loads(data)  # rejects NaN/Infinity tokens, which the reference path reports
    except (ContractError, orjson.JSONDecodeError):
        return None
    try:
        header = _header(doc)
        if header is None:
            return None
        game_id, episode_id, model_version, steps = header
        spec = resolve(game_id)
        batch = _columns(steps, episode_id, model_version, spec)
        return None if batch is None else (game_id, batch)
    except (KeyError, TypeError, ValueError, LookupError, OverflowError):  # ContractError is a ValueError
        return None


def _header(doc: object) -> tuple[str, str, int, list] | None:
    if type(doc) is not dict or type(doc.get("v")) is not int or doc["v"] not in SUPPORTED_VERSIONS:
        return None
    game_id, client_id, episode_id = doc["game_id"], doc["client_id"], doc["episode_id"]
    model_version, steps = doc["model_version"], doc["steps"]
    if not (type(game_id) is str and 1 <= len(game_id) <= 64 and type(client_id) is str and 1 <= len(client_id) <= 128):
        return None
    if not (game_id.isprintable() and client_id.isprintable()):
        return None
    if type(episode_id) is not str or not 1 <= len(episode_id) <= 64:
        return None
    episode_id = canonical_episode_id(episode_id)  # ContractError -> reference path
    if type(model_version) is not int or not 0 <= model_version <= MAX_INDEX:
        return None
    if type(steps) is not list or not 1 <= len(steps) <= MAX_STEPS_PER_CHUNK:
        return None
    return game_id, episode_id, model_version, steps


def _columns(steps: list, episode_id: str, model_version: int, spec: GameSpec) -> TransitionBatch | None:
    """Columns of the steps, or None; a step that is not an object raises TypeError on indexing."""
    n = len(steps)
    t = [s["t"] for s in steps]
    obs = [s["obs"] for s in steps]
    next_obs = [s["next_obs"] for s in steps]
    action = [s["action"] for s in steps]
    reward = [s["reward"] for s in steps]
    terminated = [s["terminated"] for s in steps]
    truncated = [s["truncated"] for s in steps]
    # Exact types, checked in C loops: bool is an int subclass in Python but a distinct JSON type.
    if set(map(type, t)) != {int} or set(map(type, terminated)) != {bool} or set(map(type, truncated)) != {bool}:
        return None
    if any(terminated[:-1]) or any(truncated[:-1]):  # a step after the episode's end
        return None
    if not set(map(type, reward)) <= _NUMBER_TYPES or not (np.abs(np.array(reward)) <= MAX_FLOAT32).all():
        return None
    if set(map(type, obs)) != {list} or set(map(type, next_obs)) != {list}:
        return None
    if set(map(len, obs)) != {spec.obs_dim} or set(map(len, next_obs)) != {spec.obs_dim}:
        return None
    flat = [x for row in obs for x in row] + [x for row in next_obs for x in row]
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return None
    values = np.array(flat, dtype=np.float64)
    if not (np.abs(values) <= MAX_FLOAT32).all():  # False for NaN and Inf too
        return None
    t_arr = np.array(t, dtype=np.int64)
    if t_arr[0] < 0 or t_arr[-1] > MAX_INDEX or (n > 1 and not (np.diff(t_arr) > 0).all()):
        return None
    actions = _actions(action, spec)
    if actions is None:
        return None
    half = n * spec.obs_dim
    return TransitionBatch(
        episode_id=np.full(n, episode_id, dtype=object),
        t=t_arr,
        obs=values[:half].astype(np.float32).reshape(n, spec.obs_dim),
        action=actions,
        reward=np.array(reward, dtype=np.float32),
        next_obs=values[half:].astype(np.float32).reshape(n, spec.obs_dim),
        terminated=np.array(terminated, dtype=bool),
        truncated=np.array(truncated, dtype=bool),
        model_version=np.full(n, model_version, dtype=np.int64),
    )


def _actions(action: list, spec: GameSpec) -> np.ndarray | None:
    if spec.discrete:
        if set(map(type, action)) != {int}:
            return None
        arr = np.array(action, dtype=np.int64)
        return arr if ((arr >= 0) & (arr < spec.n_actions)).all() else None
    if set(map(type, action)) != {list} or set(map(len, action)) != {len(spec.action_low)}:
        return None
    flat = [x for row in action for x in row]
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return None
    arr = np.array(flat, dtype=np.float64).reshape(len(action), -1)
    if not (np.abs(arr) <= MAX_FLOAT32).all():
        return None
    low, high = np.array(spec.action_low), np.array(spec.action_high)
    return arr.astype(np.float32) if ((arr >= low) & (arr <= high)).all() else None


def validate_chunk(chunk: Chunk, spec: GameSpec) -> None:
    """Raise ``ContractError`` naming the field when a chunk does not fit its game's spec (reference path)."""
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
