"""Ingest's status in the bucket: the job writes ``ingest/status.json`` (lag, batch counts) as it runs, so a
dashboard that may only read the bucket and the store can show them. No Spark here: the dashboard imports it.

The lag is from a record's arrival in Kinesis to the moment its rows are visible in the store (the driver sees
every shard of the batch stored). A batch's ``lag_max_s`` is that of its oldest stored record, ``lag_min_s`` of
its newest; both None for a batch that stored nothing (no record was stored, so nothing had a lag).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from rlplatform.infra import aws

log = logging.getLogger(__name__)

INGEST_STATUS_KEY = "ingest/status.json"
STATUS_SCHEMA = 1
# One attempt, short timeouts: the PUT runs in the driver between micro-batches, and a missed status is
# replaced by the next one anyway, so waiting on S3 would only delay ingest.
_CONNECT_TIMEOUT_S = 2.0
_READ_TIMEOUT_S = 5.0


class Counts(Protocol):
    """What the publisher needs of a batch's result (``job.BatchResult``, which imports this module)."""

    records: int
    stored: int
    rejected: Mapping[str, int]
    # Kinesis arrival times (epoch s) of the first and last stored record; None when it stored nothing.
    oldest_arrival: float | None
    newest_arrival: float | None


def read_ingest_status(bucket: str) -> dict[str, Any] | None:
    """The ingest job's latest status document, or None when no job has written one to ``bucket``."""
    body = aws.object_or_none(bucket, INGEST_STATUS_KEY)
    return None if body is None else json.loads(body)


def _best_effort_s3():
    """An S3 client that gives up at once: a status write must never hold a batch up for long."""
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=_CONNECT_TIMEOUT_S,
        read_timeout=_READ_TIMEOUT_S,
    )
    return boto3.client("s3", config=config)


class StatusPublisher:
    """Totals since this job started and the latest batch, written to ``INGEST_STATUS_KEY`` at most once every
    ``every_s`` seconds (the first batch at once), so the cost in PUTs is bounded whatever the batch rate; and
    every ``every_s`` while no batch runs (``heartbeat``), so a reader tells an idle job from a gone one.

    Best effort: a failed write is logged (a warning when writes start failing, not at every batch) and the next
    batch tries again; nothing here raises into ingest. ``clock`` gives epoch seconds (injectable for tests).
    """

    def __init__(
        self, bucket: str, job_id: str, every_s: float, clock: Callable[[], float] = time.time, s3: Any = None
    ) -> None:
        self.bucket, self.job_id, self.every_s, self.clock = bucket, job_id, every_s, clock
        self._s3 = s3
        self.started_at = clock()
        self.batches = self.records = self.stored = 0
        self.rejected: Counter[str] = Counter()
        self.last_batch: dict[str, Any] | None = None
        self._lag_max_since_last: float | None = None
        self._published_at: float | None = None  # of the last successful write
        self._attempted_at: float | None = None
        self._failing = False
        # Batches (Spark's foreachBatch thread) and heartbeats (the driver's loop) publish from two threads.
        self._lock = threading.Lock()

    def on_batch(self, batch_id: int, visible_at: float, result: Counts) -> None:
        """Count one micro-batch whose rows became visible at ``visible_at`` (its lag from the arrival times of
        its stored records); writes the document when due."""
        with self._lock:
            self._count(batch_id, visible_at, result)
            first = self.batches == 1  # written at once, even just after a heartbeat: the job's first news
            if first or self._published_at is None or self.clock() - self._published_at >= self.every_s:
                self._publish(stopped=False)

    def heartbeat(self) -> None:
        """Write the document at once (a job that started) and then whenever ``every_s`` passed since the last
        write or attempt (an idle job runs no batch); skipped while a batch publishes (it writes the news)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._attempted_at is None or self.clock() - self._attempted_at >= self.every_s:
                self._publish(stopped=False)
        finally:
            self._lock.release()

    def _count(self, batch_id: int, visible_at: float, result: Counts) -> None:
        oldest, newest = result.oldest_arrival, result.newest_arrival
        stored_any = result.stored > 0 and oldest is not None and newest is not None
        lag_max = visible_at - oldest if stored_any else None
        lag_min = visible_at - newest if stored_any else None
        self.batches += 1
        self.records += result.records
        self.stored += result.stored
        self.rejected.update({kind: n for kind, n in result.rejected.items() if n})
        self.last_batch = {
            "batch_id": batch_id,
            "visible_at": visible_at,
            "records": result.records,
            "stored": result.stored,
            "rejected": {kind: n for kind, n in result.rejected.items() if n},
            "lag_max_s": lag_max,
            "lag_min_s": lag_min,
        }
        if lag_max is not None and (self._lag_max_since_last is None or lag_max > self._lag_max_since_last):
            self._lag_max_since_last = lag_max

    def document(self, stopped: bool = False) -> dict[str, Any]:
        """The status now. ``every_s`` lets a reader tell a stale document (a job gone without a word, or idle:
        no batch, no write) from a fresh one; ``stopped`` is True in the last document of a job that stopped."""
        return {
            "schema": STATUS_SCHEMA,
            "job_id": self.job_id,
            "started_at": self.started_at,
            "updated_at": self.clock(),
            "every_s": self.every_s,
            "batches": self.batches,
            "records": self.records,
            "stored": self.stored,
            "rejected": dict(self.rejected),
            "last_batch": self.last_batch,
            "lag_max_s_since_last": self._lag_max_since_last,
            "stopped": stopped,
        }

    def publish(self, stopped: bool = False) -> bool:
        """Write the document now (``stopped``: the job's last); True if it was written. Never raises: the status
        is an observer of ingest, and a fault in it (S3 away, denied, or a bug here) must not stop the job."""
        with self._lock:
            return self._publish(stopped)

    def _publish(self, stopped: bool) -> bool:
        self._attempted_at = self.clock()
        try:
            doc = self.document(stopped)
            if self._s3 is None:
                self._s3 = _best_effort_s3()
            self._s3.put_object(
                Bucket=self.bucket,
                Key=INGEST_STATUS_KEY,
                Body=json.dumps(doc).encode(),
                ContentType="application/json",
            )
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "ingest status: cannot write s3://%s/%s (%s); ingest goes on, the next batch tries again",
                    self.bucket,
                    INGEST_STATUS_KEY,
                    exc,
                    exc_info=not isinstance(exc, BotoCoreError | ClientError),  # not S3's fault: show where
                )
            self._failing = True
            return False
        if self._failing:
            log.info("ingest status: written again to s3://%s/%s", self.bucket, INGEST_STATUS_KEY)
        self._failing = False
        self._published_at = doc["updated_at"]
        self._lag_max_since_last = None
        return True
