"""The wire contract: one Kinesis record carries one chunk of consecutive steps of one episode.

A record's data is a UTF-8 JSON object (optionally gzip-compressed; detected from the gzip magic
bytes ``1f 8b``)::

    {
      "v": 1,                                  # schema version (int)
      "game_id": "CartPole-v1",                # str, 1..64 chars
      "client_id": "client-0",                 # str, 1..128 chars
      "episode_id": "3f2b...-uuid",            # str, a UUID
      "model_version": 3,                      # int >= 0; 0 = no model yet (random play)
      "steps": [                               # 1..MAX_STEPS_PER_CHUNK steps, increasing t
        {"t": 0, "obs": [..], "action": 1, "reward": 1.0,
         "next_obs": [..], "terminated": false, "truncated": false}
      ]
    }

``action`` is an int for discrete action spaces and a list of floats for continuous ones.
``terminated`` and ``truncated`` follow gymnasium: a truncated step is *not* terminal, but both end the
episode, so no step may follow either in the same chunk. The idempotency key of a step is
``(game_id, episode_id, t)``, with ``episode_id`` in its canonical form (``canonical_episode_id``).
Only UTF-8 is JSON here; unknown fields are ignored; of duplicate keys the last counts.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = 1
# Where clients send experience and find models unless told otherwise (the platform's RLP_STREAM_NAME and
# RLP_BUCKET default to the same names).
DEFAULT_STREAM_NAME = "rlp-experience"
DEFAULT_BUCKET = "rlp-models"
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})
MAX_STEPS_PER_CHUNK = 1024
# Step indices and model versions are 32-bit signed on the wire (stores keep them as int).
MAX_INDEX = 2**31 - 1
# Stores keep observations, actions and rewards as float32: a larger magnitude would be stored as Inf.
MAX_FLOAT32 = 3.4028234663852886e38
NOT_FINITE = f"must be finite and within float32 range (|x| <= {MAX_FLOAT32:.4g}; no NaN or Inf)"
MAX_RECORD_BYTES = 1024 * 1024  # Kinesis' limit for one record's data blob.
GZIP_MAGIC = b"\x1f\x8b"
# Upper bound on a gzip record's decompressed size: protects consumers from decompression bombs
# (1 MiB of gzip can expand to ~1 GiB) and bounds the memory a record costs them. Producers must not
# emit chunks whose JSON exceeds it.
MAX_DECOMPRESSED_BYTES = 8 * 1024 * 1024
# JSON integers outside this range are read as floats, as orjson (the consumers' fast path) reads them,
# so a number with thousands of digits costs nothing and gets the same verdict on both paths.
_INT_RANGE = (-(2**63), 2**64 - 1)


# Why a record breaks the contract: each reason, a stable category for counting dead letters, with its meaning
# (the docs' dead-letter reasons page is generated from this map and the platform's own, in ingest).
REJECT_KINDS: dict[str, str] = {
    "too_large": "the record is over 1 MiB, decompresses to more than 8 MiB, or holds more than 1024 steps",
    "not_json": "not UTF-8 JSON (UTF-16/32 and a byte-order mark are refused too)",
    "not_decompressible": "starts with the gzip magic bytes but is not a complete gzip stream",
    "unknown_version": "`v` is not a supported schema version (1)",
    "unknown_game": "`game_id` names no game this platform can resolve (also a registered game whose environment "
    "cannot be built here)",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong JSON type (e.g. a string reward, a float `t`, `true` for an int)",
    "bad_length": "a string or list of the wrong length: `game_id`, `client_id`, `obs`/`next_obs` (the game's "
    "observation size), an empty `steps`",
    "bad_string": "`game_id`, `client_id` or `episode_id` is not printable text: a control character (NUL, a "
    "newline...), a separator other than the space, or a lone UTF-16 surrogate (a `\\ud800` escape without its "
    "pair), which no store or key can encode",
    "bad_episode_id": "`episode_id` is not a UUID",
    "bad_model_version": "`model_version` is outside 0..2^31-1",
    "non_finite": "NaN, Infinity, or a number beyond float32 range in `obs`, `next_obs`, `reward` or a continuous "
    "action",
    "action_out_of_range": "the action is outside the game's action space",
    "bad_step_index": "`t` outside 0..2^31-1, or not strictly increasing within the chunk",
    "step_after_end": "a step follows a step of its episode that was `terminated` or `truncated`: in the same "
    "chunk, or stored from an earlier record (each such step is one dead letter, naming the episode and `t`)",
}


class ContractError(ValueError):
    """A record that breaks the wire contract.

    ``field`` names the offending field; ``kind`` is one of ``REJECT_KINDS``, a stable category for
    counting dead letters.
    """

    def __init__(self, field: str, reason: str, kind: str) -> None:
        if kind not in REJECT_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of REJECT_KINDS")
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Step:
    """One transition. ``obs``/``next_obs`` are flat float lists; ``action`` int or float list."""

    t: int
    obs: list[float]
    action: int | list[float]
    reward: float
    next_obs: list[float]
    terminated: bool
    truncated: bool


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive steps of one episode, the unit carried by one Kinesis record."""

    game_id: str
    client_id: str
    episode_id: str
    model_version: int
    steps: list[Step] = field(default_factory=list)
    v: int = SCHEMA_VERSION


