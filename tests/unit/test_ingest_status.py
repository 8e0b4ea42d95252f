"""Ingest's status document in the bucket: throttled writes, lag from Kinesis arrival to visible rows, totals since
the job started, and writes that never fail ingest when S3 is away."""

from __future__ import annotations

import json
import logging
import uuid

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from rlplatform.infra import aws
from rlplatform.ingest.job import BatchResult, merge_results
from rlplatform.ingest.status import INGEST_STATUS_KEY, StatusPublisher, read_ingest_status
from tests.support import Clock

BUCKET = "rlp-models"


def result(
    records: int, stored: int, oldest: float | None = None, newest: float | None = None, **rejected: int
) -> BatchResult:
    """A batch's counts, with the arrival times of its first and last stored record."""
    return BatchResult(records, stored, dict(rejected), oldest_arrival=oldest, newest_arrival=newest)


def test_writes_at_most_every_interval_with_totals_and_the_worst_lag_since_the_last_write(s3) -> None:
    clock = Clock(1_000.0)
    status = StatusPublisher(BUCKET, "job-1", every_s=10.0, clock=clock)
    # The first batch is written at once: 2 s and 0.5 s from arrival to visible.
    status.on_batch(0, 1_000.0, result(4, 30, 998.0, 999.5, not_json=1))
    first = read_ingest_status(BUCKET)
    clock.now = 1_005.0  # within the interval: counted, not written
    status.on_batch(1, 1_005.0, result(3, 20, 998.0, 1_004.0, not_json=2, bad_field=1))  # lag 7 s
    assert read_ingest_status(BUCKET) == first
    clock.now = 1_010.0
    status.on_batch(2, 1_010.0, result(0, 0))  # read nothing: no lag, still a batch
    second = read_ingest_status(BUCKET)
    assert first == {
        "schema": 1,
        "job_id": "job-1",
        "started_at": 1_000.0,
        "updated_at": 1_000.0,
        "every_s": 10.0,
        "batches": 1,
        "records": 4,
        "stored": 30,
        "rejected": {"not_json": 1},
        "last_batch": {
            "batch_id": 0,
            "visible_at": 1_000.0,
            "records": 4,
            "stored": 30,
            "rejected": {"not_json": 1},
            "lag_max_s": 2.0,
            "lag_min_s": 0.5,
        },
        "lag_max_s_since_last": 2.0,
        "stopped": False,
    }
    assert (second["updated_at"], second["batches"], second["records"], second["stored"]) == (1_010.0, 3, 7, 50)
    assert second["rejected"] == {"not_json": 3, "bad_field": 1}
    assert second["last_batch"]["batch_id"] == 2
    assert (second["last_batch"]["lag_max_s"], second["last_batch"]["lag_min_s"]) == (None, None)
    # Batch 0's 2 s was written already; of batches 1 and 2 since, batch 1's 7 s is the worst.
    assert second["lag_max_s_since_last"] == 7.0


def test_a_batch_that_stored_nothing_has_no_lag_and_a_stop_writes_at_once(s3) -> None:
    clock = Clock(1_000.0)
    status = StatusPublisher(BUCKET, "job-1", every_s=10.0, clock=clock)
    # Every record rejected: the executors report no arrival, nor is one used if given.
    status.on_batch(0, 1_000.0, result(2, 0, 900.0, 950.0, not_json=2))
    doc = read_ingest_status(BUCKET)
    clock.now = 1_001.0
    status.on_batch(1, 1_001.0, result(1, 5, 1_000.0, 1_000.0))
    assert status.publish(stopped=True)
    last = read_ingest_status(BUCKET)
    assert doc["last_batch"]["lag_max_s"] is None and doc["lag_max_s_since_last"] is None
    assert (last["updated_at"], last["batches"], last["stored"], last["stopped"]) == (1_001.0, 2, 5, True)
    assert last["lag_max_s_since_last"] == 1.0


