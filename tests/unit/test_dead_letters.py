"""Dead letters written by the ingest job are read back by `rlplatform dlq`, counted by reason."""

from __future__ import annotations

import boto3
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.ingest.dead_letters import write_dead_letters
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
        write_dead_letters("rlp-models", 7, dead)
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