def encode_chunk(chunk: Chunk, compress: bool = False) -> bytes:
    """Serialise a chunk to record bytes (compact JSON, gzip if ``compress``)."""
    steps = [
        {
            "t": s.t,
            "obs": s.obs,
            "action": s.action,
            "reward": s.reward,
            "next_obs": s.next_obs,
            "terminated": s.terminated,
            "truncated": s.truncated,
        }
        for s in chunk.steps
    ]
    data = encode_record(chunk.game_id, chunk.client_id, chunk.episode_id, chunk.model_version, steps, chunk.v)
    return gzip.compress(data, compresslevel=1) if compress else data


def encode_record(
    game_id: str, client_id: str, episode_id: str, model_version: int, steps: list[dict], v: int = SCHEMA_VERSION
) -> bytes:
    """Compact JSON of one record from step objects (contract keys; values may be numpy arrays/scalars).

    Callers validate first: values must be finite (orjson writes NaN as ``null``, which consumers reject).
    numpy float32 values are written in their shortest form, so a float32 observation costs ~10 bytes.
    """
    doc = {
        "v": v,
        "game_id": game_id,
        "client_id": client_id,
        "episode_id": episode_id,
        "model_version": model_version,
        "steps": steps,
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_chunk(data: bytes) -> Chunk:
    """Parse and structurally validate record bytes; raises ``ContractError`` naming the field."""
    if len(data) > MAX_RECORD_BYTES:
        raise ContractError("record", f"{len(data)} bytes exceeds the limit of {MAX_RECORD_BYTES}", "too_large")
    if data[:2] == GZIP_MAGIC:
        data = gunzip_bounded(data)
    doc = _load_json(data)
    if not isinstance(doc, dict):
        raise ContractError("record", "must be a JSON object", "wrong_type")
    version = _require(doc, "v", int)
    if version not in SUPPORTED_VERSIONS:
        raise ContractError(
            "v", f"unknown schema version {version}; supported: {sorted(SUPPORTED_VERSIONS)}", "unknown_version"
        )
    game_id = _require_str(doc, "game_id", 64)
    client_id = _require_str(doc, "client_id", 128)
    episode_id = canonical_episode_id(_require_str(doc, "episode_id", 64))
    model_version = _require(doc, "model_version", int)
    if not 0 <= model_version <= MAX_INDEX:
        raise ContractError("model_version", f"must be in 0..{MAX_INDEX}, got {model_version}", "bad_model_version")
    raw_steps = _require(doc, "steps", list)
    if not raw_steps:
        raise ContractError("steps", f"must hold 1..{MAX_STEPS_PER_CHUNK} steps, got 0", "bad_length")
    if len(raw_steps) > MAX_STEPS_PER_CHUNK:
        raise ContractError("steps", f"must hold 1..{MAX_STEPS_PER_CHUNK} steps, got {len(raw_steps)}", "too_large")
    steps = [_decode_step(raw, i) for i, raw in enumerate(raw_steps)]
    for i in range(1, len(steps)):
        if steps[i].t <= steps[i - 1].t:
            raise ContractError(
                f"steps[{i}].t", f"must increase within a chunk ({steps[i - 1].t} then {steps[i].t})", "bad_step_index"
            )
        if steps[i - 1].terminated or steps[i - 1].truncated:
            raise ContractError(
                f"steps[{i}]",
                f"follows steps[{i - 1}], which ended the episode (terminated or truncated)",
                "step_after_end",
            )
    return Chunk(game_id, client_id, episode_id, model_version, steps, version)


def canonical_episode_id(episode_id: str) -> str:
    """The lower-case dashed form of any spelling ``uuid.UUID`` accepts (upper case, braces, ``urn:uuid:``,
    no dashes), so one episode has one idempotency key however a client spells it."""
    try:
        return str(uuid.UUID(episode_id))
    except ValueError:
        raise ContractError("episode_id", f"not a UUID: {episode_id!r}", "bad_episode_id") from None


def _load_json(data: bytes) -> Any:
    """UTF-8 JSON only (``json.loads`` would also take UTF-16/32); big integers read as floats."""
    try:
        return json.loads(data.decode("utf-8"), parse_int=_parse_int)
    except UnicodeDecodeError as exc:
        raise ContractError("record", f"not JSON: not UTF-8: {exc}", "not_json") from None
    except json.JSONDecodeError as exc:
        raise ContractError("record", f"not JSON: {exc}", "not_json") from None
    except RecursionError:
        raise ContractError("record", "not JSON: nested too deeply", "not_json") from None


def _parse_int(text: str) -> int | float:
    # 21 characters hold every 64-bit value with its sign; int() of a longer string may hit Python's
    # digit limit (ValueError) and is never in range anyway.
    if len(text) <= 21 and _INT_RANGE[0] <= (value := int(text)) <= _INT_RANGE[1]:
        return value
    return float(text)


def gunzip_bounded(data: bytes) -> bytes:
    """Decompress (possibly multi-member) gzip, refusing output beyond MAX_DECOMPRESSED_BYTES.

    ``gzip.decompress`` would inflate a bomb fully before we could check its size, and it raises
    ``zlib.error`` (not ``OSError``) on corrupt deflate data, which must also become a ContractError.
    """
    out: list[bytes] = []
    budget = MAX_DECOMPRESSED_BYTES
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, budget + 1)
        except zlib.error as exc:
            raise ContractError("record", f"not decompressible: {exc}", "not_decompressible") from None
        budget -= len(part)
        if budget < 0 or inflater.unconsumed_tail:
            raise ContractError("record", f"decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes", "too_large")
        if not inflater.eof:
            raise ContractError("record", "not decompressible: truncated gzip stream", "not_decompressible")
        out.append(part)
        rest = inflater.unused_data.lstrip(b"\x00")  # gzip permits zero padding between members
    return b"".join(out)


