"""The streaming job: Kinesis records -> envelope parsing and validation -> idempotent store writes.

Records are read, parsed, validated and written on the executors, one task per Kinesis shard
(``kinesis_source`` reads, ``write_partition`` writes); the driver plans offsets and collects one small
row per shard. Good records of a micro-batch are stored even when others in it are bad; bad ones go to the
dead-letter prefix in S3 with their reason. Offsets live in Spark's checkpoint, writes are keyed by
(game_id, episode_id, t), so a restarted job replays at most one batch and stores nothing twice.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from rlplatform.games import GameCatalog, game_spec
from rlplatform.infra import aws, processes
from rlplatform.ingest.dead_letters import (
    CONFLICT,
    DEAD_LETTER_SAMPLE_BYTES,
    STEP_AFTER_END,
    dead_letter_key,
    job_id,
    write_dead_letters,
)
from rlplatform.ingest.kinesis_source import record_progress
from rlplatform.ingest.parse import Rejected, parse
from rlplatform.ingest.status import StatusPublisher
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore, TransitionBatch, open_store, wait_for_store
from rlplatform_client.contract import GZIP_MAGIC, MAX_DECOMPRESSED_BYTES
from rlplatform_client.stopping import set_on_signals

log = logging.getLogger(__name__)
# What each write task sends back to the driver: one row per shard, no record data. The arrival times bound the
# shard's stored records (ingest lag, see status.py); null when it stored nothing.
RESULT_SCHEMA = (
    "shard_id string, last_seq string, records long, stored long, rejected string, arrivals string,"
    " oldest_arrival double, newest_arrival double"
)
T = TypeVar("T")
# Records per Arrow batch handed to a write task (see run).
WRITE_BATCH_RECORDS = 256
# How long a stop waits for the micro-batch in flight before stopping the query.
STOP_WAIT_S = 20.0


@dataclass
class BatchResult:
    records: int = 0
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: list[int] = field(default_factory=list)  # per input record; 0 for a rejected one
    # Kinesis arrival times (epoch s) of the first and last stored record; None while nothing was stored.
    oldest_arrival: float | None = None
    newest_arrival: float | None = None

    def merge(self, other: BatchResult) -> None:
        self.records += other.records
        self.stored += other.stored
        for kind, n in other.rejected.items():
            self.rejected[kind] += n
        self.steps += other.steps
        self.add_arrivals(other.oldest_arrival, other.newest_arrival)

    def add_arrivals(self, oldest: float | None, newest: float | None) -> None:
        if oldest is not None:
            self.oldest_arrival = oldest if self.oldest_arrival is None else min(self.oldest_arrival, oldest)
        if newest is not None:
            self.newest_arrival = newest if self.newest_arrival is None else max(self.newest_arrival, newest)


@dataclass
class ParsedSlice:
    """Consecutive records, parsed: transitions per game, steps per record, dead letters."""

    batches: dict[str, TransitionBatch]
    steps: list[int]
    dead: list[dict]


def parse_slice(records: list[tuple[str, str, bytes]], bucket: str | None = None) -> ParsedSlice:
    """Parse and validate ``(shard_id, sequence_number, data)`` records; runs in an executor's Python worker.

    Games resolve through the catalog in ``bucket`` (declared specs, then gymnasium ids); gymnasium only
    without one.
    """
    resolve = _catalog(bucket).resolve if bucket else game_spec
    by_game: dict[str, list[TransitionBatch]] = defaultdict(list)
    steps: list[int] = []
    dead: list[dict] = []
    for shard_id, seq, data in records:
        parsed = parse(data, resolve)
        if isinstance(parsed, Rejected):
            dead.append(
                {
                    "kind": parsed.kind,
                    "field": parsed.field,
                    "error": parsed.error,
                    "shard_id": shard_id,
                    "sequence_number": seq,
                    "size": len(data),
                    # Enough of the record to diagnose it; the full record stays in the stream.
                    "data_b64": base64.b64encode(data[:DEAD_LETTER_SAMPLE_BYTES]).decode(),
                }
            )
            steps.append(0)
            continue
        game_id, transitions = parsed
        steps.append(len(transitions))
        by_game[game_id].append(transitions)
    return ParsedSlice({g: TransitionBatch.concat(b) for g, b in by_game.items()}, steps, dead)


@functools.cache
def _catalog(bucket: str) -> GameCatalog:
    """One catalog per process and bucket: its cache of declared specs outlives each slice."""
    return GameCatalog(bucket)


def process_records(
    records: list[tuple[str, str, bytes]],
    store: ExperienceStore,
    slice_records: int = 64,
    slice_bytes: int = 4 * 1024 * 1024,
    settings: Settings | None = None,
    bucket: str | None = None,
) -> tuple[BatchResult, list[dict]]:
    """Parse, validate and store ``(shard_id, sequence_number, data)`` records, a slice at a time, so parsed
    data waiting for the store stays bounded whatever the batch size.

    With ``settings``, a write to the store they name that finds it unreachable is retried, logged, until it
    succeeds (``wait_for_store``), and each game written keeps at most ``settings.max_transitions_per_game``
    transitions, the oldest dropped; without, a write raises and nothing is dropped. Returns the counts and the
    dead letters (one dict per rejected record).
    """
    result = BatchResult(records=len(records))
    dead: list[dict] = []

    def patient(call: Callable[[str, TransitionBatch], T]) -> Callable[[str, TransitionBatch], T]:
        """``call``, waiting out a store that is away when there are ``settings``."""
        if settings is None:
            return call
        return lambda game_id, batch: wait_for_store(settings, lambda: call(game_id, batch))

    write, after_end = patient(store.write), patient(store.after_end)
    written: set[str] = set()
    for part in _slices(records, slice_records, slice_bytes):
        parsed = parse_slice(part, bucket)
        for game_id, batch in parsed.batches.items():
            late = after_end(game_id, batch)
            if late:
                dead += step_letters(STEP_AFTER_END, AFTER_END, game_id, batch, late)
                result.rejected[STEP_AFTER_END] += len(late)
                batch = batch[np.setdiff1d(np.arange(len(batch)), late)]
            if not len(batch):
                continue
            new = write(game_id, batch)
            written.add(game_id)
            result.stored += new
            if new < len(batch):  # some keys were there already: a replay, or a client re-sending steps
                conflicts = step_letters(CONFLICT, RESENT, game_id, batch, store.conflicting(game_id, batch))
                if conflicts:
                    result.rejected[CONFLICT] += len(conflicts)
                    dead += conflicts
        result.steps += parsed.steps
        for letter in parsed.dead:
            result.rejected[letter["kind"]] += 1
        dead += parsed.dead
    if settings is not None:
        for game_id in written:
            wait_for_store(settings, lambda g=game_id: store.retain(g, settings.max_transitions_per_game))
    return result, dead


# How a step dead letter ends, per reason (step_letters).
AFTER_END = "follows the episode's end (a terminated or truncated step with a smaller t); not stored"
RESENT = "re-sent with different content; the first one stays"


def step_letters(kind: str, why: str, game_id: str, batch: TransitionBatch, rows: list[int]) -> list[dict]:
    """One dead letter per step ``rows`` of ``batch``: a reason ingest finds per step, not per record (a step
    after its episode's stored end, a step re-sent with other content); ``why`` ends its message."""
    return [
        {
            "kind": kind,
            "field": "steps",
            "error": f"steps: {game_id} episode {batch.episode_id[i]} step {batch.t[i]} {why}",
            "game_id": game_id,
            "episode_id": str(batch.episode_id[i]),
            "t": int(batch.t[i]),
        }
        for i in rows
    ]


def _slices(records: list, max_records: int, max_bytes: int) -> Iterator[list]:
    """Consecutive runs of records, each at most ``max_records`` long and ``max_bytes`` of expanded data (or
    one record): what a slice costs the parser is its decompressed size, not its size on the wire."""
    start, size = 0, 0
    for i, (_, _, data) in enumerate(records):
        expanded = _expanded_size(data)
        if i > start and (i - start >= max_records or size + expanded > max_bytes):
            yield records[start:i]
            start, size = i, 0
        size += expanded
    if start < len(records):
        yield records[start:]


def _expanded_size(data: bytes) -> int:
    """A record's size once decompressed, from the gzip trailer (ISIZE, the last member's size mod 2^32);
    the parser refuses more than MAX_DECOMPRESSED_BYTES whatever the trailer claims."""
    if data[:2] != GZIP_MAGIC or len(data) < 18:
        return len(data)
    return min(max(len(data), int.from_bytes(data[-4:], "little")), MAX_DECOMPRESSED_BYTES)


def _log_progress(query, last_logged: int | None) -> int | None:
    """Log where Spark spent the latest micro-batch's time (durationMs by phase), once per batch."""
    progress = query.lastProgress
    if not progress or progress["batchId"] == last_logged:
        return last_logged
    log.info("batch %d spark phases (ms): %s", progress["batchId"], progress.get("durationMs"))
    return progress["batchId"]


def _append_metrics(path: Path, batch_id: int, result: BatchResult, arrivals: list[list[float]]) -> None:
    line = {
        "batch_id": batch_id,
        "visible_at": time.time(),
        "records": result.records,
        "stored": result.stored,
        "rejected": dict(result.rejected),
        "arrivals": arrivals,
    }
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------ executors: parse, validate, write

_STORES: dict[int, ExperienceStore] = {}


def _worker_store(settings: Settings) -> ExperienceStore:
    """This Python worker's store, opened once (workers are reused across tasks and batches), after an outage
    is waited out. Keyed by pid: a forked worker must not share its parent's connection."""
    store = _STORES.get(os.getpid())
    if store is None:
        if not logging.getLogger().handlers:  # a Spark Python worker: its waits must reach the job's log
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        store = wait_for_store(settings, lambda: open_store(settings))
        _STORES[os.getpid()] = store
        processes.freeze_heap()
    return store


def write_partition(batches: Iterable, batch_id: int, settings: Settings, with_arrivals: bool, job: str) -> Iterator:
    """Executor (``mapInArrow``): one task's records (one shard's, in order) parsed, validated and stored as
    their pages arrive (the reading worker fetches the next page meanwhile), dead letters written under the
    job's id ``job`` (``dead_letter_key``); yields one
    ``RESULT_SCHEMA`` row per shard: counts, the last sequence number stored (the driver's progress mark), the
    oldest and newest arrival time of its stored records, and ``[arrival_ts, steps]`` per stored record when
    asked."""
    import pyarrow as pa

    shards: dict[str, dict] = {}
    store = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if store is None:
            store = _worker_store(settings)
        cols = batch.to_pydict()
        records = list(zip(cols["shard_id"], cols["sequence_number"], cols["data"], strict=True))
        result, dead = process_records(records, store, settings=settings, bucket=settings.bucket)
        # A task reads one shard: every batch here is that shard's records, in order.
        acc = shards.setdefault(
            cols["shard_id"][-1],
            {"result": BatchResult(), "dead": [], "arrivals": [], "last_seq": None, "first": cols["arrival_ts"][0]},
        )
        acc["result"].merge(result)
        acc["dead"] += dead
        acc["last_seq"] = cols["sequence_number"][-1]
        # Records with steps, in a batch that stored rows: the store counts new rows per game and slice, not per
        # record, and a replayed batch (stored 0) must not show its old arrivals as lag.
        if result.stored:
            stored = [ts for ts, n in zip(cols["arrival_ts"], result.steps, strict=True) if n]
            acc["result"].add_arrivals(min(stored), max(stored))
        if with_arrivals:
            acc["arrivals"] += [[ts, n] for ts, n in zip(cols["arrival_ts"], result.steps, strict=True) if n]
    rows = []
    for shard_id, acc in shards.items():
        if acc["dead"]:
            key = dead_letter_key(job, batch_id, shard_id, acc["first"])
            write_dead_letters(settings.bucket, key, acc["dead"])
        result = acc["result"]
        rows.append(
            {
                "shard_id": shard_id,
                "last_seq": acc["last_seq"],
                "records": result.records,
                "stored": result.stored,
                "rejected": json.dumps(dict(result.rejected)),
                "arrivals": json.dumps(acc["arrivals"]),
                "oldest_arrival": result.oldest_arrival,
                "newest_arrival": result.newest_arrival,
            }
        )
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=_result_arrow_schema())


