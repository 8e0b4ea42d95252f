"""The streaming job: Kinesis records -> envelope parsing and validation -> idempotent store writes.

Good records of a micro-batch are stored even when others in it are bad; bad ones go to the
dead-letter prefix in S3 with their reason. Offsets live in Spark's checkpoint, writes are keyed by
(game_id, episode_id, t), so a restarted job replays at most one batch and stores nothing twice.
A micro-batch is cut into slices: one worker process parses slice i+1 while the driver writes slice i.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rlplatform import aws, processes
from rlplatform.games import GameCatalog, game_spec
from rlplatform.ingest.parse import Rejected, parse
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore, TransitionBatch, open_store, store_endpoint, unavailable_errors
from rlplatform_client.contract import GZIP_MAGIC, MAX_DECOMPRESSED_BYTES
from rlplatform_client.retry import aws_unreachable, retry
from rlplatform_client.stopping import set_on_signals

log = logging.getLogger(__name__)
DEAD_LETTER_PREFIX = "dead-letters/"
DEAD_LETTER_SAMPLE_BYTES = 2048
# The dead-letter kind of a step whose key is stored already with other content.
CONFLICT = "conflicting_resend"


@dataclass
class BatchResult:
    records: int = 0
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: list[int] = field(default_factory=list)  # per input record; 0 for a rejected one


@dataclass
class ParsedSlice:
    """Consecutive records, parsed: transitions per game, steps per record, dead letters."""

    batches: dict[str, TransitionBatch]
    steps: list[int]
    dead: list[dict]


def parse_slice(records: list[tuple[str, str, bytes]], bucket: str | None = None) -> ParsedSlice:
    """Parse and validate ``(shard_id, sequence_number, data)`` records; runs in the parser process.

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
    parser: Executor | None = None,
    slice_records: int = 64,
    slice_bytes: int = 4 * 1024 * 1024,
    store_errors: tuple[type[BaseException], ...] = (),
    store_where: str = "the store",
    bucket: str | None = None,
) -> tuple[BatchResult, list[dict]]:
    """Parse, validate and store ``(shard_id, sequence_number, data)`` records.

    With a ``parser`` (a one-process pool), slice i+1 is parsed there while slice i is written here, so the
    two halves of the work run on two cores; the call still returns only after every slice is stored. At most
    two slices are parsed ahead, so parsed data waiting for the store stays bounded whatever the batch size.
    A write failing with one of ``store_errors`` (the store is unreachable) is retried, logged, until it
    succeeds. Returns the counts and the dead letters (one dict per rejected record).
    """
    result = BatchResult(records=len(records))
    dead: list[dict] = []
    for part in _parsed(_slices(records, slice_records, slice_bytes), parser, bucket):
        for game_id, batch in part.batches.items():
            new = retry(
                lambda g=game_id, b=batch: store.write(g, b),
                service="store",
                endpoint=store_where,
                unreachable=lambda exc: isinstance(exc, store_errors),
            )
            result.stored += new
            if new < len(batch):  # some keys were there already: a replay, or a client re-sending steps
                conflicts = conflict_letters(game_id, batch, store.conflicting(game_id, batch))
                result.rejected[CONFLICT] += len(conflicts)
                dead += conflicts
        result.steps += part.steps
        for letter in part.dead:
            result.rejected[letter["kind"]] += 1
        dead += part.dead
    return result, dead


