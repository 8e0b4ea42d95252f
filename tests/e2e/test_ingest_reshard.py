"""Raising the stream's shard count while the ingest job runs loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestBenchConfig, run_ingest_bench

pytestmark = pytest.mark.e2e


def test_shard_count_raised_mid_stream_loses_nothing(tmp_path: Path) -> None:
    result = run_ingest_bench(
        IngestBenchConfig(
            work_dir=tmp_path, seconds=12, producers=1, shards=2, chunk_steps=64, reshard_to=4,
            rate=3000,
        )
    )  # fmt: skip
    assert result["open_shards_at_end"] == 4
    assert 0 < result["stored_at_reshard"] < result["transitions"], result
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
