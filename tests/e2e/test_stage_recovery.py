"""`rlplatform up` survives a SIGKILLed trainer: restarted, resumed from its checkpoint, versions only
increase, and every acknowledged transition is stored by the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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


def live_pids(wanted: Callable[[list[str]], bool]) -> list[int]:
    """Live processes whose argv ``wanted`` accepts."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and wanted(argv):
                pids.append(int(entry.name))
    return pids


def trainer_pids(run_dir: Path) -> list[int]:
    """This run's trainer (the status file on its command line names the run)."""
    status_arg = str(status_file(run_dir))
    return live_pids(lambda argv: "train" in argv and status_arg in argv)


def stop_leftovers(run_dir: Path) -> None:
    """After the launcher was killed: its children get SIGTERM (they die with it); SIGKILL stragglers."""
    mentions = lambda argv: any(str(run_dir) in arg for arg in argv)  # noqa: E731
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not live_pids(mentions), 60, "the launcher's children to exit")
    for pid in live_pids(mentions):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def status_file(run_dir: Path) -> Path:
    return run_dir / "games" / GAME / "trainer-status.json"


def trainer_status(run_dir: Path) -> dict:
    try:
        return json.loads(status_file(run_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def published(pid: int) -> list[ModelManifest]:
    """Every versioned manifest in the run's registry (moto's endpoint taken from the trainer's environment)."""
    env = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = s3.list_objects_v2(Bucket=env["RLP_BUCKET"], Prefix=f"models/{GAME}/v").get("Contents", [])
    manifests = [
        ManifestDocument.from_json(s3.get_object(Bucket=env["RLP_BUCKET"], Key=k["Key"])["Body"].read()).manifest
        for k in keys
        if k["Key"].endswith("/manifest.json")
    ]
    return sorted(manifests, key=lambda m: m.version)


def test_sigkilled_trainer_is_restarted_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher_code(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: trainer_status(run_dir).get("version", 0) >= 1, 300, "a first published model")
        (killed,) = trainer_pids(run_dir)
        os.kill(killed, signal.SIGKILL)
        version_at_kill = trainer_status(run_dir)["version"]

        wait_for(lambda: [p for p in trainer_pids(run_dir) if p != killed], 60, "the trainer to be restarted")
        wait_for(lambda: trainer_status(run_dir).get("version", 0) > version_at_kill, 240, "a publish after restart")
        (restarted,) = trainer_pids(run_dir)
        manifests = published(restarted)

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: stop, drain, summarise.
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stop_leftovers(run_dir)
    assert not processes_mentioning(str(run_dir)), "processes outlived the launcher"

    # Versions only increase (in publication order too), and learning continued from the checkpoint.
    assert manifests[0].version == 1 and manifests[-1].version > version_at_kill
    for attribute in ("created_at", "learner_step"):
        values = [getattr(m, attribute) for m in manifests]
        assert values == sorted(set(values)), f"{attribute} went back after the restart: {values}"
    assert "resumed from" in (run_dir / "logs" / f"trainer-{GAME}.log").read_text()

    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["restarts"] == {"ingest": 0, f"trainer-{GAME}": 1}
    assert summary["error"] is None and summary["drained"] is True
    assert summary["transitions_sent"] == summary["transitions_stored"] > 0
