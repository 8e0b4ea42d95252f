"""A real single-node Apache Cassandra on this machine, without Docker, for the tests and for developers.

The jars are ``cassandra-all`` (the version ``docker-compose.yml`` pins) and its runtime dependencies,
fetched by Maven from ``compose/cassandra/pom.xml`` into ``.cache/cassandra/lib`` (``make cassandra-jars``).
The node runs on Java 17 with a 512 MiB heap, listens on 127.0.0.1 only (free ports unless given), keeps
its data in a directory of its own and stops on SIGTERM. Flags: Cassandra 5.0's ``conf/jvm17-server.options``
plus test-node settings that cut its start from ~90 s to ~13 s on 2 cores (``unsafesystem``: schema writes
not synced, so a kill -9 may lose schema; ``TieredStopAtLevel=1``: the fast JIT only).

``python -m tests.cassandra_node [--port 9042] [--dir DIR]`` (``make cassandra``) runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from rlplatform.infra import processes
from rlplatform.infra.aws import free_port
from tests.support import port_open, serve_until_ctrl_c

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "compose" / "cassandra" / "pom.xml"
LOGBACK = ROOT / "compose" / "cassandra" / "logback.xml"
JARS = ROOT / ".cache" / "cassandra" / "lib"
START_TIMEOUT_S = 240.0

# Cassandra 5.0 conf/jvm17-server.options: the JDK internals it reaches into on Java 17.
_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
]
_OPENS = [
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
]


def missing() -> str | None:
    """Why a node cannot start here (no java, no fetched jars), or None."""
    if shutil.which("java") is None:
        return "no java on PATH"
    if not any(JARS.glob("cassandra-all-*.jar")):
        return f"no Cassandra jars in {JARS} (make cassandra-jars)"
    return None


class CassandraNode:
    """One node: ``start`` returns once it accepts CQL connections on ``port``; ``stop`` ends it."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.storage_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.directory / "logs" / "system.log"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> CassandraNode:
        why = missing()
        if why is not None:
            raise RuntimeError(f"cannot start Cassandra: {why}")
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        config = self.directory / "cassandra.yaml"
        config.write_text(yaml.safe_dump(self._config()))
        with (self.directory / "logs" / "stdout.log").open("ab") as out:
            self.process = processes.spawn(self._argv(config), stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """SIGTERM (Cassandra flushes and exits with 143), SIGKILL after 60 s."""
        if self.process is not None:
            processes.stop(self.process, timeout_s=60)

    def __enter__(self) -> CassandraNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self) -> dict:
        data = self.directory / "data"
        return {
            "cluster_name": "rlplatform-test",
            "num_tokens": 1,
            "initial_token": 0,
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch": "SimpleSnitch",
            "seed_provider": [
                {
                    "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                    "parameters": [{"seeds": f"127.0.0.1:{self.storage_port}"}],
                }
            ],
            "listen_address": "127.0.0.1",
            "rpc_address": "127.0.0.1",
            "storage_port": self.storage_port,
            "native_transport_port": self.port,
            "start_native_transport": True,
            "data_file_directories": [str(data / "data")],
            "commitlog_directory": str(data / "commitlog"),
            "saved_caches_directory": str(data / "saved_caches"),
            "hints_directory": str(data / "hints"),
            "cdc_raw_directory": str(data / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "commitlog_segment_size": "32MiB",
            "disk_failure_policy": "stop",
            "commit_failure_policy": "stop",
            "authenticator": "AllowAllAuthenticator",
            "authorizer": "AllowAllAuthorizer",
            "role_manager": "CassandraRoleManager",
            "network_authorizer": "AllowAllNetworkAuthorizer",
            "concurrent_reads": 8,
            "concurrent_writes": 8,
            "concurrent_counter_writes": 8,
            "concurrent_compactors": 1,
            "memtable_allocation_type": "heap_buffers",
            "key_cache_size": "16MiB",
            "counter_cache_size": "0MiB",
            "prepared_statements_cache_size": "8MiB",
        }

    def _argv(self, config: Path) -> list[str]:
        logs = self.directory / "logs"
        jamm = sorted(JARS.glob("jamm-*.jar"))
        return [
            "java",
            "-Xms512m",
            "-Xmx512m",
            "-Xmn128m",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:MaxTenuringThreshold=1",
            "-XX:G1HeapRegionSize=16m",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:+PerfDisableSharedMem",
            "-XX:CICompilerCount=2",
            "-XX:TieredStopAtLevel=1",
            "-XX:MaxDirectMemorySize=256m",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            *[arg for module in _EXPORTS for arg in ("--add-exports", f"{module}=ALL-UNNAMED")],
            *[arg for module in _OPENS for arg in ("--add-opens", f"{module}=ALL-UNNAMED")],
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11",
            *[f"-javaagent:{jar}" for jar in jamm[:1]],
            f"-Dcassandra.config=file://{config}",
            f"-Dlogback.configurationFile=file://{LOGBACK}",
            f"-Dcassandra.logdir={logs}",
            f"-Dcassandra.storagedir={self.directory / 'data'}",
            f"-Dcassandra.triggers_dir={self.directory / 'triggers'}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=0",
            "-Dcassandra.memtable_row_overhead_computation_step=100",
            "-Dcassandra.unsafesystem=true",
            "-Dcassandra.shutdown_announce_in_ms=0",
            "-cp",
            f"{JARS}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _wait_ready(self, timeout_s: float) -> None:
        """Until a CQL session connects (the port opens ~1 s before that), the JVM dies, or the timeout."""
        from cassandra.cluster import Cluster, NoHostAvailable

        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Cassandra exited with code {self.process.returncode}; see {self.log}")
            if port_open(self.port):
                cluster = Cluster(["127.0.0.1"], port=self.port, connect_timeout=5)
                try:
                    cluster.connect().execute("SELECT release_version FROM system.local")
                    return
                except NoHostAvailable:
                    pass
                finally:
                    cluster.shutdown()
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Cassandra did not accept CQL within {timeout_s:g} s; see {self.log}")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a single-node Cassandra on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--dir", type=Path, default=None, help="data and logs (default: a temporary directory)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="rlp-cassandra-"))
    node = CassandraNode(directory, args.port)
    serve_until_ctrl_c(node, lambda n: f"Cassandra on 127.0.0.1:{n.port} (data in {directory})")


if __name__ == "__main__":
    main()
