"""Dead letters written by the ingest job are read back by `rlplatform dlq`, counted by reason."""

from __future__ import annotations

import boto3
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.ingest.dead_letters import dead_letter_key, job_id, write_dead_letters
from rlplatform.ingest.job import process_records
from rlplatform.store.sqlite import SqliteStore
from tests.unit.test_ingest_records import BAD, chunk_bytes


def test_dlq_lists_counts_by_reason_with_samples(tmp_path) -> None:
    records = [("shard-0", "1", chunk_bytes(2))]
    records += [("shard-1", str(10 + i), data) for i, (data, _, _) in enumerate(BAD.values())]
    records += [("shard-1", "99", b"still not json")]
    with mock_aws(), SqliteStore(tmp_path / "s.sqlite") as store:
        boto3.client("s3").create_bucket(Bucket="rlp-models")
        result, dead = process_records(records, store)
        write_dead_letters("rlp-models", dead_letter_key("job", 7, "shard-1", 0.0), dead)
        out = CliRunner().invoke(app, ["dlq", "--samples", "2"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert result.stored == 2
    for _, kind, _ in BAD.values():
        assert kind in out.output
    not_json_row = next(line for line in out.output.splitlines() if "not_json" in line)
    assert "│ 3 " in not_json_row  # b"not json", UTF-16 and b"still not json"
    assert "seq 99" in out.output or "seq 10" in out.output


def test_dlq_with_no_dead_letters() -> None:
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="rlp-models")
        out = CliRunner().invoke(app, ["dlq"])
    assert out.exit_code == 0 and "no dead letters" in out.output


def test_two_jobs_never_overwrite_each_others_dead_letters_and_a_replay_writes_its_own_again(tmp_path) -> None:
    """Two ingest jobs (two checkpoints) on one bucket, same day, same batch numbers and shard: every dead letter
    of both is kept; the same job replaying a batch after a crash writes the same object again."""
    first, second = job_id(tmp_path / "ckpt-a"), job_id(tmp_path / "ckpt-b")
    assert first != second and job_id(tmp_path / "ckpt-a") == first  # kept across restarts
    arrived = 1_764_806_400.0  # 2025-12-04 00:00 UTC
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="rlp-models")
        letters = {
            job: [{"kind": "not_json", "error": f"{job} {i}"} for i in range(n)] for job, n in ((first, 2), (second, 3))
        }
        for job, dead in letters.items():
            write_dead_letters("rlp-models", dead_letter_key(job, 7, "shard-0", arrived), dead)
        write_dead_letters("rlp-models", dead_letter_key(first, 7, "shard-0", arrived + 60), letters[first])  # replay
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rlp-models")["Contents"]]
        out = CliRunner().invoke(app, ["dlq"], terminal_width=200)
    assert sorted(keys) == sorted(
        f"dead-letters/2025/12/04/{job}/batch-000000007-shard-0.jsonl" for job in (first, second)
    )
    assert "(2 objects)" in out.output and "│ 5 " in next(
        line for line in out.output.splitlines() if "not_json" in line
    )
