"""One identity per role, enforced: the whole loop on a moto server with IAM switched on, each stage running
under the credentials of its own policy from ``deploy/policies/``, and what a game client's role must never do,
tried with a client's credentials.

What moto enforces: every S3 action against the bucket and object ARNs, as AWS does; Kinesis actions, but
against the resource ``*`` (moto does not resolve a stream's ARN), so each Kinesis statement's resource is
widened to ``*`` here: its actions are still enforced. Not enforced: Amazon Keyspaces (``cassandra:*``; the
store here is SQLite), conditions, and the 403 AWS gives a reader without ``s3:ListBucket`` for a missing key
(moto answers 404).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws, processes
from rlplatform.ingest.dead_letters import DEAD_LETTER_PREFIX
from rlplatform.settings import Settings, SqliteSettings
from rlplatform_client import GameSpec, declare_game
from tests.support import client_stats, running, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "deploy" / "policies"
ROLES = ("bootstrap", "ingest", "trainer", "operator", "client")
ACCOUNT = "123456789012"  # moto's
GAME, OTHER_GAME, DECLARED = "CartPole-v1", "Pendulum-v1", "Racer"


def policy(role: str, settings: Settings) -> str:
    """``deploy/policies/{role}.json`` with its placeholders filled in, Kinesis resources widened for moto."""
    names = {
        "region": "us-east-1",
        "account": ACCOUNT,
        "stream": settings.stream_name,
        "bucket": settings.bucket,
        "keyspace": settings.cassandra.keyspace,
        "game": GAME,
    }
    text = (POLICIES / f"{role}.json").read_text()
    for name, value in names.items():
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, f"{role}.json has a placeholder this test does not fill"
    doc = json.loads(text)
    for statement in doc["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if all(a.startswith("kinesis:") for a in actions):
            statement["Resource"] = "*"
    return json.dumps(doc)


class Identities:
    """An IAM user per role (and an administrator for the test itself), made before enforcement starts."""

    def __init__(self, moto: aws.MotoServer, settings: Settings) -> None:
        self.moto = moto
        iam = boto3.client(
            "iam",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            aws_access_key_id=aws.EMULATOR_ENV["AWS_ACCESS_KEY_ID"],  # anything goes until enforcement starts
            aws_secret_access_key=aws.EMULATOR_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        self.keys: dict[str, dict[str, str]] = {}
        admin = json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        )
        for role in (*ROLES, "admin"):
            iam.create_user(UserName=role)
            document = admin if role == "admin" else policy(role, settings)
            iam.put_user_policy(UserName=role, PolicyName=role, PolicyDocument=document)
            key = iam.create_access_key(UserName=role)["AccessKey"]
            self.keys[role] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def enforce(self) -> None:
        """From now on every request is authenticated and authorised (moto's INITIAL_NO_AUTH_ACTION_COUNT = 0)."""
        request = urllib.request.Request(
            f"{self.moto.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def env(self, role: str, base: dict[str, str]) -> dict[str, str]:
        return {**base, **self.keys[role]}

    def client(self, role: str, service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id=self.keys[role]["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.keys[role]["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).client(service, endpoint_url=self.moto.endpoint)


@dataclass
class RolesStack:
    ids: Identities
    settings: Settings
    base_env: dict[str, str]
    tmp: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    job: IngestJob | None = None

    def check_alive(self) -> None:
        running(self.procs, self.tmp)()
        if self.job is not None:
            self.job.check_alive()

    def run(self, role: str, *argv: str) -> subprocess.CompletedProcess:
        cli = [sys.executable, "-m", "rlplatform"]
        env = self.ids.env(role, self.base_env)
        return subprocess.run([*cli, *argv], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesStack]:
    tmp = tmp_path_factory.mktemp("roles")
    settings = Settings(sqlite=SqliteSettings(path=tmp / "s.sqlite"))
    moto = aws.MotoServer.start()
    procs: dict[str, subprocess.Popen] = {}
    job = None
    try:
        ids = Identities(moto, settings)
        ids.enforce()
        base = {
            **moto.env(),
            "RLP_SQLITE_PATH": str(settings.sqlite.path),
            "RLP_INGEST_TRIGGER_SECONDS": "0.2",
        }
        roles = RolesStack(ids, settings, base, tmp, procs)
        training = tmp / "training.json"
        training.write_text(json.dumps({"publish_every_updates": 100, "hyperparameters": {"learning_starts": 300}}))
        for role, argv in (
            ("bootstrap", ["bootstrap"]),
            ("operator", ["games", "register", DECLARED, "--obs-size", "3", "--actions", "2"]),
            ("operator", ["games", "configure", DECLARED, "--retire"]),  # no data: no trainer for it
            ("operator", ["games", "register", GAME, "--gymnasium"]),
            ("operator", ["games", "configure", GAME, "--config", str(training)]),
        ):
            done = roles.run(role, *argv)
            assert done.returncode == 0, f"{role}: {done.stdout}{done.stderr}"
        cli = [sys.executable, "-m", "rlplatform"]
        job = roles.job = IngestJob(
            tmp / "ingest-ckpt", tmp / "metrics.jsonl", ids.env("ingest", base), tmp / "ingest.log"
        )
        job.start()
        stats_dir = tmp / "clients"
        commands = {
            "trainer": [*cli, "trainers", "--poll-seconds", "1"],  # the training service, on a local Ray
            "clients": [
                sys.executable, "-m", "rlplatform_client", "simulate", "--game", GAME, "--clients", "2",
                "--stream", settings.stream_name, "--bucket", settings.bucket, "--stats-dir", str(stats_dir),
                "--max-steps-per-second", "200", "--poll-seconds", "1",
            ],
        }  # fmt: skip
        for name, argv in commands.items():
            role = "client" if name == "clients" else name
            with (tmp / f"{name}.log").open("ab") as log:
                procs[name] = processes.spawn(argv, env=ids.env(role, base), stdout=log, stderr=subprocess.STDOUT)
        yield roles
    finally:
        for proc in procs.values():
            processes.stop(proc, timeout_s=60)
        if job is not None:
            job.stop()
        moto.stop()


def test_each_stage_does_its_whole_job_under_its_own_role(stack: RolesStack) -> None:
    ids, settings = stack.ids, stack.settings
    # Ingest stored what the clients sent, the trainer learned from it and published, clients loaded the model.
    wait_for(
        lambda: any(s.get("verified_loads", 0) >= 1 for s in client_stats(stack.tmp / "clients")),
        420,
        f"a client to load a published model (logs in {stack.tmp})",
        stack.check_alive,
    )
    # A record that breaks the contract, sent with a client's credentials, lands as a dead letter.
    ids.client("client", "kinesis").put_records(
        StreamName=settings.stream_name, Records=[{"Data": b"\x00 not a chunk", "PartitionKey": "poison"}]
    )
    admin_s3 = ids.client("admin", "s3")
    wait_for(
        lambda: admin_s3.list_objects_v2(Bucket=settings.bucket, Prefix=DEAD_LETTER_PREFIX).get("KeyCount", 0) > 0,
        120,
        "the poison record's dead letter",
        stack.check_alive,
    )
    # The operator reads them, and how each version played; and sees the game it declared.
    dlq = stack.run("operator", "dlq")
    assert dlq.returncode == 0 and "dead letters in s3://" in dlq.stdout, dlq.stdout + dlq.stderr
    models = stack.run("operator", "models", "list", "--game", GAME)
    assert models.returncode == 0 and "DQN" in models.stdout, models.stdout + models.stderr
    # The operator moves the release by hand (signed with the studio's key, as the trainer signs).
    pinned = stack.run("operator", "models", "pin", "--game", GAME, "--why", "release freeze")
    assert pinned.returncode == 0 and "(pinned)" in pinned.stdout, pinned.stdout + pinned.stderr
    declared = stack.run("operator", "games", "list")
    assert declared.returncode == 0 and DECLARED in declared.stdout, declared.stdout + declared.stderr
    # ...and what the training service says of each game's trainer.
    shown = stack.run("operator", "games", "show", GAME)
    trainer = json.loads(shown.stdout)["trainer"]
    assert trainer["state"] == "running" and trainer["version"] >= 1, shown.stdout + shown.stderr
    assert json.loads(stack.run("operator", "games", "show", DECLARED).stdout)["trainer"]["state"] == "retired"


def forbidden_to_a_client(s3: Any, kinesis: Any, bucket: str, stream: str) -> dict:
    """Everything a game client's credentials must not do, by what it would let a player do."""
    version = "v000099"
    put = lambda key: lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"{}")  # noqa: E731
    get = lambda key: lambda: s3.get_object(Bucket=bucket, Key=key)  # noqa: E731
    return {
        "write a model": put(f"models/{GAME}/{version}/model.onnx"),
        "write a manifest": put(f"models/{GAME}/{version}/manifest.json"),
        "write the pointer": put(f"models/{GAME}/latest.json"),
        "write the release state": put(f"models/{GAME}/release.json"),
        "write a release history entry": put(f"models/{GAME}/releases/00000099.json"),
        "write a catalog entry": put(f"games/{GAME}/spec.json"),
        "declare a game": lambda: declare_game(bucket, GameSpec("Junk", 2, 2), s3=s3),
        "write a dead letter": put(f"{DEAD_LETTER_PREFIX}forged.jsonl"),
        "read another game's pointer": get(f"models/{OTHER_GAME}/latest.json"),
        "read another game's catalog entry": get(f"games/{DECLARED}/spec.json"),
        "read dead letters": get(f"{DEAD_LETTER_PREFIX}any.jsonl"),
        "read the trainer's checkpoint": get(f"checkpoints/{GAME}/trainer.tar.gz"),
        "read the trainer's status": get(f"trainers/{GAME}/status.json"),
        "write a training document": put(f"games/{GAME}/training.json"),
        "list the bucket": lambda: s3.list_objects_v2(Bucket=bucket),
        "read the stream": lambda: kinesis.list_shards(StreamName=stream),
        "create a stream": lambda: kinesis.create_stream(StreamName="junk", ShardCount=1),
    }


def test_a_client_role_is_refused_everything_but_sending_and_reading_its_games_models(stack: RolesStack) -> None:
    settings = stack.settings
    s3, kinesis = stack.ids.client("client", "s3"), stack.ids.client("client", "kinesis")
    allowed = []
    for what, attempt in forbidden_to_a_client(s3, kinesis, settings.bucket, settings.stream_name).items():
        try:
            attempt()
        except ClientError as exc:
            code = exc.response["Error"].get("Code", "")
            assert code == "AccessDenied" or "AccessDenied" in str(exc), f"{what}: {exc}"
            continue
        allowed.append(what)
    assert not allowed, f"a game client's role may {allowed}"