def _decode_step(raw: Any, i: int) -> Step:
    where = f"steps[{i}]"
    if not isinstance(raw, dict):
        raise ContractError(where, "must be a JSON object", "wrong_type")
    t = _require(raw, "t", int, where)
    if not 0 <= t <= MAX_INDEX:
        raise ContractError(f"{where}.t", f"must be in 0..{MAX_INDEX}, got {t}", "bad_step_index")
    action = raw.get("action")
    if isinstance(action, bool) or not isinstance(action, (int, list)):
        raise ContractError(
            f"{where}.action", "required, an int (discrete) or a list of numbers (continuous)", "wrong_type"
        )
    if isinstance(action, list):
        action = _floats(action, f"{where}.action")
    reward = _require(raw, "reward", (int, float), where)
    if not -MAX_FLOAT32 <= reward <= MAX_FLOAT32:
        raise ContractError(f"{where}.reward", NOT_FINITE, "non_finite")
    return Step(
        t=t,
        obs=_floats(_require(raw, "obs", list, where), f"{where}.obs"),
        action=action,
        reward=float(reward),
        next_obs=_floats(_require(raw, "next_obs", list, where), f"{where}.next_obs"),
        terminated=_require(raw, "terminated", bool, where),
        truncated=_require(raw, "truncated", bool, where),
    )


def _require(doc: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        raise ContractError(name, "missing", "missing_field")
    value = doc[key]
    # bool is an int subclass in Python but a distinct type on the wire.
    if isinstance(value, bool) and kind is not bool:
        raise ContractError(name, f"wrong type: expected {_kind_name(kind)}, got bool", "wrong_type")
    if not isinstance(value, kind):
        raise ContractError(name, f"wrong type: expected {_kind_name(kind)}, got {type(value).__name__}", "wrong_type")
    return value


def _require_str(doc: dict, key: str, max_len: int) -> str:
    value = _require(doc, key, str)
    if not 1 <= len(value) <= max_len:
        raise ContractError(key, f"length must be 1..{max_len}, got {len(value)}", "bad_length")
    if not value.isprintable():
        raise ContractError(key, f"must be printable text, got {value!r}", "bad_string")
    return value


def _floats(values: list, name: str) -> list[float]:
    for j, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ContractError(f"{name}[{j}]", f"wrong type: expected number, got {type(x).__name__}", "wrong_type")
        if not -MAX_FLOAT32 <= x <= MAX_FLOAT32:
            raise ContractError(f"{name}[{j}]", NOT_FINITE, "non_finite")
    return [float(x) for x in values]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
