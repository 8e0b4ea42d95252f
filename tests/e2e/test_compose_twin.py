"""The compose topology without Docker: the same commands the compose services run, as local processes.

A real Spark standalone Master and Worker (pyspark's ``spark-class``), a real ``ray start --head``,
a real Cassandra 5.0.2 node (``tests/cassandra_node.py``), LocalStack 4.4.0 with its kinesis-mock and the
project's READY hook (``tests/localstack_node.py``), the ingest job submitted to that master, the trainer's
learner on that Ray head, and the simulated clients.
Every command line comes from docker-compose.yml; only hosts, ports and paths are rewritten. LocalStack, Spark,
ingest and the clients listen on 127.0.0.1 only (Ray's servers cannot be confined to it), and nothing is left behind
(processes, Ray's pointer to its current cluster).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from rlplatform.infra import processes
from rlplatform.infra.aws import free_port
from rlplatform.registry import keys
from rlplatform.registry.models import latest_manifest
from rlplatform.settings import Settings
from rlplatform.store import open_store
from tests.localstack_node import LocalStackNode
from tests.spark_cluster import http_json, spark_env
from tests.support import client_stats, port_open, running, stored_keys, stream_transitions, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
VENV_BIN = Path(sys.executable).parent
GAME = "CartPole-v1"
# Declared by hand with a training document no operator command would store (an unknown algorithm).
BROKEN_GAME = "Broken-v0"
# A second simulated game, for two trainers at once.
SECOND_GAME = "Acrobot-v1"
# From a worker node's SIGKILL to its trainer's next publish from another node (measured: 19 and 46 s on 2 cores).
RESUME_BOUND_S = 180
TRAINING = {"publish_every_updates": 100, "hyperparameters": {"learning_starts": 300}}


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


def listening_sockets() -> dict[str, str]:
    """Socket inode -> ``ip:port`` of every listening TCP socket on the machine (``/proc/net/tcp{,6}``)."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = f"{socket.inet_ntop(family, raw)}:{int(port, 16)}"
    return found


