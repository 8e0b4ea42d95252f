"""A partitioned Kinesis streaming source on Spark's Python Data Source API: records are read on the executors.

The driver plans, the executors read. Each micro-batch has one input partition per open shard; the task
reads that shard after the batch's start, up to the batch's caps, as Arrow batches. The driver (Spark's
source-runner process) lists shards and, only when the stream looked idle, asks each shard for one record
to decide whether a batch is worth running; it never handles record data otherwise.

Kinesis cannot say where an open shard ends without reading it, so a batch's offset fixes each shard's
*start* (``{"round", "shards": {shard_id: sequence number or None}, "closed", "maxRecords", "maxBytes"}``;
``None`` is TRIM_HORIZON, so shards created by resharding are read from their start). Where each shard's
read *ended* comes back from the executors with the write results, and the sink raises that shard's
high-water mark in ``progress.json`` (``record_progress``) once the batch is stored; the next batch starts
there. A batch replayed after a crash stops at the recorded mark (the same records) or, if its first run
never recorded one, reads again from the same start; the idempotent store makes either harmless. The file
is derived state: lost, it costs one re-read from the checkpointed starts.

A task's read is bounded by records and bytes (``maxRecordsPerShard``; ``maxBytesPerTrigger`` split over
the open shards) and cut at a record, so a replay's cut falls at the same place. An unreachable endpoint
is waited out, with log lines, on the driver and on the executors.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from botocore.exceptions import ClientError
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadLimit, ReadMaxBytes
from pyspark.sql.types import BinaryType, DoubleType, StringType, StructField, StructType

from rlplatform.infra import processes
from rlplatform.settings import DEFAULT_INGEST_MAX_BATCH_BYTES
from rlplatform_client.models import error_code
from rlplatform_client.retry import aws_unreachable, retry

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = StructType(
    [
        StructField("shard_id", StringType(), False),
        StructField("sequence_number", StringType(), False),
        StructField("partition_key", StringType(), False),
        StructField("data", BinaryType(), False),
        StructField("arrival_ts", DoubleType(), False),
    ]
)
# GetRecords returns at most this many records per call.
MAX_RECORDS_PER_CALL = 10_000
DEFAULT_MAX_RECORDS_PER_SHARD = 10_000


def _after(a: str | None, b: str | None) -> bool:
    """Sequence number ``a`` comes after ``b`` (``None``: before every record)."""
    return a is not None and (b is None or int(a) > int(b))


# ------------------------------------------------------------------------------ progress (the sink's side)


def read_progress(path: str | Path) -> dict[str, str]:
    """Per shard, the last sequence number stored; empty when nothing was recorded yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def record_progress(path: str | Path, ends: dict[str, str]) -> None:
    """After a batch is stored: raise each shard's high-water mark (never lower it), atomically."""
    done = read_progress(path)
    done.update({shard: seq for shard, seq in ends.items() if _after(seq, done.get(shard))})
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(done))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ one Kinesis client per process

_CLIENTS: dict[int, object] = {}


def kinesis_client():
    """This process's Kinesis client. Python workers are reused across tasks, and a client costs tens of ms
    to build; keyed by pid so a forked worker never shares its parent's connections."""
    client = _CLIENTS.get(os.getpid())
    if client is None:
        import boto3
        from botocore.config import Config

        # A few quick retries inside botocore; a longer outage is waited out by ``_call``, with log lines.
        client = boto3.client("kinesis", config=Config(retries={"max_attempts": 3, "mode": "standard"}))
        _CLIENTS[os.getpid()] = client
        processes.freeze_heap()
    return client


def _call(call: Callable[[], T]) -> T:
    """A Kinesis call that waits out an unreachable endpoint (logged) instead of failing the query."""
    return retry(call, service="Kinesis", endpoint=kinesis_client().meta.endpoint_url, unreachable=aws_unreachable)


# What Kinesis answers for a sequence number it cannot find: one past the stream's retention (AWS), or one that
# kinesis-mock (LocalStack) lost track of under concurrent producers though it returned it from GetRecords.
_SEQUENCE_NOT_FOUND = frozenset({"ResourceNotFoundException", "InvalidArgumentException"})