@functools.cache
def _result_arrow_schema():
    """RESULT_SCHEMA in Arrow, stated: a column of nulls (no shard stored anything) has no type to infer."""
    import pyarrow as pa

    types = {"string": pa.string(), "long": pa.int64(), "double": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in (col.split() for col in RESULT_SCHEMA.split(","))])


def merge_results(rows: Iterable) -> tuple[BatchResult, list[list[float]]]:
    """The batch's counts from the per-shard rows (with the oldest and newest arrival of every shard's stored
    records, None when none stored anything), and its ``[arrival_ts, steps]`` pairs."""
    total, arrivals = BatchResult(), []
    for row in rows:
        shard = BatchResult(row["records"], row["stored"], json.loads(row["rejected"]))
        shard.add_arrivals(row["oldest_arrival"], row["newest_arrival"])
        total.merge(shard)
        arrivals += json.loads(row["arrivals"])
    return total, arrivals


# ------------------------------------------------------------------------------ the driver


def run(
    settings: Settings,
    checkpoint: Path,
    stop: threading.Event | None = None,
    master: str = "local[2]",
    metrics: Path | None = None,
) -> None:
    """Run the streaming query until ``stop`` is set or SIGTERM/SIGINT arrives.

    With ``metrics``, one JSON line per micro-batch is appended there: counts, the time its rows became
    visible in the store, and each record's Kinesis arrival time and step count (for latency). Always, a status
    document (lag, counts) goes to the bucket at most every ``settings.ingest_status_seconds`` (status.py).
    """
    from pyspark.sql import SparkSession

    from rlplatform.ingest.kinesis_source import KinesisDataSource

    stop = stop or threading.Event()
    # Python workers must run the interpreter that has rlplatform installed, not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if threading.current_thread() is threading.main_thread():
        set_on_signals(stop)
    # Once here, so the executors find the store's schema made (and the job waits for a store that is away).
    wait_for_store(settings, lambda: open_store(settings), stop=stop).close()
    builder = SparkSession.builder.master(master)
    if master.startswith("local"):  # nothing outside this machine needs the driver: stay on loopback
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for name, value in aws.client_env().items():
        builder = builder.config(f"spark.executorEnv.{name}", value)
    if settings.ingest_ui_port is not None:
        builder = builder.config("spark.ui.enabled", "true").config("spark.ui.port", settings.ingest_ui_port)
    else:
        builder = builder.config("spark.ui.enabled", "false")
    spark = (
        builder.appName("rlplatform-ingest")
        .config("spark.ui.showConsoleProgress", "false")  # a progress bar per micro-batch in the job's log
        # Records reach write_partition in Arrow batches of this many, as the reading worker fetches them: the
        # writer parses and stores one while the reader fetches the next (Spark's default, 10,000, would hand
        # over a whole task's records at once).
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(WRITE_BATCH_RECORDS))
        .config("spark.sql.shuffle.partitions", "1")
        # Micro-batches here are small, frequent, single-stage jobs: skip adaptive re-planning.
        .config("spark.sql.adaptive.enabled", "false")
        # Measured on 2 cores at 2k steps/s: the driver JVM idled at ~64 % of a core, mostly C2 compiler and
        # parallel GC threads; with C1 only and the serial collector (a 1 GB heap), ~23 %.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        # Spark's default, stated because the job's memory bound rests on it (micro-batches are bounded by
        # bytes, RLP_INGEST_MAX_BATCH_BYTES, so a backlog never needs more).
        .config("spark.driver.memory", "1g")
        # The default (FileContext) manager runs `readlink` and `chmod` as child processes for every offset and
        # commit file when Hadoop's native library is absent, as in the pip pyspark: ~25 spawns/s here, ~6 with
        # this one. One query writes its checkpoint, so the plain FileSystem rename is safe.
        .config(
            "spark.sql.streaming.checkpointFileManagerClass",
            "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager",
        )
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    spark.dataSource.register(KinesisDataSource)
    progress = checkpoint / "progress.json"
    job = job_id(checkpoint)
    status = StatusPublisher(settings.bucket, job, settings.ingest_status_seconds)

    def on_batch(batch_df, batch_id: int) -> None:
        started = time.perf_counter()
        write = functools.partial(
            write_partition, batch_id=batch_id, settings=settings, with_arrivals=metrics is not None, job=job
        )
        rows = [row.asDict() for row in batch_df.mapInArrow(write, RESULT_SCHEMA).collect()]
        # Only now, with every shard's records stored, may the next batch start after them.
        record_progress(progress, {row["shard_id"]: row["last_seq"] for row in rows})
        visible_at = time.time()
        result, arrivals = merge_results(rows)
        status.on_batch(batch_id, visible_at, result)
        if metrics is not None:
            _append_metrics(metrics, batch_id, result, arrivals)
        log.info(
            "batch %d: %d records from %d shards, %d new rows, rejected %s; read+parse+store %.3f s",
            batch_id,
            result.records,
            len(rows),
            result.stored,
            dict(result.rejected),
            time.perf_counter() - started,
        )

    reader = (
        spark.readStream.format("kinesis")
        .option("stream", settings.stream_name)
        .option("progressPath", str(progress))
        .option("maxBytesPerTrigger", settings.ingest_max_batch_bytes)
        .load()
    )
    query = (
        reader.writeStream.foreachBatch(on_batch)
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime=f"{settings.ingest_trigger_seconds} seconds")
        .start()
    )
    try:
        last_logged = None
        while query.isActive and not stop.is_set():
            status.heartbeat()
            query.awaitTermination(1)
            last_logged = _log_progress(query, last_logged)
        if query.exception() is not None:
            raise RuntimeError(f"ingest query failed: {query.exception()}")
    finally:
        _stop_between_batches(query)
        spark.stop()
        status.publish(stopped=True)  # best effort, like every status write: it never raises


def _stop_between_batches(query) -> None:
    """Stop the query once the batch in flight is done: stopping it inside ``foreachBatch``'s collect fails the
    batch in Spark's error handling (a StackOverflowError in its message regex), and a long batch is wasted."""
    deadline = time.monotonic() + STOP_WAIT_S
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        query.awaitTermination(0.1)
    query.stop()
