"""The fast columnar parser and the reference decoder give the same verdict on every record."""

from __future__ import annotations

import copy
import json
import random
import uuid

import numpy as np
import pytest

from rlplatform.games import UnknownGameError, game_spec
from rlplatform.ingest.parse import _fast_parse, chunks_to_batch, parse_record, validate_chunk
from rlplatform_client.contract import Chunk, ContractError, Step, decode_chunk, encode_chunk

STRANGE_VALUES = [None, True, False, "1.0", [], {}, [1.0], -1, 0, 1, 2, 1e308, -0.0, 0.5, 10**20, "x" * 70]


def valid_doc(n: int = 5) -> dict:
    rng = np.random.default_rng(n)
    obs = rng.uniform(-1, 1, (n + 1, 4)).tolist()
    steps = [Step(t, obs[t], t % 2, 1.0, obs[t + 1], False, t == n - 1) for t in range(n)]
    return json.loads(encode_chunk(Chunk("CartPole-v1", "c", str(uuid.uuid4()), 2, steps)))


def reference(data: bytes):
    try:
        chunk = decode_chunk(data)
        spec = game_spec(chunk.game_id)
        validate_chunk(chunk, spec)
    except (ContractError, UnknownGameError) as exc:
        return ("rejected", type(exc).__name__, str(exc))
    return ("accepted", chunks_to_batch([chunk], spec))


def mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    step = rng.choice(doc["steps"])
    target, key = rng.choice(
        [(doc, k) for k in ("v", "game_id", "client_id", "episode_id", "model_version", "steps")]
        + [(step, k) for k in ("t", "obs", "action", "reward", "next_obs", "terminated", "truncated")]
        + [(step["obs"], i) for i in range(4)]
        + [(step["next_obs"], i) for i in range(4)]
    )
    op = rng.randrange(3)
    if op == 0 and isinstance(target, dict):
        del target[key]
    elif op == 1 and isinstance(target, list):
        target.append(rng.choice(STRANGE_VALUES))
    else:
        target[key] = rng.choice(STRANGE_VALUES)
    return doc


def test_fast_path_accepts_valid_records_identically() -> None:
    data = json.dumps(valid_doc()).encode()
    assert _fast_parse(data) is not None, "the fast path must be the one that serves valid records"
    game_id, fast = parse_record(data)
    verdict = reference(data)
    assert game_id == "CartPole-v1" and verdict[0] == "accepted"
    for name in ("t", "obs", "action", "reward", "next_obs", "terminated", "truncated", "model_version"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(verdict[1], name))
        assert getattr(fast, name).dtype == getattr(verdict[1], name).dtype


@pytest.mark.parametrize("seed", range(4))
def test_fast_and_reference_paths_agree_on_mutated_records(seed: int) -> None:
    rng = random.Random(seed)
    base = valid_doc(3 + seed)
    for _ in range(300):
        data = json.dumps(mutate(base, rng)).encode()
        expected = reference(data)
        try:
            _, batch = parse_record(data)
            got = ("accepted", batch)
        except (ContractError, UnknownGameError) as exc:
            got = ("rejected", type(exc).__name__, str(exc))
        assert got[0] == expected[0], (data, got, expected)
        if got[0] == "rejected":
            assert got == expected
        else:
            np.testing.assert_array_equal(got[1].obs, expected[1].obs)
            np.testing.assert_array_equal(got[1].action, expected[1].action)


def test_fast_path_serves_gzip_records() -> None:
    import gzip

    data = gzip.compress(json.dumps(valid_doc()).encode())
    assert _fast_parse(data) is not None
    assert reference(data)[0] == "accepted"
