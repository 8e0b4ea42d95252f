"""``rlplatform bench store`` measures the real adapters: what it writes is stored, and it counts the requests
each adapter sends."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlplatform.bench.store import StoreBenchConfig, _local_cassandra, run_store_bench
from rlplatform.cli import app
from rlplatform.settings import Settings


def test_sqlite_run_reports_writes_samples_and_statements(tmp_path: Path) -> None:
    result = run_store_bench(StoreBenchConfig(transitions=5_000, chunk_steps=256, samples=20, work_dir=tmp_path))

    assert (result["store"], result["transitions"]) == ("sqlite", 19 * 256)
    write, sample = result["write"], result["sample"]
    assert write["transitions_per_s"] > 0 and write["cpu_us_per_transition"] > 0
    assert write["requests_per_1000"] >= 1000  # one INSERT per row today
    assert write["bound_bytes_per_1000"] is None  # nothing crosses a wire
    assert write["server_cpu_us_per_transition"] is None  # the engine runs in this process
    assert sample["batches_per_s"] > 0 and sample["rows_read_per_batch"] == 256 * 3
    assert 0 < sample["requests_per_1000"] < 1000


def test_cassandra_run_counts_requests_and_bound_bytes(
    cassandra_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real node (a fresh keyspace, dropped afterwards): every write sends requests, and their
    bound values carry at least the transitions' own bytes."""
    cassandra = cassandra_settings.cassandra
    monkeypatch.setenv("RLP_CASSANDRA_CONTACT_POINTS", cassandra.contact_points)
    monkeypatch.setenv("RLP_CASSANDRA_PORT", str(cassandra.port))
    cfg = StoreBenchConfig(store="cassandra", transitions=4_096, chunk_steps=256, samples=20, work_dir=tmp_path)

    result = run_store_bench(cfg)

    write = result["write"]
    assert result["transitions"] == 4_096 and write["requests_per_1000"] > 0
    # obs and next_obs alone are 2 x 4 float32 per CartPole transition
    assert write["bound_bytes_per_1000"] >= 1000 * 2 * 4 * 4
    assert result["sample"]["requests_per_1000"] > 0
    server_cpu = [write["server_cpu_us_per_transition"], result["sample"]["server_cpu_us_per_transition"]]
    if _local_cassandra():  # the node's own CPU, read from /proc in clock ticks, is charged too
        assert None not in server_cpu and sum(server_cpu) > 0
    else:
        assert server_cpu == [None, None]


def test_cli_names_the_option_it_refuses() -> None:
    result = CliRunner().invoke(app, ["bench", "store", "--store", "redis"])
    assert result.exit_code == 2 and "--store" in result.output
    result = CliRunner().invoke(app, ["bench", "store", "--chunk-steps", "2000"])
    assert result.exit_code == 2 and "--chunk-steps" in result.output
