"""The compose profile's engines in containers (testcontainers): LocalStack, Cassandra, ingest, trainer.

Needs a Docker engine; without one every test here is skipped with the reason in the summary. The
ingest job, trainer and clients run as local processes against the containers, ending with a model
that a client loaded after checking its sha256, and every acknowledged transition in Cassandra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlplatform.infra import aws, processes
from rlplatform.registry.models import latest_manifest
from rlplatform.settings import Settings
from rlplatform.store import open_store
from tests.docker_engine import docker_unreachable

LOCALSTACK_IMAGE = "localstack/localstack:4.4.0"
CASSANDRA_IMAGE = "cassandra:5.0.2"
GAME = "CartPole-v1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        docker_unreachable() is not None,
        reason=f"testcontainers needs a Docker engine: {docker_unreachable()}",
    ),
]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    """LocalStack and Cassandra containers; yields the environment that points the platform at them."""
    from testcontainers.community.cassandra import CassandraContainer
    from testcontainers.localstack import LocalStackContainer

    localstack = LocalStackContainer(LOCALSTACK_IMAGE).with_services("kinesis", "s3")
    if token := os.environ.get("LOCALSTACK_AUTH_TOKEN"):
        localstack = localstack.with_env("LOCALSTACK_AUTH_TOKEN", token)
    cassandra = CassandraContainer(CASSANDRA_IMAGE)
    try:
        localstack.start()
        cassandra.start()
        host, port = cassandra.get_contact_points()[0]
        yield {
            **aws.EMULATOR_ENV,
            "AWS_ENDPOINT_URL": localstack.get_url(),
            "RLP_STORE": "cassandra",
            "RLP_CASSANDRA_CONTACT_POINTS": host,
            "RLP_CASSANDRA_PORT": str(port),
            "RLP_CASSANDRA_LOCAL_DC": cassandra.get_local_datacenter(),
        }
    finally:
        cassandra.stop()
        localstack.stop()


def test_localstack_and_cassandra_pipeline_publishes_a_model(engines: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **engines}
    saved = dict(os.environ)
    os.environ.update(env)
    procs: dict[str, subprocess.Popen] = {}
    try:
        subprocess.run([sys.executable, "-m", "rlplatform", "bootstrap"], env=env, check=True, timeout=300)
        settings = Settings()
        python = sys.executable
        argv = {
            "ingest": [python, "-m", "rlplatform", "ingest", "--checkpoint", str(tmp_path / "ingest")],
            "trainer": [python, "-m", "rlplatform", "train", "--publish-every", "100", "--learning-starts", "300"],
            "clients": [
                python,
                "-m",
                "rlplatform_client",
                "simulate",
                "--clients",
                "2",
                "--stream",
                settings.stream_name,
                "--bucket",
                settings.bucket,
                "--stats-dir",
                str(tmp_path / "clients"),
                "--max-steps-per-second",
                "200",
            ],
        }
        for name, cmd in argv.items():
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
            procs[name] = processes.spawn(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        deadline = time.monotonic() + 600
        while latest_manifest(settings.bucket, GAME) is None:
            assert time.monotonic() < deadline, "no model published within 600 s"
            assert all(p.poll() is None for p in procs.values()), "a process died; see its log"
            time.sleep(1)
        processes.stop(procs["clients"], timeout_s=120)
        stats = [json.loads(p.read_text()) for p in (tmp_path / "clients").glob("*.json")]
        sent = sum(s["steps_acked"] for s in stats)
        with open_store(settings) as store:
            deadline = time.monotonic() + 180
            while store.count(GAME) < sent and time.monotonic() < deadline:
                time.sleep(1)
            assert store.count(GAME) == sent > 0
        assert any(s["verified_loads"] >= 1 for s in stats)
    finally:
        for proc in procs.values():
            processes.stop(proc, timeout_s=60)
        os.environ.clear()
        os.environ.update(saved)
