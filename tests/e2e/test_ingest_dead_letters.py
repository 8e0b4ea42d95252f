"""The running ingest job dead-letters bad records to S3 and keeps storing good ones, also after a restart.

The poison is every kind the unit tests and the parser fuzzing know, including the two that once stopped
ingest for good (a 5000-digit integer, a registered game that cannot be built here) and strings no key can
encode (a lone surrogate, a NUL), sent between good records in one PutRecords call; then steps after an
episode's end that was stored from an earlier record.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws
from rlplatform.ingest.dead_letters import read_dead_letters
from rlplatform.ingest.status import read_ingest_status
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.contract import Chunk, Step, encode_chunk
from tests.support import wait_for
from tests.unit.test_ingest_records import BAD, steps_from

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
            # Its status in the bucket, for a dashboard: the first batch is written at once, with its lag.
            status = lambda: read_ingest_status(settings.bucket) or {}  # noqa: E731
            wait_for(
                lambda: status().get("stored", 0) > 0 and isinstance(status()["last_batch"]["lag_max_s"], float),
                60,
                "an ingest status with stored rows and a lag",
                job.check_alive,
            )
            wait_for(lambda: dead_letters() == len(bad), 60, "every bad record dead-lettered", job.check_alive)
            report = read_dead_letters(settings.bucket)
            kinds = [kind for _, kind in cases]
            assert dict(report.counts) == {kind: kinds.count(kind) for kind in kinds}
            # Still running: later good records are stored too; an episode's end holds for a later record.
            episode = str(uuid.uuid4())
            put(settings.stream_name, [good_record(7), steps_from(episode, 0, 3, end=True)])
            wait_for(lambda: store.count("CartPole-v1") == 25, 60, "25 stored steps", job.check_alive)
            put(settings.stream_name, [steps_from(episode, 3, 2)])
            wait_for(lambda: dead_letters() == len(bad) + 2, 60, "two steps after the end", job.check_alive)
            after_end = read_dead_letters(settings.bucket, samples_per_kind=3).samples["step_after_end"]
            per_step = [(d["episode_id"], d["t"]) for d in after_end if "t" in d]  # not the in-chunk case of BAD
            assert per_step == [(episode, 3), (episode, 4)]
            # And it survives a restart from its checkpoint: poison again between good records.
            job.stop()
            job.start()
            put(settings.stream_name, [good_record(3), bad[0], good_record(4)])
            wait_for(lambda: store.count("CartPole-v1") == 32, 180, "32 stored steps", job.check_alive)
            wait_for(lambda: dead_letters() == len(bad) + 3, 60, "one more dead letter", job.check_alive)
            # A stopping job writes its last status: the restarted job's own counts, 3 + 4 new steps.
            job.stop()
            last = status()
            assert last["stopped"] and last["stored"] == 7, last
    finally:
        if job is not None:
            job.stop()
        moto.stop()