def test_an_unreachable_s3_never_fails_ingest_and_is_written_to_once_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = aws.free_port()  # nothing listens there yet: connections are refused
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    clock, bucket = Clock(1_000.0), f"status-{uuid.uuid4().hex[:8]}"
    status = StatusPublisher(bucket, "job-1", every_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="rlplatform.ingest.status"):
        status.on_batch(0, 1_000.0, result(1, 3, 999.0, 999.0))
        clock.now = 1_001.0  # not due by the interval, but nothing was written yet: tried again
        status.on_batch(1, 1_001.0, result(1, 3, 998.5, 999.0))  # lag 2.5 s, the worst
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and INGEST_STATUS_KEY in warnings[0].getMessage()
    server = ThreadedMotoServer("127.0.0.1", port, verbose=False)
    server.start()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        s3.create_bucket(Bucket=bucket)
        clock.now = 1_002.0
        status.on_batch(2, 1_002.0, result(1, 3, 1_000.0, 1_000.0))
        doc = read_ingest_status(bucket)
    finally:
        server.stop()
    assert (doc["batches"], doc["stored"], doc["updated_at"]) == (3, 9, 1_002.0)
    assert doc["lag_max_s_since_last"] == 2.5  # of all three: the failed writes did not count as written


def test_a_missing_bucket_is_a_warning_and_the_next_batch_writes_once_it_exists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(1_000.0)
    with mock_aws(), caplog.at_level(logging.WARNING, logger="rlplatform.ingest.status"):
        status = StatusPublisher(BUCKET, "job-1", every_s=10.0, clock=clock)
        status.on_batch(0, 1_000.0, result(1, 1, 999.0, 999.0))
        assert "NoSuchBucket" in caplog.text
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        status.on_batch(1, 1_000.5, result(1, 1, 999.0, 999.0))
        assert read_ingest_status(BUCKET)["batches"] == 2


def test_an_idle_job_still_writes_every_interval_so_it_reads_alive(s3) -> None:
    clock = Clock(1_000.0)
    status = StatusPublisher(BUCKET, "job-1", every_s=10.0, clock=clock)
    status.heartbeat()  # a job that started says so before any batch
    assert read_ingest_status(BUCKET)["updated_at"] == 1_000.0 and read_ingest_status(BUCKET)["batches"] == 0
    clock.now = 1_005.0
    status.heartbeat()
    assert read_ingest_status(BUCKET)["updated_at"] == 1_000.0  # not due yet
    status.on_batch(0, 1_005.0, result(1, 3, 1_004.0, 1_004.0))  # the first batch is news: written at once
    assert read_ingest_status(BUCKET)["last_batch"]["lag_max_s"] == 1.0
    clock.now = 1_010.0
    status.on_batch(1, 1_010.0, result(0, 0))
    status.heartbeat()
    assert read_ingest_status(BUCKET)["updated_at"] == 1_005.0  # neither is due before 1_015
    clock.now = 1_025.0  # idle since: the heartbeat keeps the document fresh, the last batch as it was
    status.heartbeat()
    doc = read_ingest_status(BUCKET)
    assert (doc["updated_at"], doc["batches"], doc["last_batch"]["visible_at"]) == (1_025.0, 2, 1_010.0)


def test_no_status_reads_as_none(s3) -> None:
    assert read_ingest_status(BUCKET) is None


def row(shard: str, stored: int, oldest: float | None, newest: float | None, **rejected: int) -> dict:
    return {
        "shard_id": shard,
        "last_seq": "1",
        "records": 2,
        "stored": stored,
        "rejected": json.dumps(rejected),
        "arrivals": "[]",
        "oldest_arrival": oldest,
        "newest_arrival": newest,
    }


def test_merged_results_span_every_shards_stored_arrivals() -> None:
    total, arrivals = merge_results(
        [row("a", 3, 105.0, 110.0), row("b", 0, None, None, not_json=2), row("c", 4, 101.0, 108.0)]
    )
    assert (total.records, total.stored, dict(total.rejected), arrivals) == (6, 7, {"not_json": 2}, [])
    assert (total.oldest_arrival, total.newest_arrival) == (101.0, 110.0)
    nothing, _ = merge_results([row("a", 0, None, None), row("b", 0, None, None)])
    assert (nothing.oldest_arrival, nothing.newest_arrival) == (None, None)
    assert merge_results([])[0].oldest_arrival is None
