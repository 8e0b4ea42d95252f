"""Parsing and validation in the ingest job: good records stored, bad ones dead-lettered with a reason."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from rlplatform.ingest.job import process_records, write_partition
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.contract import Chunk, Step, encode_chunk

OBS = [0.1, 0.2, 0.3, 0.4]


def chunk_bytes(n: int = 3, episode_id: str | None = None, **overrides: object) -> bytes:
    steps = [Step(t, OBS, t % 2, 1.0, OBS, False, t == n - 1) for t in range(n)]
    chunk = Chunk("CartPole-v1", "c0", episode_id or str(uuid.uuid4()), 1, steps)
    doc = json.loads(encode_chunk(chunk))
    doc.update(overrides)
    return json.dumps(doc).encode()


def with_doc(**fields: object) -> bytes:
    """A valid record with top-level fields replaced (any string JSON can escape, lone surrogates included)."""
    doc = json.loads(chunk_bytes(1))
    doc.update(fields)
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


def with_steps(*steps: dict) -> bytes:
    doc = json.loads(chunk_bytes(len(steps)))
    for raw, fields in zip(doc["steps"], steps, strict=True):
        raw.update(fields)
    return json.dumps(doc).encode()


def without(key: str) -> bytes:
    doc = json.loads(chunk_bytes(1))
    del doc[key]
    return json.dumps(doc).encode()


# (record bytes, kind counted, field named in the error)
BAD = {
    "not JSON": (b"not json", "not_json", "record"),
    "not decompressible": (b"\x1f\x8b" + b"garbage", "not_decompressible", "record"),
    "unknown schema version": (chunk_bytes(v=99), "unknown_version", "v"),
    "unknown game": (chunk_bytes(game_id="NoSuchGame-v9"), "unknown_game", "game_id"),
    "missing field": (without("episode_id"), "missing_field", "episode_id"),
    "wrong type": (with_step(reward="one"), "wrong_type", "steps[0].reward"),
    "obs length": (with_step(obs=[0.1, 0.2]), "bad_length", "steps[0].obs"),
    "next_obs length": (with_step(next_obs=[0.1] * 5), "bad_length", "steps[0].next_obs"),
    "NaN": (
        b'{"v":1,"game_id":"CartPole-v1","client_id":"c","episode_id":"%s","model_version":0,"steps":[{"t":0,'
        b'"obs":[NaN,0,0,0],"action":0,"reward":1,"next_obs":[0,0,0,0],"terminated":false,"truncated":false}]}'
        % str(uuid.uuid4()).encode(),
        "non_finite",
        "steps[0].obs[0]",
    ),
    "Infinity": (with_step(reward=float("inf")), "non_finite", "steps[0].reward"),
    "action outside the space": (with_step(action=7), "action_out_of_range", "steps[0].action"),
    "negative step index": (with_step(t=-1), "bad_step_index", "steps[0].t"),
    "repeated step index": (with_steps({"t": 3}, {"t": 3}), "bad_step_index", "steps[1].t"),
    "chunk over the size limit": (b"{" + b" " * (1024 * 1024) + b"}", "too_large", "record"),
    "chunk over the step limit": (chunk_bytes(1025), "too_large", "steps"),
    "empty chunk": (chunk_bytes(steps=[]), "bad_length", "steps"),
    "episode id not a UUID": (chunk_bytes(episode_id="episode-1"), "bad_episode_id", "episode_id"),
    "model version out of range": (chunk_bytes(model_version=2**31), "bad_model_version", "model_version"),
    "step after the episode ended": (with_steps({"terminated": True}, {}), "step_after_end", "steps[1]"),
    "UTF-16": (chunk_bytes().decode().encode("utf-16"), "not_json", "record"),
    # Python's int() refuses more than 4300 digits with a plain ValueError: once, that stopped ingest. (A
    # duplicate key, too: the last one counts.)
    "a 5000-digit model version": (
        chunk_bytes()[:-1] + b', "model_version": 1' + b"0" * 5000 + b"}",
        "wrong_type",
        "model_version",
    ),
    # Legal JSON escapes that no S3 key or store can encode: once, the catalog's key encoding raised.
    "a lone surrogate in the game id": (chunk_bytes(game_id="Cart\ud800"), "bad_string", "game_id"),
    "a NUL in the client id": (chunk_bytes(client_id="bot\x00"), "bad_string", "client_id"),
    "a lone surrogate in the episode id": (with_doc(episode_id="\udfff"), "bad_string", "episode_id"),
    # Registered with gymnasium, but Box2D is not installed: building it raised DependencyNotInstalled.
    "a game that cannot be built here": (chunk_bytes(game_id="LunarLander-v3"), "unknown_game", "game_id"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_is_rejected_with_its_reason_while_good_ones_are_stored(store, case: str) -> None:
    data, kind, field = BAD[case]
    good = [("shard-0", str(i), chunk_bytes(4)) for i in range(3)]
    records = [*good[:2], ("shard-0", "9", data), good[2]]
    result, dead = process_records(records, store)
    assert result.stored == 12 and store.count("CartPole-v1") == 12
    assert dict(result.rejected) == {kind: 1}
    assert len(dead) == 1
    assert dead[0]["sequence_number"] == "9" and dead[0]["kind"] == kind and dead[0]["field"] == field
    assert dead[0]["error"].startswith(field)


def test_replayed_batch_stores_nothing_twice(store) -> None:
    records = [("shard-0", "1", chunk_bytes(5)), ("shard-1", "2", gzip.compress(chunk_bytes(6)))]
    assert process_records(records, store)[0].stored == 11
    assert process_records(records, store)[0].stored == 0
    assert store.count("CartPole-v1") == 11


def test_ingest_keeps_each_game_within_its_retention_bound(tmp_path: Path) -> None:
    """Writes past ``max_transitions_per_game`` drop the oldest rows, batch after batch; every transition still
    counts as stored (``written``), and sampling draws from the newest only."""
    from rlplatform.settings import Settings

    settings = Settings(store="sqlite", sqlite={"path": tmp_path / "s.sqlite"}, max_transitions_per_game=1_000)
    episodes = [str(uuid.uuid4()) for _ in range(24)]  # 100 steps each, 4 per batch
    with SqliteStore(settings.sqlite.path) as store:
        for batch in range(6):
            records = [("shard-0", str(4 * batch + i), chunk_bytes(100, episodes[4 * batch + i])) for i in range(4)]
            assert process_records(records, store, settings=settings)[0].stored == 400
            assert store.count("CartPole-v1") == min(400 * (batch + 1), 1_000)
        assert store.written("CartPole-v1") == 2_400
        drawn = store.sample("CartPole-v1", 5_000, np.random.default_rng(0))
        assert set(drawn.episode_id.tolist()) == set(episodes[-10:])


def test_a_write_task_stores_its_shard_and_reports_counts_and_its_last_sequence_number(tmp_path: Path) -> None:
    import pyarrow as pa

    from rlplatform.ingest.kinesis_source import SCHEMA, _arrow_schema
    from rlplatform.settings import Settings

    records = [("shard-1", str(10 + i), chunk_bytes(1 + i % 5)) for i in range(20)]
    for i, case in enumerate(sorted(BAD)[:6]):
        records.insert(3 * i + 1, ("shard-1", str(100 + i), BAD[case][0]))
    rows = [(s, seq, "pk", data, 1000.0 + i) for i, (s, seq, data) in enumerate(records)]
    # Two Arrow batches, as two GetRecords pages arrive.
    batches = [
        pa.RecordBatch.from_pylist([dict(zip(SCHEMA.names, r, strict=True)) for r in part], schema=_arrow_schema())
        for part in (rows[:11], rows[11:])
    ]
    settings = Settings(store="sqlite", sqlite={"path": tmp_path / "s.sqlite"})
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=settings.bucket)
        out = list(write_partition(iter(batches), batch_id=3, settings=settings, with_arrivals=True, job="j1"))
        replay = list(write_partition(iter(batches), batch_id=3, settings=settings, with_arrivals=False, job="j1"))
        letters = boto3.client("s3").list_objects_v2(Bucket=settings.bucket)["Contents"]
    [row] = out[0].to_pylist()
    steps = sum(1 + i % 5 for i in range(20))
    assert row["shard_id"] == "shard-1" and row["last_seq"] == records[-1][1]
    assert (row["records"], row["stored"]) == (26, steps)
    assert sum(json.loads(row["rejected"]).values()) == 6
    # One [arrival, steps] pair per stored record, in order; the driver needs nothing else.
    arrivals = json.loads(row["arrivals"])
    assert [n for _, n in arrivals] == [1 + i % 5 for i in range(20)] and arrivals[0][0] == 1000.0
    # The first and last records are good ones: they bound the shard's stored arrivals (ingest lag).
    assert (row["oldest_arrival"], row["newest_arrival"]) == (1000.0, 1000.0 + len(records) - 1)
    [again] = replay[0].to_pylist()
    assert again["stored"] == 0 and json.loads(again["arrivals"]) == []
    # A replay stored nothing: no arrival of its records is a lag (typed nulls, not an untyped column).
    assert (again["oldest_arrival"], again["newest_arrival"]) == (None, None)
    assert replay[0].schema.field("oldest_arrival").type == pa.float64()
    assert [o["Key"] for o in letters] == ["dead-letters/1970/01/01/j1/batch-000000003-shard-1.jsonl"]
    with SqliteStore(settings.sqlite.path) as store:
        assert store.count("CartPole-v1") == steps


def test_a_step_re_sent_with_other_content_is_a_conflict_and_the_first_stays(store) -> None:
    episode = str(uuid.uuid4())
    first = chunk_bytes(3, episode)
    doc = json.loads(first)
    doc["steps"][1]["reward"] = 5.0
    doc["episode_id"] = episode.upper()  # another spelling of the same episode: the same keys
    assert process_records([("shard-0", "1", first)], store)[0].stored == 3
    result, dead = process_records([("shard-0", "2", json.dumps(doc).encode()), ("shard-0", "3", first)], store)
    assert result.stored == 0 and dict(result.rejected) == {"conflicting_resend": 1}
    assert [(d["kind"], d["episode_id"], d["t"]) for d in dead] == [("conflicting_resend", episode, 1)]
    rows = store.sample("CartPole-v1", 32, np.random.default_rng(0))
    assert set(rows.reward.tolist()) == {1.0} and store.count("CartPole-v1") == 3


def test_slices_are_cut_by_decompressed_size_and_count() -> None:
    from rlplatform.ingest.job import _slices

    big = gzip.compress(b" " * 3_000_000 + chunk_bytes(2))  # ~3 MB of JSON in a few KiB of gzip
    small = chunk_bytes(2)
    records = [("s", str(i), data) for i, data in enumerate([big, big, small, small, big])]
    cut = [[seq for _, seq, _ in part] for part in _slices(records, 64, 4 * 1024 * 1024)]
    assert cut == [["0"], ["1", "2", "3"], ["4"]]
    assert [len(part) for part in _slices(records * 3, 4, 1 << 40)] == [4, 4, 4, 3]


def steps_from(episode_id: str, start_t: int, n: int, end: bool = False) -> bytes:
    """A record of one episode's steps ``start_t..start_t+n-1``; the last one ends it when ``end``."""
    steps = [Step(t, OBS, t % 2, 1.0, OBS, False, end and t == start_t + n - 1) for t in range(start_t, start_t + n)]
    return encode_chunk(Chunk("CartPole-v1", "c0", episode_id, 1, steps))


