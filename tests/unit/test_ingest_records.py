"""Parsing and validation in the ingest job: good records stored, bad ones dead-lettered with a reason."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import pytest

from rlplatform.ingest.job import process_records
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.contract import Chunk, Step, encode_chunk

OBS = [0.1, 0.2, 0.3, 0.4]


def chunk_bytes(n: int = 3, episode_id: str | None = None, **overrides: object) -> bytes:
    steps = [Step(t, OBS, t % 2, 1.0, OBS, False, t == n - 1) for t in range(n)]
    chunk = Chunk("CartPole-v1", "c0", episode_id or str(uuid.uuid4()), 1, steps)
    doc = json.loads(encode_chunk(chunk))
    doc.update(overrides)
    return json.dumps(doc).encode()


def with_step(**fields: object) -> bytes:
    doc = json.loads(chunk_bytes(1))
    doc["steps"][0].update(fields)
    return json.dumps(doc).encode()


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "s.sqlite")
    yield s
    s.close()


BAD = {
    "record": b"not json",
    "game_id": chunk_bytes(game_id="NoSuchGame-v9"),
    "v": chunk_bytes(v=99),
    "steps[0].obs": with_step(obs=[0.1, 0.2]),
    "steps[0].next_obs": with_step(next_obs=[0.1] * 5),
    "steps[0].action": with_step(action=7),
    "steps[0].reward": with_step(reward="one"),
}


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_record_is_rejected_naming_the_field_while_good_ones_are_stored(store, field: str) -> None:
    good = [("shard-0", str(i), chunk_bytes(4)) for i in range(3)]
    records = [*good[:2], ("shard-0", "9", BAD[field]), good[2]]
    result, dead = process_records(records, store)
    assert result.stored == 12 and store.count("CartPole-v1") == 12
    assert dict(result.rejected) == {field: 1}
    assert len(dead) == 1 and dead[0]["sequence_number"] == "9" and dead[0]["error"].startswith(field)


def test_replayed_batch_stores_nothing_twice(store) -> None:
    records = [("shard-0", "1", chunk_bytes(5)), ("shard-1", "2", gzip.compress(chunk_bytes(6)))]
    assert process_records(records, store)[0].stored == 11
    assert process_records(records, store)[0].stored == 0
    assert store.count("CartPole-v1") == 11
