"""Exactly once across a crash: kill -9 of the ingest job mid-stream, restart from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestBenchConfig, run_ingest_bench

pytestmark = pytest.mark.e2e


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    result = run_ingest_bench(
        IngestBenchConfig(
            work_dir=tmp_path, seconds=12, producers=1, shards=2, chunk_steps=64, crash_restart=True,
            rate=3000,
        )
    )  # fmt: skip
    # The crash really happened mid-stream: some but not all transitions were stored before it.
    assert 0 < result["stored_at_crash"] < result["transitions"], result
    assert result["unflushed_producers"] == 0
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
