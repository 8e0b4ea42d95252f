"""A backlog of maximum-size records drains with ingest's memory under a stated bound, losing nothing.

Before micro-batches were bounded by bytes, 400 records of ~1 MiB on one shard made one batch of 400 MiB
and the job died with ``java.lang.OutOfMemoryError``, again on every restart.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws, processes
from rlplatform.settings import DEFAULT_INGEST_MAX_BATCH_BYTES, Settings, SqliteSettings
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.contract import MAX_RECORD_BYTES, Chunk, Step, encode_chunk

pytestmark = pytest.mark.e2e

RECORDS = 256  # ~256 MiB of backlog
STEPS_PER_RECORD = 64
BATCH_BYTES = DEFAULT_INGEST_MAX_BATCH_BYTES
# Every process of the job together (driver, Spark JVM, the source runner, the executors' Python workers that
# read and write). The JVM's heap is capped by spark.driver.memory (1 GiB; ~1.25 GiB resident at most); the
# Python side holds a few copies of one batch. Measured here: ~1.7 GiB at the peak of draining this backlog.
# With batches bounded by records only, this backlog made one 256 MiB batch and the JVM died of OutOfMemoryError.
RSS_BOUND_BYTES = int(2.5 * 1024**3)


def max_size_record() -> bytes:
    """A valid CartPole chunk padded, through an unknown field (which the contract ignores), to ~1 MiB."""
    steps = [Step(t, [0.1] * 4, t % 2, 1.0, [0.2] * 4, False, False) for t in range(STEPS_PER_RECORD)]
    doc = json.loads(encode_chunk(Chunk("CartPole-v1", "backlog", str(uuid.uuid4()), 0, steps)))
    doc["padding"] = ""
    doc["padding"] = "x" * (MAX_RECORD_BYTES - len(json.dumps(doc)) - 64)
    data = json.dumps(doc).encode()
    assert MAX_RECORD_BYTES - 1024 < len(data) <= MAX_RECORD_BYTES
    return data


def session_rss(leader: int) -> int:
    """Resident bytes of every process in the leader's session."""
    total = 0
    for pid in processes.session_members(leader):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class PeakRss(threading.Thread):
    def __init__(self, leader: int) -> None:
        super().__init__(daemon=True)
        self.leader, self.peak, self.done = leader, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, session_rss(self.leader))


def test_a_backlog_of_max_size_records_drains_with_bounded_memory(tmp_path: Path) -> None:
    settings = Settings(sqlite=SqliteSettings(path=tmp_path / "s.sqlite"), shard_count=1)
    moto = aws.MotoServer.start()
    job, sampler = None, None
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        kinesis = aws.kinesis_client()
        record = max_size_record()
        for _ in range(RECORDS // 4):  # 4 records of ~1 MiB per call: PutRecords takes at most 5 MiB
            response = kinesis.put_records(
                StreamName=settings.stream_name,
                Records=[{"Data": _fresh(record), "PartitionKey": "p"} for _ in range(4)],
            )
            assert response["FailedRecordCount"] == 0
        env = {
            **os.environ,
            "RLP_SQLITE_PATH": str(settings.sqlite.path),
            "RLP_SHARD_COUNT": "1",
            "RLP_INGEST_MAX_BATCH_BYTES": str(BATCH_BYTES),
            "RLP_INGEST_TRIGGER_SECONDS": "0.2",
        }
        job = IngestJob(tmp_path / "ckpt", tmp_path / "metrics.jsonl", env, tmp_path / "ingest.log")
        job.start()
        sampler = PeakRss(job.proc.pid)
        sampler.start()
        expected = RECORDS * STEPS_PER_RECORD
        deadline = time.monotonic() + 600
        with SqliteStore(settings.sqlite.path) as store:
            while store.count("CartPole-v1") < expected:
                job.check_alive()
                assert time.monotonic() < deadline, f"stored {store.count('CartPole-v1')} of {expected}"
                time.sleep(0.5)
            assert store.count("CartPole-v1") == expected
        batches = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        # The byte budget, plus at most one GetRecords response (10 MiB) past it.
        assert max(b["records"] for b in batches) <= (BATCH_BYTES + 10 * 2**20) // (MAX_RECORD_BYTES - 1024) + 1
        print(f"peak RSS of the ingest job: {sampler.peak / 2**20:.0f} MiB over {len(batches)} batches")
        assert 0 < sampler.peak <= RSS_BOUND_BYTES, f"peak RSS {sampler.peak / 2**20:.0f} MiB"
    finally:
        if sampler is not None:
            sampler.done.set()
        if job is not None:
            job.stop()
        moto.stop()


def _fresh(record: bytes) -> bytes:
    """The same record for a new episode: every record adds its own steps."""
    doc = json.loads(record)
    doc["episode_id"] = str(uuid.uuid4())
    return json.dumps(doc).encode()
