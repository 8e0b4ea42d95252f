"""`rlplatform up` survives a SIGKILLed trainer: the training service starts it again, it resumes from its
checkpoint in the bucket, versions only increase, and every acknowledged transition is stored by the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from rlplatform_client.models import ManifestDocument, ModelManifest
from tests.support import processes_mentioning, wait_for

pytestmark = pytest.mark.e2e
GAME = "CartPole-v1"


def launcher_code(run_dir: Path) -> str:
    # Small publish cadence so models appear within seconds; an unreachable target, so the test stops it.
    return (
        "from pathlib import Path\n"
        "from rlplatform.stack.launcher import LaunchConfig, run_stack\n"
        f"run_stack(LaunchConfig(targets={{{GAME!r}: 1e9}}, clients=2, max_minutes=6,"
        f" run_dir=Path({str(run_dir)!r}), client_steps_per_second=200, publish_every_updates=100,"
        " learning_starts=300))\n"
    )


class RunBucket:
    """The run's bucket, found as the game's own clients find it: from the run dir's ``client.env``."""

    def __init__(self, run_dir: Path) -> None:
        self.client_env = run_dir / "client.env"
        self._s3: Any = None

    def s3(self) -> Any:
        if self._s3 is None:
            env = dict(line.split("=", 1) for line in self.client_env.read_text().splitlines())
            self.bucket = env["RLP_BUCKET"]
            self._s3 = boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._s3

    def trainer_status(self) -> dict:
        """The training service's status of the game's trainer ({} until there is one)."""
        if not self.client_env.exists():
            return {}
        with contextlib.suppress(self.s3().exceptions.NoSuchKey):
            body = self.s3().get_object(Bucket=self.bucket, Key=f"trainers/{GAME}/status.json")["Body"].read()
            return json.loads(body)
        return {}

    def published(self) -> list[ModelManifest]:
        """Every versioned manifest in the registry, by version."""
        found = self.s3().list_objects_v2(Bucket=self.bucket, Prefix=f"models/{GAME}/v").get("Contents", [])
        manifests = [
            ManifestDocument.from_json(self.s3().get_object(Bucket=self.bucket, Key=k["Key"])["Body"].read()).manifest
            for k in found
            if k["Key"].endswith("/manifest.json")
        ]
        return sorted(manifests, key=lambda m: m.version)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkilled_trainer_is_restarted_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher_code(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    run = RunBucket(run_dir)
    try:
        wait_for(lambda: run.trainer_status().get("version", 0) >= 1, 300, "a first published model")
        status = run.trainer_status()
        killed, version_at_kill = status["pid"], status["version"]
        os.kill(killed, signal.SIGKILL)  # the trainer's actor process, as the OOM killer or a crash ends it

        wait_for(
            lambda: (s := run.trainer_status())["restarts"] == 1 and s.get("version", 0) > version_at_kill,
            240,
            "a publish by the restarted trainer",
        )
        restarted = run.trainer_status()
        manifests = run.published()

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: stop, drain, summarise.
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not processes_mentioning(str(run_dir)), "processes outlived the launcher"
    assert restarted["state"] == "running" and restarted["pid"] != killed
    wait_for(lambda: not alive(restarted["pid"]), 30, "the restarted trainer to end with the launcher")

    # Versions only increase (in publication order too), and learning continued from the checkpoint.
    assert manifests[0].version == 1 and manifests[-1].version > version_at_kill
    for attribute in ("created_at", "learner_step"):
        values = [getattr(m, attribute) for m in manifests]
        assert values == sorted(set(values)), f"{attribute} went back after the restart: {values}"
    log = (run_dir / "logs" / "trainers.log").read_text()
    assert "restart 1 of 3" in log and "resumed from" in log
    assert f"{GAME}: trainer stopped" in log  # Ctrl-C reached the service, which stopped its trainer itself

    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["restarts"] == {"ingest": 0, "trainers": 0, "dashboard": 0, f"trainer-{GAME}": 1}
    assert summary["error"] is None and summary["drained"] is True
    assert summary["transitions_sent"] == summary["transitions_stored"] > 0
