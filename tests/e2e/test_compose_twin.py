"""The compose topology without Docker: the same commands the compose services run, as local processes.

A real Spark standalone Master and Worker (pyspark's ``spark-class``), a real ``ray start --head``,
the ingest job submitted to that master, the trainer's learner on that Ray head, and the simulated
clients; moto stands where LocalStack would and SQLite where Cassandra would (neither can run here).
Every command line comes from docker-compose.yml; only hosts, ports and paths are rewritten.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyspark
import pytest
import yaml

from rlplatform import processes
from rlplatform.aws import MotoServer, bootstrap, free_port
from rlplatform.registry import latest_manifest
from rlplatform.settings import Settings
from rlplatform.store.sqlite import SqliteStore

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
GAME = "CartPole-v1"


def compose_command(service: str) -> list[str]:
    """The service's command as docker compose would pass it: ``${VAR:-default}`` takes its default."""
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]["command"]
    command = command if isinstance(command, str) else shlex.join(command)
    return shlex.split(re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", command))


CONTAINER_HOSTS = ("spark-master", "ray-head", "localstack", "cassandra", "0.0.0.0")


def rewrite(argv: list[str], ports: dict[int, int], paths: dict[str, str]) -> list[str]:
    """Map container hosts, ports and paths to this machine's; everything else stays as compose has it."""
    out = []
    for arg in argv:
        for host in CONTAINER_HOSTS:
            arg = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w.-])", "127.0.0.1", arg)
        for old, new in ports.items():
            arg = re.sub(rf"(?<!\d){old}(?!\d)", str(new), arg)
        for old, new in paths.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, procs: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for name, proc in (procs or {}).items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


class Twin:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.spark_port, self.spark_ui, self.worker_ui = free_port(), free_port(), free_port()
        self.ray_port, self.dashboard_port = free_port(), free_port()
        self.settings = Settings(sqlite_path=tmp / "experience.sqlite", checkpoint_dir=tmp / "checkpoints")
        self.ports = {7077: self.spark_port, 8080: self.spark_ui, 6379: self.ray_port, 8265: self.dashboard_port}
        self.paths = {"/checkpoints/": f"{tmp}/checkpoints/"}
        self.moto: MotoServer | None = None

    def env(self) -> dict[str, str]:
        assert self.moto is not None
        spark_home = Path(pyspark.__file__).parent
        bin_dirs = [str(Path(sys.executable).parent), str(spark_home / "bin")]
        return {
            **self.moto.env(),
            "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]),
            "SPARK_HOME": str(spark_home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "RLP_STORE": "sqlite",
            "RLP_SQLITE_PATH": str(self.settings.sqlite_path),
            "RLP_CHECKPOINT_DIR": str(self.settings.checkpoint_dir),
        }

    def start(self, name: str, service: str, extra: list[str] = ()) -> list[str]:
        argv = [*rewrite(compose_command(service), self.ports, self.paths), *extra]
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        self.procs[name] = processes.spawn(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return argv

    def stop(self) -> None:
        for name in ("clients", "ingest", "trainer", "spark-worker", "spark-master", "ray-head"):
            if name in self.procs:
                processes.stop(self.procs[name], timeout_s=60)
        if self.moto is not None:
            self.moto.stop()


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    t = Twin(tmp_path)
    try:
        t.moto = MotoServer.start()
        t.moto.apply_env()
        bootstrap(t.settings)
        yield t
    finally:
        t.stop()
    for name, proc in t.procs.items():
        assert proc.poll() is not None, f"{name} still running"
        assert not processes.session_members(proc.pid), f"{name} left processes behind"


def test_compose_topology_runs_as_local_processes(twin: Twin) -> None:
    twin.start("spark-master", "spark-master")
    twin.start("ray-head", "ray-head")
    wait_for(lambda: port_open(twin.spark_port), 120, "the Spark master", twin.procs)
    twin.start("spark-worker", "spark-worker", ["--webui-port", str(twin.worker_ui)])
    master_ui = f"http://127.0.0.1:{twin.spark_ui}/json/"
    wait_for(lambda: (m := http_json(master_ui)) and m.get("aliveworkers", 0) >= 1, 120, "a Spark worker", twin.procs)
    wait_for(lambda: port_open(twin.ray_port), 120, "the Ray head", twin.procs)

    ingest_argv = twin.start("ingest", "ingest")
    assert f"spark://127.0.0.1:{twin.spark_port}" in ingest_argv
    trainer_argv = twin.start("trainer", "trainer", ["--publish-every", "100", "--learning-starts", "300"])
    assert f"127.0.0.1:{twin.ray_port}" in trainer_argv
    twin.start("clients", "clients", ["--stats-dir", str(twin.tmp / "clients")])

    wait_for(
        lambda: any(a.get("name") == "rlplatform-ingest" for a in (http_json(master_ui) or {}).get("activeapps", [])),
        180,
        "the ingest job registered with the standalone master",
        twin.procs,
    )
    wait_for(lambda: latest_manifest(twin.settings.bucket, GAME) is not None, 420, "a published model", twin.procs)

    processes.stop(twin.procs["clients"], timeout_s=90)
    stats = [json.loads(p.read_text()) for p in (twin.tmp / "clients").glob("*.json")]
    sent = sum(s["steps_acked"] for s in stats)
    assert sent > 0 and all(s["flushed"] for s in stats), stats
    with SqliteStore(twin.settings.sqlite_path) as store:
        running = {k: v for k, v in twin.procs.items() if k != "clients"}
        wait_for(lambda: store.count(GAME) >= sent, 120, f"{sent} transitions stored", running)
        assert store.count(GAME) == sent
    manifest = latest_manifest(twin.settings.bucket, GAME)
    assert manifest is not None and manifest.version >= 1
    assert f"joined Ray cluster at 127.0.0.1:{twin.ray_port}" in (twin.logs / "trainer.log").read_text()
