"""``rlplatform bench store``: the experience store alone, in this process, used as ingest and the trainer use
it. Writes of chunk-sized batches (fresh episodes, as clients send them), then learner-sized samples with
n-step followers; for each, transitions/s, this process's CPU per transition (the client's side: the driver and
its I/O threads for Cassandra, the whole engine for SQLite), a Cassandra node's CPU when it runs on this
machine, and the requests the adapter sends per 1,000
transitions with the bytes of their bound values (what Amazon Keyspaces bills by).

The store is a fresh one (``harness.fresh_store``): a new SQLite file in the work dir, or a ``bench_<hex>``
keyspace on the Cassandra the ``RLP_CASSANDRA_*`` settings name (``make cassandra`` starts one), dropped at
the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlplatform.bench.cpu_meter import CpuMeter, cassandra_pids
from rlplatform.bench.harness import fresh_store
from rlplatform.bench.ingest import GAME, random_batch
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore
from rlplatform.store.sqlite import SqliteStore

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BenchStoreError(ValueError):
    """An option the bench cannot run with, naming it."""


@dataclass(frozen=True)
class StoreBenchConfig:
    store: str = "sqlite"
    transitions: int = 100_000
    chunk_steps: int = 256  # steps per write: one client chunk (ingest writes a slice of several)
    batch_size: int = 256  # draws per sample, as a learner update takes them
    follow: int = 2  # followers per draw: 3-step returns, the DQN default
    samples: int = 200
    seed: int = 0
    work_dir: Path = Path("runs/bench-store")


def check_options(transitions: int, chunk_steps: int, samples: int) -> None:
    if not 1 <= chunk_steps <= 1024:
        raise BenchStoreError(f"--chunk-steps: 1..1024 (a chunk's limit), got {chunk_steps}")
    if transitions < chunk_steps:
        raise BenchStoreError(f"--transitions: at least one chunk ({chunk_steps}), got {transitions}")
    if samples < 1:
        raise BenchStoreError(f"--samples: at least 1, got {samples}")


class RequestCounter:
    """Requests the adapter sends and the bytes of their bound values: SQLite statements (its trace
    callback), Cassandra requests (each response future the session creates, a batch counting once)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bound_bytes: int | None = 0

    def attach(self, store: ExperienceStore) -> None:
        if isinstance(store, SqliteStore):
            store._conn.set_trace_callback(self._statement)
            self.bound_bytes = None  # in-process: nothing crosses a wire
            return
        session = store._session  # type: ignore[attr-defined]
        create = session._create_response_future

        def counted(query: Any, *args: Any, **kwargs: Any) -> Any:
            future = create(query, *args, **kwargs)
            self.requests += 1
            self.bound_bytes = (self.bound_bytes or 0) + _bound_bytes(future.message)
            return future

        session._create_response_future = counted

    def _statement(self, _sql: str) -> None:
        self.requests += 1

    def reset(self) -> tuple[int, int | None]:
        counts = self.requests, self.bound_bytes
        self.requests = 0
        self.bound_bytes = None if self.bound_bytes is None else 0
        return counts


def _bound_bytes(message: Any) -> int:
    """Serialized bound values of an EXECUTE (``query_params``) or a BATCH (each query's params)."""
    params = list(getattr(message, "query_params", None) or [])
    for _, _, query_params in getattr(message, "queries", None) or []:
        params += query_params or []
    return sum(len(p) for p in params if isinstance(p, bytes | bytearray))


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float
    server_cpu_seconds: float | None
    requests: int
    bound_bytes: int | None


def _measure(work: Callable[[], object], counter: RequestCounter, server: CpuMeter | None) -> Measured:
    counter.reset()
    if server is not None:
        server.start()
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    requests, bound = counter.reset()
    return Measured(seconds, cpu_seconds, None if server is None else server.seconds(), requests, bound)


def _per_transition(m: Measured, transitions: int) -> dict:
    return {
        "transitions_per_s": round(transitions / m.seconds),
        "cpu_us_per_transition": round(m.cpu_seconds / transitions * 1e6, 1),
        "server_cpu_us_per_transition": (
            None if m.server_cpu_seconds is None else round(m.server_cpu_seconds / transitions * 1e6, 1)
        ),
        "requests_per_1000": round(m.requests / transitions * 1000, 2),
        "bound_bytes_per_1000": None if m.bound_bytes is None else round(m.bound_bytes / transitions * 1000),
    }


def _local_cassandra() -> bool:
    """The Cassandra the settings name runs on this machine, where its CPU can be read (SQLite runs in this
    process; a remote node's CPU is not seen)."""
    hosts = {h.strip() for h in Settings().cassandra.contact_points.split(",")}
    return hosts <= LOOPBACK and bool(cassandra_pids())


def run_store_bench(cfg: StoreBenchConfig) -> dict:
    """Write ``cfg.transitions`` in chunks, then draw ``cfg.samples`` samples; one result dict."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    chunks = [random_batch(cfg.chunk_steps, rng) for _ in range(cfg.transitions // cfg.chunk_steps)]
    written = len(chunks) * cfg.chunk_steps
    counter = RequestCounter()
    server = CpuMeter(cassandra_pids) if cfg.store == "cassandra" and _local_cassandra() else None
    with fresh_store(cfg.store, cfg.work_dir) as (_, store):
        counter.attach(store)
        stored: list[int] = []
        write = _measure(lambda: stored.extend(store.write(GAME, chunk) for chunk in chunks), counter, server)
        if sum(stored) != written:
            raise RuntimeError(f"the store took {sum(stored)} of {written} fresh transitions")
        sample = _measure(
            lambda: [store.sample(GAME, cfg.batch_size, rng, follow=cfg.follow) for _ in range(cfg.samples)],
            counter,
            server,
        )
    drawn = cfg.samples * cfg.batch_size
    return {
        "store": cfg.store,
        "transitions": written,
        "chunk_steps": cfg.chunk_steps,
        "write": _per_transition(write, written),
        "sample": {
            "batch_size": cfg.batch_size,
            "follow": cfg.follow,
            "batches_per_s": round(cfg.samples / sample.seconds, 1),
            **_per_transition(sample, drawn),
            "rows_read_per_batch": cfg.batch_size * (1 + cfg.follow),
        },
    }