def conflict_letters(game_id: str, batch: TransitionBatch, rows: list[int]) -> list[dict]:
    """One dead letter per step re-sent with content other than the stored one (which stays)."""
    return [
        {
            "kind": CONFLICT,
            "field": "steps",
            "error": f"steps: {game_id} episode {batch.episode_id[i]} step {batch.t[i]} re-sent with different"
            " content; the first one stays",
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


def _parsed(
    slices: Iterator[list], parser: Executor | None, bucket: str | None, ahead: int = 2
) -> Iterator[ParsedSlice]:
    """Each slice parsed, in order; with a pool, up to ``ahead`` slices are in flight there."""
    if parser is None:
        yield from (parse_slice(part, bucket) for part in slices)
        return
    pending: deque = deque()
    for part in slices:
        pending.append(parser.submit(parse_slice, part, bucket))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _log_progress(query, last_logged: int | None) -> int | None:
    """Log where Spark spent the latest micro-batch's time (durationMs by phase), once per batch."""
    progress = query.lastProgress
    if not progress or progress["batchId"] == last_logged:
        return last_logged
    log.info("batch %d spark phases (ms): %s", progress["batchId"], progress.get("durationMs"))
    return progress["batchId"]


def _append_metrics(path: Path, batch_id: int, result: BatchResult, arrivals: list[float]) -> None:
    line = {
        "batch_id": batch_id,
        "visible_at": time.time(),
        "records": result.records,
        "stored": result.stored,
        "rejected": dict(result.rejected),
        "arrivals": [[ts, n] for ts, n in zip(arrivals, result.steps, strict=True) if n],
    }
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def write_dead_letters(bucket: str, batch_id: int, dead: list[dict]) -> None:
    """One object per micro-batch; an unreachable S3 is waited out, so no dead letter is lost."""
    key = f"{DEAD_LETTER_PREFIX}{time.strftime('%Y/%m/%d')}/batch-{batch_id:09d}.jsonl"
    body = "\n".join(json.dumps(d) for d in dead).encode()
    s3 = aws.s3_client()
    retry(
        lambda: s3.put_object(Bucket=bucket, Key=key, Body=body),
        service="S3",
        endpoint=s3.meta.endpoint_url,
        unreachable=aws_unreachable,
    )


def run(
    settings: Settings,
    checkpoint: Path,
    stop: threading.Event | None = None,
    master: str = "local[2]",
    metrics: Path | None = None,
) -> None:
    """Run the streaming query until ``stop`` is set or SIGTERM/SIGINT arrives.

    With ``metrics``, one JSON line per micro-batch is appended there: counts, the time its rows became
    visible in the store, and each record's Kinesis arrival time and step count (for latency).
    """
    from pyspark.sql import SparkSession

    from rlplatform.ingest.kinesis_source import KinesisDataSource

    stop = stop or threading.Event()
    # Python workers must run the interpreter that has rlplatform installed, not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if threading.current_thread() is threading.main_thread():
        set_on_signals(stop)
    store_errors, store_where = unavailable_errors(settings), store_endpoint(settings)
    store = retry(
        lambda: open_store(settings),
        service="store",
        endpoint=store_where,
        unreachable=lambda exc: isinstance(exc, store_errors),
        stop=stop,
    )
    builder = SparkSession.builder.master(master)
    if master.startswith("local"):  # nothing outside this machine needs the driver: stay on loopback
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    spark = (
        builder.appName("rlplatform-ingest")
        .config("spark.ui.enabled", "false")
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
    # Spawned, not forked: the driver has a JVM gateway and threads.
    parser = ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=processes.init_pool_worker
    )

    def on_batch(batch_df, batch_id: int) -> None:
        started = time.perf_counter()
        table = batch_df.select("shard_id", "sequence_number", "data", "arrival_ts").toArrow()
        records = list(zip(*(table.column(i).to_pylist() for i in range(3)), strict=True))
        fetched = time.perf_counter()
        result, dead = process_records(
            records, store, parser, store_errors=store_errors, store_where=store_where, bucket=settings.bucket
        )
        stored = time.perf_counter()
        if dead:
            write_dead_letters(settings.bucket, batch_id, dead)
        if metrics is not None:
            _append_metrics(metrics, batch_id, result, table.column(3).to_pylist())
        log.info(
            "batch %d: %d records, %d new rows, rejected %s; fetch %.3f s, parse+store %.3f s",
            batch_id,
            result.records,
            result.stored,
            dict(result.rejected),
            fetched - started,
            stored - fetched,
        )

    reader = (
        spark.readStream.format("kinesis")
        .option("stream", settings.stream_name)
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
            query.awaitTermination(1)
            last_logged = _log_progress(query, last_logged)
        if query.exception() is not None:
            raise RuntimeError(f"ingest query failed: {query.exception()}")
    finally:
        query.stop()
        parser.shutdown(cancel_futures=True)
        store.close()
        spark.stop()
