"""A Kinesis streaming source on Spark's Python Data Source API (boto3 inside, no JVM connector).

Offsets are ``{"shards": {shard_id: last_sequence_number_read}}``. A shard missing from the offset
is read from TRIM_HORIZON, so shards created by resharding are picked up from their start. Spark
keeps the offsets in its checkpoint; on recovery it calls ``readBetweenOffsets`` to re-read a
batch exactly, and the idempotent store makes any replay harmless.

A micro-batch is bounded by bytes as well as records (``maxBytesPerTrigger``, split evenly over the
shards), so a backlog of maximum-size records costs the job a bounded amount of memory per batch: the
budget plus at most one GetRecords response (10 MiB) per shard. An unreachable endpoint is waited out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pyspark.sql.datasource import DataSource, SimpleDataSourceStreamReader
from pyspark.sql.types import BinaryType, DoubleType, StringType, StructField, StructType

from rlplatform.settings import DEFAULT_INGEST_MAX_BATCH_BYTES
from rlplatform_client.retry import aws_unreachable, retry

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


class KinesisDataSource(DataSource):
    """``spark.readStream.format("kinesis").option("stream", name)``; options: stream, maxRecordsPerShard,
    maxBytesPerTrigger."""

    @classmethod
    def name(cls) -> str:
        return "kinesis"

    def schema(self) -> StructType:
        return SCHEMA

    def simpleStreamReader(self, schema: StructType) -> SimpleDataSourceStreamReader:
        return KinesisStreamReader(self.options)


class KinesisStreamReader(SimpleDataSourceStreamReader):
    def __init__(self, options: dict[str, str]) -> None:
        if not options.get("stream"):
            raise ValueError("kinesis source: option 'stream' is required")
        self.stream = options["stream"]
        self.max_per_shard = int(options.get("maxRecordsPerShard", "10000"))
        self.max_bytes = int(options.get("maxBytesPerTrigger", DEFAULT_INGEST_MAX_BATCH_BYTES))
        self._client = None
        # shard_id -> (sequence number the iterator continues after, iterator); saves a call per read.
        self._iterators: dict[str, tuple[str | None, str]] = {}

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # A few quick retries inside botocore; a longer outage is waited out by ``_call``, with log lines.
            self._client = boto3.client("kinesis", config=Config(retries={"max_attempts": 3, "mode": "standard"}))
        return self._client

    def initialOffset(self) -> dict:
        return {"shards": {}}

    def read(self, start: dict) -> tuple[Iterator[tuple], dict]:
        positions = dict(start["shards"])
        rows: list[tuple] = []
        shard_ids = self._shard_ids()
        budget = max(1, self.max_bytes // max(1, len(shard_ids)))
        for shard_id in shard_ids:
            shard_rows = self._read_shard(shard_id, positions.get(shard_id), stop_at=None, max_bytes=budget)
            if shard_rows:
                positions[shard_id] = shard_rows[-1][1]
                rows.extend(shard_rows)
        return iter(rows), {"shards": positions}

    def readBetweenOffsets(self, start: dict, end: dict) -> Iterator[tuple]:
        rows: list[tuple] = []
        for shard_id, end_seq in end["shards"].items():
            begin = start["shards"].get(shard_id)
            if begin is not None and int(begin) >= int(end_seq):
                continue
            self._iterators.pop(shard_id, None)
            rows.extend(self._read_shard(shard_id, begin, stop_at=end_seq))
        return iter(rows)

    def commit(self, end: dict) -> None:
        """Nothing to release: Kinesis keeps records for its retention period regardless."""

    def _call(self, call: Callable[[], T]) -> T:
        """A Kinesis call that waits out an unreachable endpoint (logged) instead of failing the query."""
        return retry(call, service="Kinesis", endpoint=self.client.meta.endpoint_url, unreachable=aws_unreachable)

    def _shard_ids(self) -> list[str]:
        ids, token = [], None
        while True:
            kwargs = {"NextToken": token} if token else {"StreamName": self.stream}
            page = self._call(lambda kwargs=kwargs: self.client.list_shards(**kwargs))
            ids.extend(s["ShardId"] for s in page["Shards"])
            token = page.get("NextToken")
            if not token:
                return ids

    def _iterator(self, shard_id: str, after: str | None) -> str | None:
        cached = self._iterators.get(shard_id)
        if cached is not None and cached[0] == after:
            return cached[1]
        kwargs = (
            {"StartingSequenceNumber": after, "ShardIteratorType": "AFTER_SEQUENCE_NUMBER"}
            if after
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        response = self._call(
            lambda: self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard_id, **kwargs)
        )
        return response["ShardIterator"]

    def _read_shard(self, shard_id: str, after: str | None, stop_at: str | None, max_bytes: int = 0) -> list[tuple]:
        """Records after ``after``; up to ``stop_at`` inclusive when given, else what is there now, stopping
        once ``max_bytes`` of data are read (a replay re-reads exactly what its batch read first)."""
        rows: list[tuple] = []
        iterator = self._iterator(shard_id, after)
        last = after
        size = 0
        while iterator:
            try:
                page = self._call(lambda it=iterator: self.client.get_records(ShardIterator=it, Limit=10000))
            except self.client.exceptions.ExpiredIteratorException:
                self._iterators.pop(shard_id, None)
                iterator = self._iterator(shard_id, last)
                continue
            iterator = page.get("NextShardIterator")
            for rec in page["Records"]:
                seq = rec["SequenceNumber"]
                if stop_at is not None and int(seq) > int(stop_at):
                    return rows
                rows.append((shard_id, seq, rec["PartitionKey"], rec["Data"], _epoch(rec)))
                size += len(rec["Data"])
                last = seq
                if stop_at is not None and seq == stop_at:
                    return rows
            caught_up = not page["Records"] or page.get("MillisBehindLatest", 0) == 0
            if stop_at is None and (caught_up or len(rows) >= self.max_per_shard or size >= max_bytes):
                break
            if stop_at is not None and not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                raise RuntimeError(f"kinesis source: shard {shard_id} ended before sequence number {stop_at}")
        if iterator and stop_at is None:
            self._iterators[shard_id] = (last, iterator)
        else:
            self._iterators.pop(shard_id, None)
        return rows


def _epoch(record: dict) -> float:
    ts = record.get("ApproximateArrivalTimestamp")
    return ts.timestamp() if ts is not None else time.time()
