"""``rlplatform bench ingest``: the collection stage's throughput, latency and exactly-once, measured.

Producer processes push CartPole-shaped chunks through the real path (ExperienceProducer -> moto
Kinesis -> Spark ingest job -> SQLite). The same run measures the store's raw batched write rate
(the ceiling the pipeline is compared with). Latency is per record: the time its rows became visible
in the store (the ingest job's per-batch metrics) minus its Kinesis arrival time, weighted by steps.
With ``crash_restart`` the ingest job is killed with SIGKILL at a random moment mid-stream and
restarted from its checkpoint; the store is then compared key by key with what producers sent.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlplatform import aws, processes
from rlplatform.settings import Settings
from rlplatform.store import TransitionBatch
from rlplatform.store.sqlite import SqliteStore
from rlplatform.store.sqlite_settings import SqliteSettings

GAME = "CartPole-v1"
OBS_DIM = 4


@dataclass(frozen=True)
class IngestBenchConfig:
    work_dir: Path
    seconds: float = 30.0
    producers: int = 2
    shards: int = 4
    chunk_steps: int = 256
    # gzip level 1 in producers: fewer bytes through Kinesis and Spark for a little producer CPU.
    compress: bool = True
    crash_restart: bool = False
    # Raise the stream's shard count to this at a random moment mid-stream (UpdateShardCount).
    reshard_to: int | None = None
    # Offered load in steps/s, split evenly over producers; None = as fast as they can go (then the backlog,
    # and the latency, grow for as long as producers outpace ingest).
    rate: float | None = None
    trigger_seconds: float = 0.5
    drain_timeout_s: float = 300.0
    seed: int = 0


def random_batch(n: int, rng: np.random.Generator) -> TransitionBatch:
    """``n`` CartPole-shaped transitions of one fresh episode."""
    obs = rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32)
    t = np.arange(n, dtype=np.int64)
    return TransitionBatch(
        episode_id=np.array([str(uuid.uuid4())] * n, dtype=object),
        t=t,
        obs=obs,
        action=rng.integers(0, 2, n).astype(np.int64),
        reward=np.ones(n, dtype=np.float32),
        next_obs=obs + np.float32(0.01),
        terminated=t == n - 1,
        truncated=np.zeros(n, dtype=bool),
        model_version=np.zeros(n, dtype=np.int64),
    )


def store_ceiling(path: Path, seconds: float = 3.0, batch_rows: int = 4096) -> float:
    """Rows/s the SQLite store takes in batched writes of fresh keys on this machine."""
    rng = np.random.default_rng(0)
    batches = [random_batch(batch_rows, rng) for _ in range(4)]
    rows, started = 0, time.perf_counter()
    with SqliteStore(path) as store:
        while time.perf_counter() - started < seconds:
            batch = batches[rows // batch_rows % len(batches)]
            # New episode ids each round, so every row is an insert, as in ingest.
            fresh = np.array([str(uuid.uuid4())] * batch_rows, dtype=object)
            rows += store.write(GAME, TransitionBatch(**{**batch.__dict__, "episode_id": fresh}))
    return rows / (time.perf_counter() - started)


def producer_main(stream: str, cfg: IngestBenchConfig, index: int, out: str) -> None:
    """One producer process: random CartPole-shaped episodes, as fast as allowed, for ``cfg.seconds``."""
    from rlplatform_client.producer import ExperienceProducer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench stops producers itself
    rng = np.random.default_rng([cfg.seed, index])
    producer = ExperienceProducer(stream, GAME, f"bench-{index}", chunk_steps=cfg.chunk_steps, compress=cfg.compress)
    episodes: dict[str, int] = {}
    deadline = time.monotonic() + cfg.seconds
    interval = 0.0 if not cfg.rate else cfg.producers / cfg.rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        length = int(rng.integers(20, 500))
        episode_id = str(uuid.uuid4())
        obs = rng.uniform(-1, 1, (length + 1, OBS_DIM)).astype(np.float32)
        actions = rng.integers(0, 2, length)
        t = np.arange(length)
        # Whole chunks per call, as a game that buffers its steps would send them.
        for lo in range(0, length, cfg.chunk_steps):
            part = slice(lo, min(lo + cfg.chunk_steps, length))
            ones = np.ones(part.stop - part.start, dtype=np.float32)
            producer.record_steps(
                episode_id, t[part], obs[:-1][part], actions[part], ones, obs[1:][part], t[part] == length - 1,
                np.zeros_like(ones, dtype=bool), 0,
            )  # fmt: skip
            if interval:
                next_at += interval * (part.stop - part.start)
                if (delay := next_at - time.monotonic()) > 0:
                    time.sleep(delay)
        episodes[episode_id] = length
    flushed = producer.close(timeout=120)
    Path(out).write_text(json.dumps({"episodes": episodes, "stats": producer.stats, "flushed": flushed}))


class IngestJob:
    """The ingest job as its own process (session), so it can be killed like a crashed job."""

    def __init__(self, checkpoint: Path, metrics: Path, env: dict[str, str], log: Path) -> None:
        self.argv = [sys.executable, "-m", "rlplatform", "ingest", "--checkpoint", str(checkpoint),
                     "--metrics", str(metrics)]  # fmt: skip
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = processes.spawn(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        """SIGKILL the driver, its JVM and its Python workers at once: no shutdown hook runs."""
        assert self.proc is not None
        processes.kill_session(self.proc.pid)
        self.proc.wait()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ingest exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc, timeout_s=60)


def run_ingest_bench(cfg: IngestBenchConfig) -> dict:
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"store_ceiling_per_s": round(store_ceiling(work / "ceiling.sqlite"))}
    settings = Settings(
        sqlite=SqliteSettings(path=work / "experience.sqlite"),
        shard_count=cfg.shards,
        ingest_trigger_seconds=cfg.trigger_seconds,
    )
    moto = aws.MotoServer.start()
    job: IngestJob | None = None
    producers: list = []
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        env = {
            **os.environ,
            "RLP_SQLITE_PATH": str(settings.sqlite.path),
            "RLP_SHARD_COUNT": str(cfg.shards),
            "RLP_INGEST_TRIGGER_SECONDS": str(cfg.trigger_seconds),
        }
        job = IngestJob(work / "ingest-ckpt", work / "metrics.jsonl", env, work / "ingest.log")
        job.start()
        with SqliteStore(settings.sqlite.path) as store:
            _warm_up(settings, store, job)
            ctx = mp.get_context("spawn")
            outs = [work / f"producer-{i}.json" for i in range(cfg.producers)]
            started = time.time()
            producers = [
                ctx.Process(target=producer_main, args=(settings.stream_name, cfg, i, str(out)))
                for i, out in enumerate(outs)
            ]
            for p in producers:
                p.start()
            if cfg.reshard_to:
                reshard_at = started + random.uniform(0.2, 0.5) * cfg.seconds
                _wait_until(lambda: time.time() >= reshard_at, cfg.seconds + 60, job)
                result["resharded_after_s"] = round(time.time() - started, 1)
                result["stored_at_reshard"] = store.count(GAME) - 1
                aws.kinesis_client().update_shard_count(
                    StreamName=settings.stream_name, TargetShardCount=cfg.reshard_to, ScalingType="UNIFORM_SCALING"
                )
            if cfg.crash_restart:
                crash_at = started + random.uniform(0.2, 0.7) * cfg.seconds
                _wait_until(lambda: time.time() >= crash_at, cfg.seconds + 60, job)
                result["crashed_after_s"] = round(time.time() - started, 1)
                result["stored_at_crash"] = store.count(GAME) - 1
                job.kill9()
                job.start()
            for p in producers:
                p.join()
            sent = [json.loads(out.read_text()) for out in outs]
            total = sum(s["stats"]["steps_acked"] for s in sent)
            _wait_until(lambda: store.count(GAME) >= total + 1, cfg.drain_timeout_s, job)
            visible = time.time()
        result.update(_reconcile(settings.sqlite.path, sent))
        result.update(_latencies(work / "metrics.jsonl", after=started))
        result["transitions"] = total
        result["seconds"] = round(visible - started, 1)
        result["transitions_per_s"] = round(total / (visible - started))
        result["ratio_to_ceiling"] = round(result["transitions_per_s"] / result["store_ceiling_per_s"], 3)
        result["producers"] = cfg.producers
        result["offered_per_s"] = cfg.rate
        result["shards"] = cfg.shards
        summary = aws.kinesis_client().describe_stream_summary(StreamName=settings.stream_name)
        result["open_shards_at_end"] = summary["StreamDescriptionSummary"]["OpenShardCount"]
        result["chunk_steps"] = cfg.chunk_steps
        result["compress"] = cfg.compress
        return result
    finally:
        for p in producers:
            if p.is_alive():
                p.terminate()
                p.join()
        if job is not None:
            job.stop()
        moto.stop()


def _warm_up(settings: Settings, store: SqliteStore, job: IngestJob) -> None:
    """One record through the whole path, so measuring starts once Spark is up, not during its start."""
    from rlplatform_client.producer import ExperienceProducer

    with ExperienceProducer(settings.stream_name, GAME, "bench-warm-up") as producer:
        producer.record(str(uuid.uuid4()), 0, [0.0] * OBS_DIM, 0, 1.0, [0.0] * OBS_DIM, True, False, 0)
    _wait_until(lambda: store.count(GAME) >= 1, 180, job)


def _wait_until(condition, timeout_s: float, job: IngestJob) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        job.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def _reconcile(sqlite_path: Path, sent: list[dict]) -> dict:
    """Key-by-key comparison of what producers had acknowledged with what the store holds."""
    expected = {(e, t) for s in sent for e, n in s["episodes"].items() for t in range(n)}
    with sqlite3.connect(sqlite_path) as conn:
        rows = conn.execute("SELECT episode_id, t FROM exp_CartPole_v1 WHERE seq > 1").fetchall()  # 1: warm-up
    stored = set(rows)
    return {
        "lost": len(expected - stored),
        "duplicated": len(rows) - len(stored & expected),
        "unflushed_producers": sum(not s["flushed"] for s in sent),
    }


def _latencies(metrics: Path, after: float) -> dict:
    """Step-weighted p50/p99 of visible_at - Kinesis arrival, for records that arrived after ``after``."""
    latencies, weights = [], []
    for line in metrics.read_text().splitlines():
        batch = json.loads(line)
        for arrival, steps in batch["arrivals"]:
            if arrival >= after:
                latencies.append(batch["visible_at"] - arrival)
                weights.append(steps)
    if not latencies:
        return {"latency_p50_s": None, "latency_p99_s": None}
    order = np.argsort(latencies)
    lat = np.asarray(latencies)[order]
    cum = np.cumsum(np.asarray(weights)[order]) / np.sum(weights)
    return {
        "latency_p50_s": round(float(lat[np.searchsorted(cum, 0.5)]), 3),
        "latency_p99_s": round(float(lat[np.searchsorted(cum, 0.99)]), 3),
    }
