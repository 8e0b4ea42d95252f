"""LocalStack on this machine, without Docker, for the tests and for developers.

The version ``docker-compose.yml`` pins, from PyPI (``localstack-core[runtime]``), in a virtualenv of its own
(``.cache/localstack/venv``, pinned by ``compose/localstack/constraints.txt``, so its pins never meet the
platform's), started as its image starts it: ``python -m localstack.runtime.main`` with ``SERVICES=kinesis,s3``.
Kinesis is kinesis-mock (npm ``kinesis-local``), which LocalStack installs itself (``make localstack`` runs
its package manager once, so no test waits on npm); S3 runs in-process. The project's READY hook
(``compose/localstack/ready.d``) runs as LocalStack runs it, from ``<FILESYSTEM_ROOT>/etc/localstack/init``.

Host-only settings, each for a reason: ``OVERRIDE_IN_DOCKER=0`` (this machine looks like a container to
LocalStack, which would then use /usr/lib and /var/lib), ``GATEWAY_SERVER=hypercorn`` (the default twisted
server needs ``service_identity``), ``GATEWAY_LISTEN=127.0.0.1:<port>`` and a ``net.Server.listen`` shim for
kinesis-mock (``compose/localstack/host/loopback.cjs``): nothing listens beyond loopback.

``python -m tests.localstack_node [--port 4566]`` (``make localstack``) runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from botocore.client import BaseClient
from localstack_client.session import Session

from rlplatform.infra import processes
from rlplatform.infra.aws import Emulator, free_port
from tests.support import serve_until_ctrl_c

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".cache" / "localstack"
PYTHON = HOME / "venv" / "bin" / "python"
# Where `make localstack` had LocalStack's package manager put kinesis-mock (its "static libs").
PACKAGES = HOME / "root" / "usr" / "lib" / "localstack"
HOOKS = ROOT / "compose" / "localstack" / "ready.d"
LOOPBACK_SHIM = ROOT / "compose" / "localstack" / "host" / "loopback.cjs"
BOOTSTRAP_PY = ROOT / "src" / "rlplatform" / "infra" / "bootstrap.py"
START_TIMEOUT_S = 120.0


def missing() -> str | None:
    """Why LocalStack cannot start here (no venv, no kinesis-mock, no node), or None."""
    if not PYTHON.exists():
        return f"no LocalStack virtualenv at {PYTHON.parent.parent} (make localstack)"
    if not any(PACKAGES.glob("kinesis-local/*/node_modules/kinesis-local")):
        return f"kinesis-mock is not installed under {PACKAGES} (make localstack)"
    if shutil.which("node") is None:
        return "no node on PATH (kinesis-mock runs on Node.js)"
    return None


class LocalStackNode(Emulator):
    """One LocalStack: ``start`` returns once its READY hooks succeeded; ``stop`` ends it and what it started.

    ``hook_env`` reaches the READY hook (``RLP_STREAM_NAME``, ``RLP_SHARD_COUNT``, ``RLP_BUCKET``), as the
    compose service's environment does.
    """

    def __init__(self, directory: Path, port: int | None = None, hook_env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.hook_env = dict(hook_env or {})
        self.process: subprocess.Popen | None = None
        self._saved_env = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "localstack.log"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalStackNode:
        why = missing()
        if why is not None:
            raise RuntimeError(f"cannot start LocalStack: {why}")
        with self.log.open("ab") as out:
            self.process = processes.spawn(
                [str(PYTHON), "-m", "localstack.runtime.main"], env=self._env(), stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """SIGTERM (LocalStack stops its services, kinesis-mock with them), SIGKILL after 30 s; undo ``apply_env``."""
        if self.process is not None:
            processes.stop(self.process, timeout_s=30)
        self.restore_env()

    def __enter__(self) -> LocalStackNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        fs_root = self._filesystem_root()
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.directory),
            "SERVICES": "kinesis,s3",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_SERVER": "hypercorn",
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(fs_root),
            "XDG_CACHE_HOME": str(self.directory / "cache"),
            "npm_config_cache": str(HOME / "npm"),
            # No DNS server (it would bind port 53), no analytics, no certificate download: all need the internet.
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "KINESIS_PERSISTENCE": "0",
            "NODE_OPTIONS": f"--require {LOOPBACK_SHIM}",
            # The hook imports rlplatform's bootstrap module, which compose mounts at /opt/rlplatform.
            "PYTHONPATH": str(self._bootstrap_dir()),
            "AWS_DEFAULT_REGION": "us-east-1",
            **self.hook_env,
        }

    def _filesystem_root(self) -> Path:
        """LocalStack's filesystem for this node: its own state, the shared packages, the project's hooks."""
        fs_root = self.directory / "filesystem"
        (fs_root / "usr" / "lib").mkdir(parents=True, exist_ok=True)
        (fs_root / "etc" / "localstack" / "init").mkdir(parents=True, exist_ok=True)
        for link, target in ((fs_root / "usr" / "lib" / "localstack", PACKAGES),
                             (fs_root / "etc" / "localstack" / "init" / "ready.d", HOOKS)):  # fmt: skip
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
        return fs_root

    def _bootstrap_dir(self) -> Path:
        """A directory holding only ``bootstrap.py``: the whole package on LocalStack's path could shadow its
        modules (``aws``, ``settings``, ...)."""
        directory = self.directory / "opt-rlplatform"
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "bootstrap.py").is_symlink():
            (directory / "bootstrap.py").symlink_to(BOOTSTRAP_PY)
        return directory

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every READY hook succeeded (what the compose healthcheck asks), a hook failed, LocalStack
        exited, or the timeout."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"LocalStack exited with code {self.process.returncode}; see {self.log}")
            state = self.init_state()
            if state is not None and state["completed"]:
                failed = [s["name"] for s in state["scripts"] if s["state"] != "SUCCESSFUL"]
                if failed or not state["scripts"]:
                    self.stop()
                    raise RuntimeError(f"LocalStack's READY hooks failed {failed or '(none ran)'}; see {self.log}")
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"LocalStack was not ready within {timeout_s:g} s; see {self.log}")
            time.sleep(0.5)

    def client(self, service: str) -> BaseClient:
        """A boto3 client aimed at this LocalStack (its edge port, LocalStack's test credentials)."""
        return Session(localstack_host=f"127.0.0.1:{self.port}").client(service)

    def has_resources(self, stream: str, bucket: str) -> bool:
        """The READY hook's work, seen from outside: the stream is ACTIVE and the bucket exists."""
        summary = self.client("kinesis").describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        self.client("s3").head_bucket(Bucket=bucket)
        return summary["StreamStatus"] == "ACTIVE"

    def init_state(self) -> dict | None:
        """LocalStack's report on its READY hooks, or None while its gateway does not answer."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/_localstack/init/ready", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Run LocalStack (Kinesis, S3) on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--dir", type=Path, default=None, help="state and logs (default: a temporary directory)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="rlp-localstack-"))
    hook_env = {k: v for k, v in os.environ.items() if k in ("RLP_STREAM_NAME", "RLP_SHARD_COUNT", "RLP_BUCKET")}
    node = LocalStackNode(directory, args.port, hook_env)
    serve_until_ctrl_c(node, lambda n: f"LocalStack on {n.endpoint} (log {n.log})")


if __name__ == "__main__":
    main()
