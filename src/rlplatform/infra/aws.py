"""boto3 clients, the idempotent bootstrap of stream and bucket, and the embedded moto server.

Endpoints come only from the SDK's standard variables, so the same bootstrap serves moto,
LocalStack and real AWS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from rlplatform.infra import processes
from rlplatform.infra.bootstrap import bootstrap as create_resources
from rlplatform.settings import Settings
from rlplatform_client.models import is_missing

_RETRIES = Config(retries={"max_attempts": 10, "mode": "adaptive"})
# For a command a person waits on: an endpoint that is down is reported within seconds, not after 10 attempts.
_FAIL_FAST = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30)
_config = _RETRIES
# Emulators accept any credentials; these are given only to processes pointed at the embedded moto.
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


_USER_AWS_SETTINGS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")
# The SDK's variables that decide which AWS endpoint and account a client talks to.
_AWS_CLIENT_ENV = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def client_env() -> dict[str, str]:
    """This process's AWS endpoint, region and static credentials, for the work it hands to other nodes (Spark
    executors, Ray actors): they must reach the same services as the process that plans them, whatever their own
    environment. Unset ones stay the nodes' own (on AWS, an instance role)."""
    return {k: v for k, v in os.environ.items() if v and (k.startswith("AWS_ENDPOINT_URL") or k in _AWS_CLIENT_ENV)}


# (service) -> (what the client was made for, the client); see ``_client``.
_CLIENTS: dict[str, tuple[tuple, object]] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(service: str):
    """This process's client of ``service`` for the SDK variables and retry policy in force now, made once and
    shared: a client costs ~5 ms of CPU and a new connection pool to make (three quarters of a dashboard
    refresh's CPU when each read made its own), and boto3's clients are thread safe where making them is not. Another
    endpoint, region, credentials or policy (an emulator's ``apply_env``, ``fail_fast``) or a forked process
    gets a new one."""
    made_for = (os.getpid(), _config, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    with _CLIENTS_LOCK:
        cached = _CLIENTS.get(service)
        if cached is None or cached[0] != made_for:
            cached = _CLIENTS[service] = (made_for, boto3.client(service, config=_config))
        return cached[1]


def kinesis_client():
    return _client("kinesis")


def s3_client():
    return _client("s3")


def object_or_none(bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when it does not exist; any other S3 error raises."""
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise


def fail_fast() -> None:
    """Clients made from now on in this process give up on an unreachable endpoint after two attempts (the
    operator commands: a person is waiting); the stages keep the patient default."""
    global _config
    _config = _FAIL_FAST


def bootstrap(settings: Settings) -> None:
    """Create the stream and the bucket the settings name, if missing (idempotent)."""
    create_resources(settings.stream_name, settings.shard_count, settings.bucket, kinesis_client(), s3_client())


def endpoint_overrides() -> dict[str, str]:
    """The SDK endpoint variables that are set (they must be empty for the aws profile)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL") and v}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """An AWS emulator on 127.0.0.1 (moto here, LocalStack in the tests): the environment that points the
    SDK at it, for child processes (``env``) or for this process until ``restore_env`` (``apply_env``)."""

    # This process's environment before ``apply_env``; ``restore_env`` puts it back.
    _saved_env: dict[str, str] | None = None

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this emulator and nothing else.

        The user's own AWS settings go: a per-service endpoint (``AWS_ENDPOINT_URL_S3``, ...) or a profile
        (whose config file may name an endpoint) would otherwise send the embedded stack's calls elsewhere.
        """
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if not k.startswith("AWS_ENDPOINT_URL_") and k not in _USER_AWS_SETTINGS
        }
        return {
            **env,
            **EMULATOR_ENV,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def apply_env(self) -> None:
        """Point this process's AWS SDK at the emulator (see ``env``) until ``restore_env``."""
        env = self.env()
        if self._saved_env is None:
            self._saved_env = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)

    def restore_env(self) -> None:
        """Undo ``apply_env``, so nothing in this process keeps pointing at a stopped emulator."""
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None


@dataclass
class MotoServer(Emulator):
    """A moto server in its own process on 127.0.0.1, so clients in other processes can reach it."""

    port: int
    process: subprocess.Popen
    _saved_env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, timeout_s: float = 30.0) -> MotoServer:
        port = free_port()
        process = processes.spawn(
            [sys.executable, "-m", "rlplatform.infra.moto_server", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = cls(port, process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {process.returncode} before it was ready")
            try:
                urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1).close()
                return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise TimeoutError(f"moto server on port {port} not ready after {timeout_s} s")

    def stop(self) -> None:
        """Stop the server and undo ``apply_env``."""
        processes.stop(self.process, timeout_s=10)
        self.restore_env()
