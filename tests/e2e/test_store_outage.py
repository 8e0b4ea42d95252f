"""Cassandra goes away for 30 s mid-stream and comes back: ingest and the trainer wait (saying so in their
logs), recover by themselves, and the store ends with every acknowledged step exactly once, key by key.

A real Cassandra node of its own (``tests/cassandra_node.py``), moto, the Spark ingest job, the trainer and
simulated clients, each its own process; nothing is restarted but the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws, processes
from rlplatform.settings import CassandraSettings, Settings
from rlplatform.store import open_store
from tests import cassandra_node
from tests.support import client_stats, running, stored_keys, stream_transitions, wait_for

pytestmark = pytest.mark.e2e
GAME = "CartPole-v1"
OUTAGE_S = 30.0


def trainer_status(path: Path) -> dict:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads(path.read_text())
    return {}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[cassandra_node.CassandraNode]:
    why = cassandra_node.missing()
    if why is not None and not os.environ.get("CI"):
        pytest.skip(f"cassandra: {why}")
    n = cassandra_node.CassandraNode(tmp_path / "cassandra")
    try:
        yield n.start()
    finally:
        n.stop()


def test_ingest_and_trainer_wait_out_a_store_outage(tmp_path: Path, node: cassandra_node.CassandraNode) -> None:
    settings = Settings(store="cassandra", cassandra=CassandraSettings(port=node.port))
    moto = aws.MotoServer.start()
    job: IngestJob | None = None
    children: dict[str, subprocess.Popen] = {}
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        env = {
            **moto.env(),
            "RLP_STORE": "cassandra",
            "RLP_CASSANDRA_PORT": str(node.port),
            "RLP_INGEST_TRIGGER_SECONDS": "0.2",
        }
        job = IngestJob(tmp_path / "ingest-ckpt", tmp_path / "metrics.jsonl", env, tmp_path / "ingest.log")
        job.start()
        status, stats_dir = tmp_path / "trainer-status.json", tmp_path / "clients"
        commands = {
            "trainer": [sys.executable, "-m", "rlplatform", "train", "--game", GAME, "--status-file", str(status),
                        "--publish-every", "100", "--learning-starts", "300"],
            "clients": [sys.executable, "-m", "rlplatform_client", "simulate", "--game", GAME, "--clients", "2",
                        "--stream", settings.stream_name, "--bucket", settings.bucket, "--stats-dir", str(stats_dir),
                        "--poll-seconds", "1", "--max-steps-per-second", "100"],
        }  # fmt: skip
        for name, argv in commands.items():
            with (tmp_path / f"{name}.log").open("ab") as log:
                children[name] = processes.spawn(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        children_alive = running(children, tmp_path)

        def alive() -> None:
            job.check_alive()
            children_alive()

        wait_for(lambda: trainer_status(status).get("version", 0) >= 1, 300, "a first published model", alive)
        node.stop()
        outage_started = time.monotonic()
        while time.monotonic() - outage_started < OUTAGE_S:  # the outage itself; every stage must stay up
            alive()
            time.sleep(1.0)
        for name in ("ingest", "trainer"):
            log = (tmp_path / f"{name}.log").read_text()
            assert "unreachable at 127.0.0.1" in log, f"{name} did not say it waits for the store"
        version_at_restart = trainer_status(status)["version"]
        node.start()

        wait_for(
            lambda: trainer_status(status).get("version", 0) > version_at_restart,
            300,
            "a publish after the store came back",
            alive,
        )
        processes.stop(children.pop("clients"), timeout_s=90)
        stats = client_stats(stats_dir)
        sent = sum(s["steps_acked"] for s in stats)
        assert sent > 0 and all(s["flushed"] for s in stats), stats
        with open_store(settings) as store:
            wait_for(lambda: len(stored_keys(store, GAME)) >= sent, 180, f"{sent} transitions stored", alive)
            keys = stored_keys(store, GAME)
        # Nothing lost, nothing twice: every step of the stream is stored once, and nothing else.
        assert len(keys) == len(set(keys)) == sent
        assert set(keys) == set(stream_transitions(settings.stream_name))
    finally:
        for proc in children.values():
            processes.stop(proc, timeout_s=60)
        if job is not None:
            job.stop()
        moto.stop()
