"""The Kinesis source's plan (driver) and reads (executors), driven by hand against moto, without Spark."""

from __future__ import annotations

import pickle
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from pyspark.sql.streaming.datasource import ReadMaxBytes

from rlplatform.ingest import kinesis_source
from rlplatform.ingest.kinesis_source import KinesisStreamReader, read_progress, record_progress

STREAM = "src-test"


@pytest.fixture
def kinesis():
    with mock_aws():
        kinesis_source._CLIENTS.clear()  # a client made outside this mock would miss it
        client = boto3.client("kinesis")
        client.create_stream(StreamName=STREAM, ShardCount=2)
        yield client
    kinesis_source._CLIENTS.clear()


def put(client, n: int, start: int = 0) -> dict[str, list[str]]:
    """``n`` records spread over the shards; per shard the sequence numbers in order."""
    seqs: dict[str, list[str]] = {}
    for i in range(start, start + n):
        r = client.put_record(StreamName=STREAM, Data=f"r{i}".encode(), PartitionKey=f"k{i}")
        seqs.setdefault(r["ShardId"], []).append(r["SequenceNumber"])
    return seqs


def read_batch(reader: KinesisStreamReader, start: dict, end: dict) -> dict[str, list[str]]:
    """What the executors read for the batch ``(start, end]``, per shard (the reader travels pickled)."""
    out: dict[str, list[str]] = {}
    for part in reader.partitions(start, end):
        task_reader, task_part = pickle.loads(pickle.dumps((reader, part)))
        for batch in task_reader.read(task_part):
            cols = batch.to_pydict()
            assert set(cols["shard_id"]) == {part.shard_id}
            out.setdefault(part.shard_id, []).extend(cols["sequence_number"])
    return out


def reader(tmp_path: Path, **options: str) -> KinesisStreamReader:
    return KinesisStreamReader({"stream": STREAM, "progressPath": str(tmp_path / "progress.json"), **options})


def test_batches_read_every_record_once_and_a_replay_reads_the_same(kinesis, tmp_path: Path) -> None:
    src = reader(tmp_path, maxRecordsPerShard="7")
    offset = src.initialOffset()
    assert src.latestOffset(offset, src.getDefaultReadLimit()) == offset  # empty stream: no batch
    sent = put(kinesis, 40)
    got: dict[str, list[str]] = {}
    for _ in range(10):
        end = src.latestOffset(offset, ReadMaxBytes(1 << 20))
        if end == offset:
            break
        batch = read_batch(src, offset, end)
        assert all(len(seqs) <= 7 for seqs in batch.values())  # the cap, cut at a record
        record_progress(src.progress, {shard: seqs[-1] for shard, seqs in batch.items()})
        # A crash before Spark's commit replays the batch: it stops where the first run was recorded.
        assert read_batch(src, offset, end) == batch
        for shard, seqs in batch.items():
            got.setdefault(shard, []).extend(seqs)
        offset = end
    assert got == sent
    assert read_progress(src.progress) == {shard: seqs[-1] for shard, seqs in sent.items()}
    assert src.latestOffset(offset, ReadMaxBytes(1 << 20)) == offset  # caught up: no batch


def test_a_replay_stops_at_the_recorded_end_though_more_records_arrived(kinesis, tmp_path: Path) -> None:
    src = reader(tmp_path)
    put(kinesis, 10)
    start = src.initialOffset()
    end = src.latestOffset(start, src.getDefaultReadLimit())
    first = read_batch(src, start, end)
    record_progress(src.progress, {shard: seqs[-1] for shard, seqs in first.items()})
    put(kinesis, 10, start=10)
    assert read_batch(src, start, end) == first
    following = src.latestOffset(end, src.getDefaultReadLimit())
    assert sum(map(len, read_batch(src, end, following).values())) == 10


def test_a_batch_whose_end_was_never_recorded_is_read_again_from_its_start(kinesis, tmp_path: Path) -> None:
    src = reader(tmp_path)
    put(kinesis, 10)
    start = src.initialOffset()
    end = src.latestOffset(start, src.getDefaultReadLimit())
    first = read_batch(src, start, end)
    later = put(kinesis, 5, start=10)
    again = read_batch(src, start, end)  # the first run crashed before its progress was recorded
    assert {shard: seqs[: len(first.get(shard, []))] for shard, seqs in again.items()} == first
    assert sum(map(len, again.values())) == 15 and all(s[-1] in again[shard] for shard, s in later.items())


def test_the_byte_budget_is_split_over_open_shards_and_new_shards_start_at_their_beginning(
    kinesis, tmp_path: Path
) -> None:
    src = reader(tmp_path)
    put(kinesis, 4)
    end = src.latestOffset(src.initialOffset(), ReadMaxBytes(1000))
    assert end["maxBytes"] == 500 and set(end["shards"].values()) == {None}
    assert [p.shard_id for p in src.partitions(src.initialOffset(), end)] == sorted(end["shards"])


def test_an_offset_from_the_previous_reader_is_refused_with_what_to_do(kinesis, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="new checkpoint directory"):
        reader(tmp_path).latestOffset({"shards": {"shardId-000000000000": "1"}}, ReadMaxBytes(1))


def test_options_stream_and_progress_path_are_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'progressPath'"):
        KinesisStreamReader({"stream": STREAM})
    with pytest.raises(ValueError, match="'stream'"):
        KinesisStreamReader({"progressPath": str(tmp_path / "p.json")})


def test_a_sequence_number_kinesis_cannot_find_is_read_past_from_the_shards_start(
    kinesis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the retention (AWS) or lost by kinesis-mock: the shard is read from its start, skipping what was read
    before, so nothing is lost and nothing read twice."""
    src = reader(tmp_path)
    put(kinesis, 10)
    start = src.initialOffset()
    end = src.latestOffset(start, src.getDefaultReadLimit())
    record_progress(src.progress, {shard: seqs[-1] for shard, seqs in read_batch(src, start, end).items()})
    later = put(kinesis, 10, start=10)
    client = kinesis_source.kinesis_client()
    real = client.get_shard_iterator

    def cannot_find(**kwargs):
        if kwargs["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            raise client.exceptions.ResourceNotFoundException(
                {"Error": {"Code": "ResourceNotFoundException", "Message": "Unable to find record"}}, "GetShardIterator"
            )
        return real(**kwargs)

    monkeypatch.setattr(client, "get_shard_iterator", cannot_find)
    following = src.latestOffset(end, src.getDefaultReadLimit())
    assert following != end  # the probe saw the later records though it had to start at the beginning
    assert read_batch(src, end, following) == later
    record_progress(src.progress, {shard: seqs[-1] for shard, seqs in later.items()})
    after_all = src.latestOffset(following, src.getDefaultReadLimit())
    assert after_all == following or read_batch(src, following, after_all) == {}  # nothing is read twice
