"""The running ingest job dead-letters bad records to S3 and keeps storing good ones, also after a restart.

The poison is every kind the unit tests and the parser fuzzing know, including the two that once stopped
ingest for good (a 5000-digit integer, a registered game that cannot be built here), sent between good
records in one PutRecords call.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws
from rlplatform.ingest.dead_letters import read_dead_letters
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.contract import Chunk, Step, encode_chunk
from tests.support import wait_for
from tests.unit.test_ingest_records import BAD

pytestmark = pytest.mark.e2e


def good_record(n: int) -> bytes:
    steps = [Step(t, [0.1] * 4, 0, 1.0, [0.2] * 4, False, False) for t in range(n)]
    return encode_chunk(Chunk("CartPole-v1", "c", str(uuid.uuid4()), 0, steps))


def put(stream: str, records: list[bytes]) -> None:
    aws.kinesis_client().put_records(
        StreamName=stream, Records=[{"Data": d, "PartitionKey": str(i)} for i, d in enumerate(records)]
    )


def test_bad_records_go_to_dead_letters_and_the_job_keeps_running(tmp_path: Path) -> None:
    settings = Settings(sqlite=SqliteSettings(path=tmp_path / "s.sqlite"))
    moto = aws.MotoServer.start()
    job = None
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        env = {**os.environ, "RLP_SQLITE_PATH": str(settings.sqlite.path), "RLP_INGEST_TRIGGER_SECONDS": "0.2"}
        job = IngestJob(tmp_path / "ckpt", tmp_path / "metrics.jsonl", env, tmp_path / "ingest.log")
        job.start()
        # Kinesis itself refuses records over 1 MiB, so those never reach the job.
        cases = [(data, kind) for data, kind, _ in BAD.values() if len(data) <= 1024 * 1024]
        bad = [data for data, _ in cases]
        put(settings.stream_name, [good_record(10), *bad, good_record(5)])
        dead_letters = lambda: sum(read_dead_letters(settings.bucket).counts.values())  # noqa: E731
        with SqliteStore(settings.sqlite.path) as store:
            wait_for(lambda: store.count("CartPole-v1") == 15, 180, "15 stored steps", job.check_alive)
            wait_for(lambda: dead_letters() == len(bad), 60, "every bad record dead-lettered", job.check_alive)
            report = read_dead_letters(settings.bucket)
            kinds = [kind for _, kind in cases]
            assert dict(report.counts) == {kind: kinds.count(kind) for kind in kinds}
            # Still running: later good records are stored too.
            put(settings.stream_name, [good_record(7)])
            wait_for(lambda: store.count("CartPole-v1") == 22, 60, "22 stored steps", job.check_alive)
            # And it survives a restart from its checkpoint: poison again between good records.
            job.stop()
            job.start()
            put(settings.stream_name, [good_record(3), bad[0], good_record(4)])
            wait_for(lambda: store.count("CartPole-v1") == 29, 180, "29 stored steps", job.check_alive)
            wait_for(lambda: dead_letters() == len(bad) + 1, 60, "one more dead letter", job.check_alive)
    finally:
        if job is not None:
            job.stop()
        moto.stop()
