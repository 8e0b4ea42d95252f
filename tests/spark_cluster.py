"""A Spark standalone cluster on this machine: pyspark's own ``spark-class`` Master and Workers, on 127.0.0.1.

Each process runs in its own session (a Worker's executors and their Python workers are its children), so a
Worker can be killed -9 as a whole node, and ``stop`` leaves nothing behind. ``python -m tests.spark_cluster
--workers 2`` runs one until Ctrl-C (the master URL is printed), e.g. for ``rlplatform bench ingest --master``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyspark

from rlplatform.infra import processes
from rlplatform.infra.aws import free_port
from tests.support import port_open, serve_until_ctrl_c, wait_for


def http_json(url: str) -> dict | list | None:
    """The JSON at ``url``, or None while nothing (or a "starting up" page) answers there."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def spark_env() -> dict[str, str]:
    """What a Spark driver or node here needs: pyspark's Spark home and scripts first on PATH, loopback, this
    Python for the Python workers."""
    spark_home = Path(pyspark.__file__).parent
    bin_dirs = [str(Path(sys.executable).parent), str(spark_home / "bin")]
    return {
        "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")]),
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }


class SparkCluster:
    def __init__(
        self, work: Path, workers: int = 2, cores_per_worker: int = 1, memory: str = "1g", pin: bool = False
    ) -> None:
        """``pin``: worker i (with its executor and Python workers) runs on CPU i only (``taskset``)."""
        self.work, self.workers, self.cores, self.memory, self.pin = work, workers, cores_per_worker, memory, pin
        self.port, self.ui_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, **spark_env(), "SPARK_WORKER_DIR": str(self.work / "work")}

    def master_state(self) -> dict:
        return http_json(f"http://127.0.0.1:{self.ui_port}/json/") or {}

    def start(self) -> SparkCluster:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(self.port), "--webui-port", str(self.ui_port)])  # fmt: skip
            wait_for(lambda: port_open(self.port), 120, "the Spark master", self.check_alive)
            for i in range(self.workers):
                self.start_worker(f"worker-{i}", cpu=i if self.pin else None)
            wait_for(
                lambda: self.master_state().get("aliveworkers", 0) >= self.workers,
                120,
                f"{self.workers} Spark workers",
                self.check_alive,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, name: str, cpu: int | None = None) -> None:
        pinned = ["taskset", "-c", str(cpu % os.cpu_count())] if cpu is not None else []
        self._spawn(name, ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                           "--cores", str(self.cores), "--memory", self.memory,
                           "--webui-port", str(free_port())], prefix=pinned)  # fmt: skip

    def kill9(self, name: str) -> None:
        """A node lost at once: the Worker, its executor and their Python workers get SIGKILL."""
        processes.kill_session(self.procs[name].pid)
        self.procs[name].wait()
        self.killed.add(name)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and name not in self.killed:
                raise RuntimeError(f"spark {name} exited with {proc.returncode}; see {self.work / name}.log")

    def __enter__(self) -> SparkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "master"):  # workers first
            processes.stop(self.procs[name], timeout_s=30)

    def _spawn(self, name: str, args: list[str], prefix: list[str] = ()) -> None:
        with (self.work / f"{name}.log").open("ab") as log:
            self.procs[name] = processes.spawn(
                [*prefix, "spark-class", *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores-per-worker", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="Worker i runs on CPU i only (taskset).")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/spark-cluster"))
    args = parser.parse_args()
    serve_until_ctrl_c(
        SparkCluster(args.work_dir.resolve(), args.workers, args.cores_per_worker, pin=args.pin),
        lambda c: f"Spark master at {c.url} (UI http://127.0.0.1:{c.ui_port}), {c.workers} workers",
    )


if __name__ == "__main__":
    main()