def _iterator(stream: str, shard_id: str, after: str | None) -> tuple[str, str | None]:
    """An iterator over the shard's records after ``after`` (all of them without), and the sequence number the
    caller must skip records up to (None: none). When Kinesis cannot find ``after``, the iterator starts at the
    shard's beginning and the caller skips what it read before: nothing is lost, nothing read twice."""
    client = kinesis_client()

    def get(**kwargs: str) -> str:
        return _call(lambda: client.get_shard_iterator(StreamName=stream, ShardId=shard_id, **kwargs))["ShardIterator"]

    if after is None:
        return get(ShardIteratorType="TRIM_HORIZON"), None
    try:
        return get(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after), None
    except ClientError as exc:
        if error_code(exc) not in _SEQUENCE_NOT_FOUND:
            raise
        log.warning("%s: Kinesis cannot find sequence number %s (%s); reading from its start", shard_id, after, exc)
        return get(ShardIteratorType="TRIM_HORIZON"), after


# ------------------------------------------------------------------------------ the source


class ShardRange(InputPartition):
    """One task's read: ``shard_id`` after ``after``, up to ``stop_at`` (a replay) or the caps."""

    def __init__(self, shard_id: str, after: str | None, stop_at: str | None, max_records: int, max_bytes: int) -> None:
        super().__init__(shard_id)
        self.shard_id, self.after, self.stop_at = shard_id, after, stop_at
        self.max_records, self.max_bytes = max_records, max_bytes


class KinesisDataSource(DataSource):
    """``spark.readStream.format("kinesis")``; options: ``stream``, ``progressPath`` (where the sink records
    what it stored, see ``record_progress``), ``maxRecordsPerShard``, ``maxBytesPerTrigger``."""

    @classmethod
    def name(cls) -> str:
        return "kinesis"

    def schema(self) -> StructType:
        return SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return KinesisStreamReader(self.options)