def test_steps_after_a_stored_episode_end_in_a_later_record_are_dead_lettered_not_stored(store) -> None:
    episode = str(uuid.uuid4())
    ended = steps_from(episode, 0, 4, end=True)  # t 0..3, truncated at 3
    assert process_records([("shard-0", "1", ended)], store)[0].stored == 4
    result, dead = process_records(
        [("shard-0", "2", ended), ("shard-0", "3", steps_from(episode, 4, 3)), ("shard-1", "4", chunk_bytes(2))],
        store,
    )
    # The replay of the end is harmless (nothing new); the steps after it are refused one by one; others stored.
    assert result.stored == 2 and result.rejected == {"step_after_end": 3}
    assert [(d["kind"], d["episode_id"], d["t"]) for d in dead] == [("step_after_end", episode, t) for t in (4, 5, 6)]
    assert store.count("CartPole-v1") == 6


def test_an_end_earlier_in_the_same_slice_holds_for_the_records_after_it(store) -> None:
    episode = str(uuid.uuid4())
    records = [("shard-0", "1", steps_from(episode, 0, 3, end=True)), ("shard-0", "2", steps_from(episode, 3, 2))]
    result, dead = process_records(records, store)
    assert result.stored == 3 and [d["t"] for d in dead] == [3, 4]
