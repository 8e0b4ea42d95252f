import gzip
import json
import uuid

import pytest

from rlplatform_client.contract import (
    MAX_DECOMPRESSED_BYTES,
    MAX_RECORD_BYTES,
    MAX_STEPS_PER_CHUNK,
    Chunk,
    ContractError,
    Step,
    decode_chunk,
    encode_chunk,
)

EPISODE = str(uuid.UUID(int=7))


def _step(t: int, action: object = 1) -> Step:
    return Step(t, [0.1, -2.0, 3.5, 0.0], action, 1.0, [0.2, -1.0, 3.0, 1.0], False, t == 9)


def _chunk(n: int = 10) -> Chunk:
    return Chunk("CartPole-v1", "client-0", EPISODE, 3, [_step(t) for t in range(n)])


def _doc() -> dict:
    return json.loads(encode_chunk(_chunk(3)))


def _raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress: bool) -> None:
    chunk = _chunk()
    data = encode_chunk(chunk, compress=compress)
    assert (data[:2] == b"\x1f\x8b") == compress
    assert decode_chunk(data) == chunk


def test_round_trip_continuous_action() -> None:
    chunk = Chunk("Pendulum-v1", "c", EPISODE, 0, [_step(0, [0.5, -1.0]), _step(4, [1.0, 2.0])])
    assert decode_chunk(encode_chunk(chunk)) == chunk


def _mutate(path: str, value: object) -> bytes:
    doc = _doc()
    target = doc
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[leaf]
    else:
        target[leaf] = value
    return _raw(doc)


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b"{not json", "record", "not JSON"),
        (b"\xff\xfe", "record", "not JSON"),
        (b"[1, 2]", "record", "JSON object"),
        (b"\x1f\x8bgarbage", "record", "not decompressible"),
        (gzip.compress(b'{"v": 1}')[:-12], "record", "not decompressible"),
        (_mutate("v", 2), "v", "unknown schema version"),
        (_mutate("game_id", KeyError), "game_id", "missing"),
        (_mutate("steps.0.obs", KeyError), "steps[0].obs", "missing"),
        (_mutate("model_version", "3"), "model_version", "wrong type"),
        (_mutate("model_version", -1), "model_version", "must be in 0..2147483647"),
        (_mutate("steps.1.terminated", 1), "steps[1].terminated", "wrong type"),
        (_mutate("steps.0.t", True), "steps[0].t", "wrong type"),
        (_mutate("steps.0.action", True), "steps[0].action", "required"),
        (_mutate("steps.0.obs", [0.0, "x"]), "steps[0].obs[1]", "wrong type"),
        (_mutate("episode_id", "not-a-uuid"), "episode_id", "not a UUID"),
        (_mutate("game_id", ""), "game_id", "length"),
        (_mutate("steps.2.t", 1), "steps[2].t", "must increase"),
        (_mutate("steps.0.t", -1), "steps[0].t", "must be in 0..2147483647"),
        (_mutate("steps.0.t", 2**31), "steps[0].t", "must be in 0..2147483647"),
        (_mutate("steps", []), "steps", "1.."),
    ],
)
def test_rejects_bad_envelope(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_chunk(data)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("literal", "field"),
    [
        ("NaN", "steps[0].obs[0]"),
        ("Infinity", "steps[0].next_obs[0]"),
        ("-Infinity", "steps[0].reward"),
        ("1e39", "steps[0].obs[0]"),  # finite as JSON, Inf once stored as float32
        ("-3.5e38", "steps[0].reward"),
    ],
)
def test_rejects_non_finite_numbers(literal: str, field: str) -> None:
    doc = _doc()
    name = field.split(".")[1].split("[")[0]
    if name == "reward":
        doc["steps"][0]["reward"] = "SENTINEL"
    else:
        doc["steps"][0][name][0] = "SENTINEL"
    data = _raw(doc).replace(b'"SENTINEL"', literal.encode())
    with pytest.raises(ContractError) as info:
        decode_chunk(data)
    assert info.value.field == field
    assert "finite" in info.value.reason
    assert info.value.kind == "non_finite"


def test_rejects_too_many_steps() -> None:
    doc = _doc()
    step = doc["steps"][0]
    doc["steps"] = [dict(step, t=t) for t in range(MAX_STEPS_PER_CHUNK + 1)]
    with pytest.raises(ContractError) as info:
        decode_chunk(_raw(doc))
    assert info.value.field == "steps"


def test_rejects_oversized_record() -> None:
    with pytest.raises(ContractError) as info:
        decode_chunk(b" " * (MAX_RECORD_BYTES + 1))
    assert info.value.field == "record"
    assert "exceeds" in info.value.reason


def test_rejects_decompression_bomb() -> None:
    bomb = gzip.compress(b" " * (MAX_DECOMPRESSED_BYTES + 1), compresslevel=9)
    assert len(bomb) < MAX_RECORD_BYTES
    with pytest.raises(ContractError) as info:
        decode_chunk(bomb)
    assert info.value.field == "record"
    assert "decompresses to more than" in info.value.reason


def test_rejects_corrupt_deflate_stream() -> None:
    # Corruption inside the deflate stream raises zlib.error (not OSError) from the gzip module.
    data = bytearray(gzip.compress(encode_chunk(_chunk(50))))
    data[20] ^= 0xFF
    data[21] ^= 0xFF
    with pytest.raises(ContractError) as info:
        decode_chunk(bytes(data))
    assert info.value.field == "record"


def test_rejects_deeply_nested_json() -> None:
    with pytest.raises(ContractError) as info:
        decode_chunk(b"[" * 100_000)
    assert info.value.field == "record"