class KinesisStreamReader(DataSourceStreamReader):
    """Pickled into every read task, so it holds options only (clients live per process)."""

    def __init__(self, options: dict[str, str]) -> None:
        for required in ("stream", "progressPath"):
            if not options.get(required):
                raise ValueError(f"kinesis source: option {required!r} is required")
        self.stream, self.progress = options["stream"], options["progressPath"]
        self.max_records = int(options.get("maxRecordsPerShard", DEFAULT_MAX_RECORDS_PER_SHARD))
        self.max_bytes = int(options.get("maxBytesPerTrigger", DEFAULT_INGEST_MAX_BATCH_BYTES))

    def initialOffset(self) -> dict:
        return {"round": 0, "shards": {}, "closed": []}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxBytes(self.max_bytes)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        """Driver: the next batch's starts, or ``start`` itself when there is nothing to read (no batch)."""
        if "round" not in start:
            raise ValueError(
                f"kinesis source: the checkpoint's offset {start} was written by an older ingest job; start with"
                " a new checkpoint directory (the store ignores the records it already holds)"
            )
        shards, closed = dict(start["shards"]), set(start["closed"])
        done = read_progress(self.progress)
        advanced = {s for s in shards if _after(done.get(s), shards[s])}
        shards.update({s: done[s] for s in advanced})
        listed = self._list_shards()
        for shard_id in listed:
            shards.setdefault(shard_id, None)
        for shard_id in [s for s in shards if s not in listed]:  # expired past the stream's retention
            shards.pop(shard_id)
            closed.discard(shard_id)
        open_shards = [s for s in shards if s not in closed]
        # A shard the last batch read from likely has more; otherwise ask each open shard for one record.
        wanted = bool(advanced)
        if not wanted:
            for shard_id in open_shards:
                has_data, ended = self._probe(shard_id, shards[shard_id])
                wanted |= has_data
                if ended:
                    closed.add(shard_id)
        if not wanted:
            return start
        budget = limit.max_bytes if isinstance(limit, ReadMaxBytes) else self.max_bytes
        return {
            "round": start["round"] + 1,
            "shards": shards,
            "closed": sorted(closed),
            "maxRecords": self.max_records,
            "maxBytes": max(1, budget // max(1, len(open_shards))),
        }

    def partitions(self, start: dict, end: dict) -> list[ShardRange]:
        """One per open shard, from ``end``'s starts; a replayed batch stops where its first run was recorded."""
        done = read_progress(self.progress)
        return [
            ShardRange(
                shard_id,
                after,
                done[shard_id] if _after(done.get(shard_id), after) else None,
                end["maxRecords"],
                end["maxBytes"],
            )  # fmt: skip
            for shard_id, after in sorted(end["shards"].items())
            if shard_id not in end["closed"]
        ]

    def read(self, partition: ShardRange) -> Iterator:
        """Executor: the shard's records after ``partition.after`` as Arrow batches, one per GetRecords page."""
        import pyarrow as pa

        p, client, schema = partition, kinesis_client(), _arrow_schema()
        (iterator, skip), last, count, size = _iterator(self.stream, p.shard_id, p.after), p.after, 0, 0
        while iterator:
            limit = max(1, min(MAX_RECORDS_PER_CALL, p.max_records - count))
            try:
                page = _call(lambda it=iterator, n=limit: client.get_records(ShardIterator=it, Limit=n))
            except client.exceptions.ExpiredIteratorException:
                iterator, skip = _iterator(self.stream, p.shard_id, last)
                continue
            iterator, rows, full = page.get("NextShardIterator"), [], False
            for rec in page["Records"]:
                if skip is not None and not _after(rec["SequenceNumber"], skip):
                    continue  # read before: Kinesis could not start after it
                if p.stop_at is not None and _after(rec["SequenceNumber"], p.stop_at):
                    full = True
                    break
                rows.append(rec)
                count, size, last = count + 1, size + len(rec["Data"]), rec["SequenceNumber"]
                if count >= p.max_records or size >= p.max_bytes or last == p.stop_at:
                    full = True
                    break
            if rows:
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array([p.shard_id] * len(rows), pa.string()),
                        pa.array([r["SequenceNumber"] for r in rows], pa.string()),
                        pa.array([r["PartitionKey"] for r in rows], pa.string()),
                        pa.array([r["Data"] for r in rows], pa.binary()),
                        pa.array([_epoch(r) for r in rows], pa.float64()),
                    ],
                    schema=schema,
                )
            # At the tip: no lag on a short page. AWS may return empty pages while behind; emulators report lag
            # in whole milliseconds (0 within a burst), which the short page covers.
            if full or (page.get("MillisBehindLatest", 0) == 0 and len(page["Records"]) < limit):
                return

    def commit(self, end: dict) -> None:
        """Nothing to release: Kinesis keeps records for its retention period regardless."""

    def _probe(self, shard_id: str, after: str | None) -> tuple[bool, bool]:
        """(records wait after ``after``, the shard is closed and read to its end)."""
        client = kinesis_client()
        iterator, skip = _iterator(self.stream, shard_id, after)
        while True:
            limit = 1 if skip is None else MAX_RECORDS_PER_CALL  # from the shard's start: past what was read
            page = _call(lambda it=iterator, n=limit: client.get_records(ShardIterator=it, Limit=n))
            new = [r for r in page["Records"] if skip is None or _after(r["SequenceNumber"], skip)]
            if new or not page["Records"] or page.get("NextShardIterator") is None:
                break
            iterator = page["NextShardIterator"]
        has_data = bool(new) or page.get("MillisBehindLatest", 0) > 0
        return has_data, not page["Records"] and page.get("NextShardIterator") is None

    def _list_shards(self) -> list[str]:
        client, ids, kwargs = kinesis_client(), [], {"StreamName": self.stream}
        while True:
            page = _call(lambda kw=kwargs: client.list_shards(**kw))
            ids.extend(s["ShardId"] for s in page["Shards"])
            if not page.get("NextToken"):
                return ids
            kwargs = {"NextToken": page["NextToken"]}


@functools.cache
def _arrow_schema():
    """``SCHEMA`` in Arrow, nullability included: Spark checks a read's batches against it exactly."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(SCHEMA, timezone="UTC")


def _epoch(record: dict) -> float:
    ts = record.get("ApproximateArrivalTimestamp")
    return ts.timestamp() if ts is not None else time.time()
