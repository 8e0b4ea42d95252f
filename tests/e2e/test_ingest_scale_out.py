"""Ingest scales out: on a Spark standalone master with two one-core workers (the compose topology with
``--scale spark-worker=2``), both executors run the query's tasks, the driver collects no record data, and a
kill -9 of one worker mid-stream loses and duplicates nothing (Cassandra store, moto Kinesis, simulated clients).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlplatform.infra import aws, processes
from rlplatform.infra.aws import free_port
from rlplatform.settings import Settings
from rlplatform.store import open_store
from tests.spark_cluster import SparkCluster, http_json
from tests.support import client_stats, running, stored_keys, stream_records, stream_transitions, wait_for

pytestmark = pytest.mark.e2e
GAME = "CartPole-v1"
# The result rows the driver collects are counts and a sequence number per shard and batch: a few KiB per task
# of task-result overhead, whatever the batch holds. Collecting the records themselves would be >= 1x.
MAX_RESULT_TO_RECORD_BYTES = 0.05


class IngestApp:
    """The ingest job's Spark REST API (``RLP_INGEST_UI_PORT``)."""

    def __init__(self, port: int) -> None:
        self.api = f"http://127.0.0.1:{port}/api/v1/applications"

    def _get(self, path: str) -> list:
        apps = http_json(self.api) or []
        return (http_json(f"{self.api}/{apps[0]['id']}/{path}") or []) if apps else []

    def tasks_per_executor(self) -> dict[str, int]:
        """Completed tasks per executor id ("driver" included), of executors alive or lost."""
        return {e["id"]: e["completedTasks"] for e in self._get("allexecutors")}

    def result_bytes(self) -> int:
        """Bytes of task results sent back to the driver, over every completed stage."""
        return sum(s.get("resultSize", 0) for s in self._get("stages?status=complete"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SparkCluster]:
    with SparkCluster(tmp_path / "spark", workers=2, cores_per_worker=1) as c:
        yield c
    for name, proc in c.procs.items():
        assert not processes.session_members(proc.pid), f"spark {name} left processes behind"


@pytest.fixture
def moto_env() -> Iterator[dict[str, str]]:
    """moto; its endpoint reaches the executors from the ingest driver (``spark.executorEnv``), not from the
    workers' environment."""
    moto = aws.MotoServer.start()
    try:
        moto.apply_env()
        yield moto.env()
    finally:
        moto.stop()
        moto.restore_env()


def test_ingest_runs_on_both_executors_and_survives_losing_one(
    tmp_path: Path, moto_env: dict[str, str], cluster: SparkCluster, cassandra_settings: Settings
) -> None:
    keyspace = f"scale_{uuid.uuid4().hex[:12]}"
    settings = cassandra_settings.model_copy(
        update={"cassandra": cassandra_settings.cassandra.model_copy(update={"keyspace": keyspace}), "shard_count": 2}
    )
    aws.bootstrap(settings)
    ui_port, stats_dir = free_port(), tmp_path / "clients"
    env = {
        **cluster.env(),
        **moto_env,
        "RLP_STORE": "cassandra",
        "RLP_CASSANDRA_CONTACT_POINTS": settings.cassandra.contact_points,
        "RLP_CASSANDRA_PORT": str(settings.cassandra.port),
        "RLP_CASSANDRA_KEYSPACE": keyspace,
        "RLP_INGEST_TRIGGER_SECONDS": "3",
        "RLP_INGEST_UI_PORT": str(ui_port),
    }
    commands = {
        "ingest": [sys.executable, "-m", "rlplatform", "ingest", "--master", cluster.url,
                   "--checkpoint", str(tmp_path / "ckpt")],
        "clients": [sys.executable, "-m", "rlplatform_client", "simulate", "--game", GAME, "--clients", "4",
                    "--stream", settings.stream_name, "--bucket", settings.bucket, "--stats-dir", str(stats_dir),
                    "--max-steps-per-second", "100"],
    }  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in commands.items():
            with (tmp_path / f"{name}.log").open("ab") as log:
                procs[name] = processes.spawn(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        def alive(names: tuple[str, ...] = ("ingest", "clients")) -> None:
            running({n: procs[n] for n in names}, tmp_path)()
            cluster.check_alive()

        app = IngestApp(ui_port)
        executors = lambda: {e: n for e, n in app.tasks_per_executor().items() if e != "driver"}  # noqa: E731
        wait_for(lambda: len(executors()) == 2 and all(executors().values()), 300, "tasks on both executors", alive)
        assert app.tasks_per_executor().get("driver", 0) == 0

        with open_store(settings) as store:
            before = len(stored_keys(store, GAME))
            cluster.kill9("worker-0")
            # The lost executor's tasks run again on the other one, and the stream goes on being stored.
            wait_for(lambda: len(stored_keys(store, GAME)) > before + 2000, 300, "ingest after the loss", alive)
            processes.stop(procs["clients"], timeout_s=90)
            stats = client_stats(stats_dir)
            sent = sum(s["steps_acked"] for s in stats)
            assert sent > 0 and all(s["flushed"] for s in stats), stats
            ingest_alive = lambda: alive(("ingest",))  # noqa: E731
            wait_for(lambda: len(stored_keys(store, GAME)) >= sent, 300, f"{sent} transitions stored", ingest_alive)
            keys = stored_keys(store, GAME)
        # Key by key: every acknowledged step is stored once, and nothing else is.
        assert len(keys) == len(set(keys)) == sent
        assert set(keys) == set(stream_transitions(settings.stream_name))
        result_bytes, record_bytes = (
            app.result_bytes(),
            sum(len(r["Data"]) for r in stream_records(settings.stream_name)),
        )
        print(f"task results to the driver: {result_bytes} bytes for {record_bytes} bytes of records")
        assert 0 < result_bytes < MAX_RESULT_TO_RECORD_BYTES * record_bytes
    finally:
        for proc in procs.values():
            processes.stop(proc, timeout_s=90)