class Twin:
    def __init__(self, tmp: Path, store: Settings, aws: LocalStackNode, keyring: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.spark_port, self.spark_ui, self.worker_ui = free_port(), free_port(), free_port()
        self.ray_port, self.dashboard_port = free_port(), free_port()
        self.settings = store
        self.ports = {7077: self.spark_port, 8080: self.spark_ui, 6379: self.ray_port, 8265: self.dashboard_port}
        # The compose secret and the clients' mount of the keyring (keys/), as the session's keyring.
        self.paths = {
            "/run/secrets/model-signing-key": str(keyring / keys.SIGNING_KEY),
            "/etc/rlplatform/trusted.pem": str(keyring / keys.TRUSTED_KEYS),
        }
        self.aws = aws
        self.master_ui = f"http://127.0.0.1:{self.spark_ui}/json/"

    def env(self) -> dict[str, str]:
        return {
            **self.aws.env(),
            **spark_env(),
            # Ray's token auth as docker-compose.yml sets it, with this test's own secret: neither the head nor
            # the trainer depends on ~/.ray/auth_token (Ray's default mode and token follow that file).
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.ray_token,
            "RLP_STORE": "cassandra",
            "RLP_CASSANDRA_CONTACT_POINTS": self.settings.cassandra.contact_points,
            "RLP_CASSANDRA_PORT": str(self.settings.cassandra.port),
            "RLP_CASSANDRA_KEYSPACE": self.settings.cassandra.keyspace,
            "RLP_SIGNING_KEY_FILE": self.paths["/run/secrets/model-signing-key"],
        }

    def start(self, name: str, service: str, extra: list[str] = ()) -> list[str]:
        argv = [*rewrite(compose_command(service), self.ports, self.paths), *extra]
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        self.procs[name] = processes.spawn(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return argv

    def operator(self, *args: str) -> subprocess.CompletedProcess:
        """``docker compose run --rm operator ARGS``: the operator service's entrypoint with these arguments."""
        service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["operator"]
        argv = [str(VENV_BIN / service["entrypoint"][0]), *args]
        return subprocess.run(argv, env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=120)

    def listeners(self, procs: Collection[subprocess.Popen]) -> list[str]:
        """Listening sockets of these processes (with their children), as ``pid ip:port comm``."""
        pids = {pid for proc in procs for pid in processes.session_members(proc.pid)}
        sockets = listening_sockets()
        found = []
        for pid in pids:
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.startswith("socket:[") and target[8:-1] in sockets:
                            comm = Path(f"/proc/{pid}/comm").read_text().strip()
                            found.append(f"{pid} {sockets[target[8:-1]]} {comm}")
        return found

    def ray_state(self, kind: str, must: bool = True) -> list[dict]:
        """``ray list KIND`` (Ray's state API) against the head's dashboard, as JSON; [] when the dashboard does not
        answer yet, unless it ``must``."""
        argv = [str(VENV_BIN / "ray"), "list", kind, "--format", "json", "--limit", "1000"]
        argv += ["--address", f"http://127.0.0.1:{self.dashboard_port}"]
        done = subprocess.run(argv, env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 or not must, done.stderr
        return json.loads(done.stdout) if done.returncode == 0 else []

    def ray_nodes_alive(self) -> int:
        return sum(node["state"] == "ALIVE" for node in self.ray_state("nodes", must=False))

    def stop(self) -> None:
        for name in reversed(list(self.procs)):  # clients first, the heads last
            processes.stop(self.procs[name], timeout_s=60)
        self.aws.restore_env()
        # `ray start` names its head in a file that a later ray.init() without an address would wait on.
        if RAY_CURRENT_CLUSTER.exists() and RAY_CURRENT_CLUSTER.read_text().strip().endswith(f":{self.ray_port}"):
            RAY_CURRENT_CLUSTER.unlink()


@pytest.fixture
def twin(
    tmp_path: Path, cassandra_settings: Settings, localstack: LocalStackNode, model_keyring: Path
) -> Iterator[Twin]:
    keyspace = f"twin_{uuid.uuid4().hex[:12]}"  # the contract tests truncate the session keyspace's tables
    cassandra = cassandra_settings.cassandra.model_copy(update={"keyspace": keyspace})
    t = Twin(tmp_path, cassandra_settings.model_copy(update={"cassandra": cassandra}), localstack, model_keyring)
    # A fresh Ray secret per test, as .env holds one for compose (Twin.env hands it to every process). The head
    # binds every interface, so it is a real secret, from the same source as secrets.token_hex(32).
    t.ray_token = os.urandom(32).hex()
    try:
        # No bootstrap here: LocalStack's READY hook made the stream and bucket, as in compose.
        assert localstack.has_resources(t.settings.stream_name, t.settings.bucket)
        t.aws.apply_env()
        yield t
    finally:
        t.stop()
    for name, proc in t.procs.items():
        assert proc.poll() is not None, f"{name} still running"
        assert not processes.session_members(proc.pid), f"{name} left processes behind"
    named = RAY_CURRENT_CLUSTER.read_text().strip() if RAY_CURRENT_CLUSTER.exists() else ""
    assert not named.endswith(f":{t.ray_port}"), f"{RAY_CURRENT_CLUSTER} still names the stopped head {named}"


def start_stack(twin: Twin, ray_workers: int = 0) -> None:
    """Spark master and worker, a Ray head and ``ray_workers`` Ray worker nodes, the ingest job on that master and
    the training service on that head, as compose starts them (``--scale ray-worker=N``)."""
    alive = running(twin.procs, twin.logs)  # procs: every stage started so far
    twin.start("spark-master", "spark-master")
    # Not --node-ip-address=127.0.0.1: a driver joining 127.0.0.1:port is sent to the machine's address by Ray
    # (it canonicalizes loopback), and the trainer then hung before its first update (seen in CI).
    twin.start("ray-head", "ray-head")
    wait_for(lambda: port_open(twin.spark_port), 120, "the Spark master", alive)
    twin.start("spark-worker", "spark-worker", ["--webui-port", str(twin.worker_ui)])
    wait_for(lambda: (m := http_json(twin.master_ui)) and m.get("aliveworkers", 0) >= 1, 120, "a Spark worker", alive)
    wait_for(lambda: port_open(twin.ray_port), 120, "the Ray head", alive)
    for i in range(1, ray_workers + 1):
        # One machine, several Ray nodes: the ports a container would have to itself are given free ones, and a
        # custom resource names the node, so a test can tell which one to kill. One at a time: nodes on one
        # machine name their sockets after those they find, and two starting at once pick the same name.
        ports = ("--node-manager-port", "--dashboard-agent-listen-port", "--metrics-export-port")
        extra = [x for flag in ports for x in (flag, str(free_port()))]
        twin.start(f"ray-worker-{i}", "ray-worker", [*extra, "--resources", json.dumps({f"ray-worker-{i}": 1})])
        wait_for(lambda i=i: twin.ray_nodes_alive() == i + 1, 120, f"Ray node ray-worker-{i}", alive)

    ingest_argv = twin.start("ingest", "ingest")
    assert f"spark://127.0.0.1:{twin.spark_port}" in ingest_argv
    trainer_argv = twin.start("trainer", "trainer", ["--poll-seconds", "1"])
    assert f"127.0.0.1:{twin.ray_port}" in trainer_argv
    wait_for(lambda: "training service attached to Ray" in (twin.logs / "trainer.log").read_text(), 120, "Ray", alive)


def declare(twin: Twin, game: str) -> None:
    """Declare a gymnasium game with the test's training document, as an operator would while the service runs."""
    config = twin.tmp / "training.yaml"
    config.write_text(yaml.safe_dump(TRAINING))
    for args in (("games", "register", game, "--gymnasium"), ("games", "configure", game, "--config", str(config))):
        done = twin.operator(*args)
        assert done.returncode == 0, done.stderr


def test_compose_topology_runs_as_local_processes(twin: Twin) -> None:
    alive, stats_dir = running(twin.procs, twin.logs), twin.tmp / "clients"  # procs: every stage started so far
    start_stack(twin)
    declare(twin, GAME)  # a game declared while the service runs gets a trainer without a restart
    declare_broken_game(twin)
    twin.start("clients", "clients", ["--stats-dir", str(stats_dir)])

    apps = lambda: (http_json(twin.master_ui) or {}).get("activeapps", [])  # noqa: E731
    wait_for(
        lambda: any(a.get("name") == "rlplatform-ingest" for a in apps()),
        180,
        "the ingest job registered with the standalone master",
        alive,
    )
    wait_for(lambda: latest_manifest(twin.settings.bucket, GAME) is not None, 420, "a published model", alive)
    wait_for(lambda: any(s.get("verified_loads", 0) >= 1 for s in client_stats(stats_dir)), 120, "a client to load it")

    # LocalStack (GATEWAY_LISTEN, kinesis-mock's shim), Spark (SPARK_LOCAL_IP), ingest and the clients listen on
    # loopback only. Ray's gRPC servers (GCS, raylet, workers, and the trainer's own core worker) bind every
    # interface.
    loopback = ("127.", "::1:", "::ffff:127.")
    ours = [proc for name, proc in twin.procs.items() if name not in ("ray-head", "trainer")] + [twin.aws.process]
    exposed = [entry for entry in twin.listeners(ours) if not entry.split()[1].startswith(loopback)]
    assert not exposed, f"listening beyond loopback: {exposed}"
    processes.stop(twin.procs["clients"], timeout_s=90)
    stats = client_stats(stats_dir)
    sent = sum(s["steps_acked"] for s in stats)
    assert sent > 0 and all(s["flushed"] for s in stats), stats
    with open_store(twin.settings) as store:
        servers = running({k: v for k, v in twin.procs.items() if k != "clients"}, twin.logs)
        wait_for(lambda: len(stored_keys(store, GAME)) >= sent, 120, f"{sent} transitions stored", servers)
        keys = stored_keys(store, GAME)
        assert store.count(GAME) == sent
    # Key by key: every step in the stream is stored once, and nothing else is.
    assert len(keys) == len(set(keys)) == sent
    assert set(keys) == set(stream_transitions(twin.settings.stream_name))
    manifest = latest_manifest(twin.settings.bucket, GAME)
    assert manifest is not None and manifest.version >= 1
    service_log = (twin.logs / "trainer.log").read_text()
    assert f"training service attached to Ray (127.0.0.1:{twin.ray_port})" in service_log
    # The broken game's error is in the service's log and in `games show`; the other game trained regardless.
    assert f"{BROKEN_GAME}: not training it:" in service_log and "'PPO9'" in service_log
    shown = json.loads(twin.operator("games", "show", BROKEN_GAME).stdout)
    assert shown["trainer"]["state"] == "config_error" and "algorithm: unknown 'PPO9'" in shown["trainer"]["error"]
    shown = json.loads(twin.operator("games", "show", GAME).stdout)
    assert shown["training"] == TRAINING and shown["trainer"]["state"] == "running", shown
    assert shown["trainer"]["version"] >= 1 and shown["trainer"]["node_id"], shown


def declare_broken_game(twin: Twin) -> None:
    """A declared game whose training document names an unknown algorithm: written to the bucket by hand, since
    `games configure` refuses it (checked here too: exit 1, the error named, nothing stored)."""
    done = twin.operator("games", "register", BROKEN_GAME, "--obs-size", "3", "--actions", "2")
    assert done.returncode == 0, done.stderr
    bad = twin.tmp / "bad.json"
    bad.write_text(json.dumps({"algorithm": "PPO9"}))
    refused = twin.operator("games", "configure", BROKEN_GAME, "--config", str(bad))
    assert refused.returncode == 1 and "algorithm: unknown 'PPO9'" in refused.stderr, refused.stderr
    s3 = boto3.client("s3")
    s3.put_object(Bucket=twin.settings.bucket, Key=f"games/{BROKEN_GAME}/training.json", Body=bad.read_bytes())


def test_trainers_spread_over_ray_nodes_and_one_survives_losing_its_node(twin: Twin, record_property) -> None:
    """Two games trained at once, their trainers placed on two nodes by Ray; a worker node killed with SIGKILL:
    its trainer comes back on another node from its bucket checkpoint and publishes again."""
    start_stack(twin, ray_workers=2)
    alive = running(twin.procs, twin.logs)
    for game in (GAME, SECOND_GAME):
        declare(twin, game)
        twin.start(f"clients-{game}", "clients", ["--game", game, "--stats-dir", str(twin.tmp / game)])
    bucket = twin.settings.bucket
    wait_for(lambda: all(latest_manifest(bucket, g) for g in (GAME, SECOND_GAME)), 420, "both games published", alive)

    placed = trainer_nodes(twin)
    assert set(placed) == {GAME, SECOND_GAME} and len(set(placed.values())) == 2, placed  # SPREAD: one per node
    names = {n["node_id"]: next((r for r in n["resources_total"] if r.startswith("ray-worker-")), "ray-head")
             for n in twin.ray_state("nodes")}  # fmt: skip
    victim = next(g for g in (GAME, SECOND_GAME) if names[placed[g]] != "ray-head")  # on a worker at least one is
    node = names[placed[victim]]
    before = latest_manifest(bucket, victim)
    other_before = latest_manifest(bucket, SECOND_GAME if victim == GAME else GAME)
    processes.kill_session(twin.procs[node].pid)  # the node and everything on it, at once
    killed_at, killed_at_unix = time.monotonic(), time.time()

    others = running({name: proc for name, proc in twin.procs.items() if name != node}, twin.logs)
    # A model made after the kill (one the trainer was uploading as it died may land just before that).
    published_again = lambda: latest_manifest(bucket, victim).created_at_unix > killed_at_unix  # noqa: E731
    wait_for(published_again, RESUME_BOUND_S, f"{victim} to publish again from another node", others)
    record_property("resumed_and_published_s", round(time.monotonic() - killed_at, 1))
    after = latest_manifest(bucket, victim)
    # Resumed from its checkpoint, not from scratch: versions and learner steps go on from the published ones.
    assert after.version > before.version and after.learner_step > before.learner_step, (before, after)
    assert trainer_nodes(twin).get(victim) not in (placed[victim], None)
    shown = json.loads(twin.operator("games", "show", victim).stdout)["trainer"]
    # Until Ray declares the node dead (health checks, ~30 s) a restart may still be placed on it and fail too.
    assert 1 <= shown["restarts"] <= 3 and shown["state"] == "running", shown
    # The other game's trainer kept its node and kept publishing.
    other = SECOND_GAME if victim == GAME else GAME
    wait_for(lambda: latest_manifest(bucket, other).version > other_before.version, 120, f"{other} to go on", others)
    assert trainer_nodes(twin).get(other) == placed[other]


def trainer_nodes(twin: Twin) -> dict[str, str]:
    """Game -> the node id of its live trainer actor, from Ray's state API."""
    actors = twin.ray_state("actors")
    return {
        a["name"].removeprefix("trainer-"): a["node_id"]
        for a in actors
        if a["class_name"] == "TrainerActor" and a["state"] == "ALIVE"
    }
