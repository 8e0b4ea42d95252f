"""``rlplatform bench ingest``: the collection stage's throughput, latency and exactly-once, measured.

Producer processes push CartPole-shaped chunks through the real path (ExperienceProducer -> Kinesis
-> Spark ingest job -> store). Each target (``Target``) names the Kinesis (the embedded moto, or the
endpoint of a running emulator such as LocalStack) and the store (a fresh SQLite file, or a fresh
keyspace on the Cassandra the ``RLP_CASSANDRA_*`` settings name); several targets run one after the
other. The same run measures the store's raw batched write rate (the ceiling the pipeline is compared
with). Latency is per record: the time its rows became visible
in the store (the ingest job's per-batch metrics) minus its Kinesis arrival time, weighted by steps.
With ``crash_restart`` the ingest job is killed with SIGKILL at a random moment mid-stream and
restarted from its checkpoint; the store is then compared key by key with what producers sent.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import random
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlplatform.bench.cpu_meter import CpuMeter, executor_pids
from rlplatform.bench.harness import fresh_store
from rlplatform.infra import aws, processes
from rlplatform.settings import Settings, settings_env
from rlplatform.store import ExperienceStore, StoreUnreachable, TransitionBatch
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.games import DEFAULT_GAME

GAME = DEFAULT_GAME
# The store ceiling writes this game, so its rows never mix with the pipeline's.
CEILING_GAME = "BenchCeiling-v0"
OBS_DIM = 4
STORES = ("sqlite", "cassandra")


class BenchTargetError(RuntimeError):
    """A target cannot be benchmarked (unreachable endpoint or store, refused option): one line for the user."""


@dataclass(frozen=True)
class Target:
    """Where one bench run goes: ``kinesis`` is ``moto`` (embedded, started and stopped by the run) or an
    emulator's endpoint URL; ``store`` is ``sqlite`` or ``cassandra``."""

    kinesis: str = "moto"
    store: str = "sqlite"

    @property
    def label(self) -> str:
        return f"{self.kinesis}+{self.store}"

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.label.removeprefix("http://").removeprefix("https://")).strip("-")


def parse_target(text: str) -> Target:
    """``KINESIS+STORE``: KINESIS ``moto`` or an ``http(s)://host:port`` endpoint, STORE ``sqlite``/``cassandra``."""
    kinesis, sep, store = text.strip().rpartition("+")
    if not sep or not kinesis:
        raise ValueError(
            f"--against {text!r}: expected KINESIS+STORE, e.g. moto+sqlite or http://127.0.0.1:4566+cassandra"
        )
    if store not in STORES:
        raise ValueError(f"--against {text!r}: unknown store {store!r}; known: {', '.join(STORES)}")
    if kinesis != "moto":
        url = urllib.parse.urlsplit(kinesis)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"--against {text!r}: KINESIS must be 'moto' or an endpoint URL such as http://127.0.0.1:4566,"
                f" got {kinesis!r}"
            )
        try:
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"--against {text!r}: bad port in {kinesis!r}") from None
        kinesis = kinesis.rstrip("/")
    return Target(kinesis, store)


def check_options(targets: tuple[Target, ...], reshard_to: int | None) -> None:
    """Refuse option combinations the bench does not support, naming the option."""
    if not targets:
        raise BenchTargetError("--against: no target given")
    if len(set(targets)) != len(targets):
        raise BenchTargetError("--against: a target is given twice")
    if reshard_to is not None and any(t.kinesis != "moto" for t in targets):
        raise BenchTargetError("--reshard-to: only with moto targets (UpdateShardCount is untested on other emulators)")


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
    targets: tuple[Target, ...] = field(default=(Target(),))
    # The ingest job's Spark master: local[2] (driver and executors in one process tree), or a standalone master
    # (spark://host:port), whose executors' CPU is counted when they run on this machine.
    master: str = "local[2]"
    # A hostile client beside the good ones: records naming ``junk_ids`` distinct undeclared game ids in turn, at
    # ``junk_records_per_s``; each is dead-lettered (unknown_game). 0 ids: no junk client.
    junk_ids: int = 0
    junk_records_per_s: float = 175.0


# The largest retention the settings allow: nothing a run stores is dropped.
BENCH_MAX_TRANSITIONS = next(
    m.le for m in Settings.model_fields["max_transitions_per_game"].metadata if hasattr(m, "le")
)


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


def store_ceiling(store: ExperienceStore | Path, seconds: float = 3.0, batch_rows: int = 4096) -> float:
    """Rows/s a store takes in batched writes (through the adapter's ``write``) of fresh keys on this
    machine. A path is a SQLite file of its own; an open store is written under ``CEILING_GAME``."""
    if isinstance(store, Path):
        with SqliteStore(store) as sqlite:
            return store_ceiling(sqlite, seconds, batch_rows)
    rng = np.random.default_rng(0)
    batches = [random_batch(batch_rows, rng) for _ in range(4)]
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = batches[rows // batch_rows % len(batches)]
        # New episode ids each round, so every row is an insert, as in ingest.
        fresh = np.array([str(uuid.uuid4())] * batch_rows, dtype=object)
        rows += store.write(CEILING_GAME, TransitionBatch(**{**batch.__dict__, "episode_id": fresh}))
    return rows / (time.perf_counter() - started)


def producer_main(stream: str, cfg: IngestBenchConfig, index: int, out: str) -> None:
    """One producer process: random CartPole-shaped episodes, as fast as allowed, for ``cfg.seconds``."""
    from rlplatform_client.producer import ExperienceProducer

    processes.init_pool_worker()  # dies with the bench; Ctrl-C is the bench's (it stops producers itself)
    rng = np.random.default_rng([cfg.seed, index])
    producer = ExperienceProducer(stream, GAME, f"bench-{index}", chunk_steps=cfg.chunk_steps, compress=cfg.compress)
    episodes: dict[str, int] = {}
    first_put = time.time()  # after this process's start-up, which is not ingest's time
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
    # Long enough for a slow emulator to take the backlog (kinesis-mock puts ~50 records/s); the bench's
    # own drain timeout bounds the whole wait.
    flushed = producer.close(timeout=cfg.drain_timeout_s)
    result = {"episodes": episodes, "stats": producer.stats, "flushed": flushed, "first_put": first_put}
    Path(out).write_text(json.dumps(result))


def junk_main(stream: str, cfg: IngestBenchConfig, out: str) -> None:
    """The junk client: one-step records, each naming the next of ``cfg.junk_ids`` undeclared game ids, put in
    batches of 25 at ``cfg.junk_records_per_s`` for ``cfg.seconds``; writes how many Kinesis acknowledged."""
    from rlplatform_client.contract import Chunk, Step, encode_chunk

    processes.init_pool_worker()
    kinesis = aws.kinesis_client()
    obs, sent, i = [0.0] * OBS_DIM, 0, 0
    per_call = 25
    interval = per_call / cfg.junk_records_per_s
    next_at = time.monotonic()
    deadline = next_at + cfg.seconds
    while time.monotonic() < deadline:
        records = []
        for _ in range(per_call):
            chunk = Chunk(
                f"junk-{i % cfg.junk_ids}", "junk", str(uuid.uuid4()), 0, [Step(0, obs, 0, 0.0, obs, True, False)]
            )
            records.append({"Data": encode_chunk(chunk), "PartitionKey": str(i)})
            i += 1
        failed = kinesis.put_records(StreamName=stream, Records=records)["FailedRecordCount"]
        sent += per_call - failed
        next_at += interval
        if (delay := next_at - time.monotonic()) > 0:
            time.sleep(delay)
    Path(out).write_text(json.dumps({"records": sent}))


class IngestJob:
    """The ingest job as its own process (session), so it can be killed like a crashed job."""

    def __init__(
        self, checkpoint: Path, metrics: Path, env: dict[str, str], log: Path, master: str = "local[2]"
    ) -> None:
        self.argv = [sys.executable, "-m", "rlplatform", "ingest", "--checkpoint", str(checkpoint),
                     "--metrics", str(metrics), "--master", master]  # fmt: skip
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


class RemoteEmulator(aws.Emulator):
    """An emulator someone else runs (LocalStack from ``make localstack`` or compose): nothing to stop."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def stop(self) -> None:
        self.restore_env()


def run_ingest_bench(cfg: IngestBenchConfig) -> dict:
    """One target: its per-run keys. Several: ``{label: keys}``, in order. ``BenchTargetError`` names the
    target that cannot be reached; nothing the bench started is left running in any case."""
    check_options(cfg.targets, cfg.reshard_to)
    if len(cfg.targets) == 1:
        return _run_target(cfg, cfg.targets[0], cfg.work_dir)
    # Reachability of every target first: a typo in the last one should not cost the first ones' minutes.
    for target in cfg.targets:
        _check_reachable(target)
    results = {}
    for target in cfg.targets:
        results[target.label] = _run_target(cfg, target, cfg.work_dir / target.slug)
        # Progress for the watcher; stdout's last line stays the one JSON object of all targets.
        print(f"bench: {target.label}: {json.dumps(results[target.label])}", file=sys.stderr, flush=True)
    return results


def _check_reachable(target: Target) -> None:
    if target.kinesis != "moto":
        emulator = RemoteEmulator(target.kinesis)
        emulator.apply_env()
        try:
            _check_kinesis(target)
        finally:
            emulator.restore_env()
    if target.store == "cassandra":
        _check_cassandra(target)


def _check_kinesis(target: Target) -> None:
    """One quick call, no retries: an endpoint that does not answer fails here, not after minutes."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "kinesis", config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1, "mode": "standard"})
    )
    try:
        client.list_streams(Limit=1)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means the target is unusable
        raise BenchTargetError(f"{target.label}: Kinesis at {target.kinesis} does not answer ({exc})") from None


def _cassandra_error(target: Target, exc: BaseException) -> BenchTargetError:
    base = Settings().cassandra
    return BenchTargetError(
        f"{target.label}: Cassandra at {base.contact_points} port {base.port} is unreachable ({exc})"
    )


def _check_cassandra(target: Target) -> None:
    """Connect to the Cassandra the RLP_CASSANDRA_* settings name, touching no keyspace."""
    from rlplatform.store.cassandra import _connect

    try:
        cluster, _ = _connect(Settings().cassandra, 5.0, 10.0)
    except Exception as exc:  # noqa: BLE001 - unreachable or refused: either way this target cannot run
        raise _cassandra_error(target, exc) from None
    cluster.shutdown()


@contextlib.contextmanager
def _kinesis_for(target: Target) -> Iterator[aws.Emulator]:
    """This process's SDK pointed at the target's Kinesis (moto started here and stopped at the end)."""
    emulator: aws.Emulator = RemoteEmulator(target.kinesis) if target.kinesis != "moto" else aws.MotoServer.start()
    try:
        emulator.apply_env()
        if target.kinesis != "moto":
            _check_kinesis(target)
        yield emulator
    finally:
        emulator.stop()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _fresh_stream(name: str, shards: int) -> Iterator[None]:
    """A stream of its own for one run (an emulator's existing streams stay untouched), deleted at the end."""
    from rlplatform.infra.bootstrap import bootstrap as create_resources

    kinesis = aws.kinesis_client()
    create_resources(name, shards, Settings().bucket, kinesis, aws.s3_client())
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def _run_target(cfg: IngestBenchConfig, target: Target, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    stream = f"bench-{run_id}"
    result: dict = {"target": target.label}
    job: IngestJob | None = None
    producers: list = []
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(_kinesis_for(target))
        try:
            settings, store = stack.enter_context(fresh_store(target.store, work))
        except StoreUnreachable as exc:
            raise BenchTargetError(f"{target.label}: {exc}") from None
        if target.store == "sqlite":
            result["store_ceiling_per_s"] = round(store_ceiling(work / "ceiling.sqlite"))
        else:
            result["store_ceiling_per_s"] = round(store_ceiling(store))
        stack.enter_context(_fresh_stream(stream, cfg.shards))
        try:
            # Retention off (its maximum): the bench reconciles every key sent against the store, and a run that
            # keeps up sends more than the default million per game.
            job_settings = settings.model_copy(
                update={
                    "stream_name": stream,
                    "shard_count": cfg.shards,
                    "ingest_trigger_seconds": cfg.trigger_seconds,
                    "max_transitions_per_game": BENCH_MAX_TRANSITIONS,
                }
            )
            env = settings_env(job_settings, emulator.env())
            (work / "metrics.jsonl").unlink(missing_ok=True)
            job = IngestJob(
                work / f"ingest-ckpt-{run_id}", work / "metrics.jsonl", env, work / "ingest.log", cfg.master
            )
            job.start()
            warm_up = _warm_up(stream, store, job)
            driver = CpuMeter(lambda: processes.session_members(job.proc.pid)).start()
            executors = None if cfg.master.startswith("local") else CpuMeter(executor_pids).start()
            ctx = mp.get_context("spawn")
            outs = [work / f"producer-{i}.json" for i in range(cfg.producers)]
            started = time.time()
            producers = [
                ctx.Process(target=producer_main, args=(stream, cfg, i, str(out))) for i, out in enumerate(outs)
            ]
            junk_out = work / "junk.json"
            if cfg.junk_ids:
                producers.append(ctx.Process(target=junk_main, args=(stream, cfg, str(junk_out))))
            for p in producers:
                p.start()
            if cfg.reshard_to:
                reshard_at = started + random.uniform(0.2, 0.5) * cfg.seconds
                _wait_until(lambda: time.time() >= reshard_at, cfg.seconds + 60, job)
                result["resharded_after_s"] = round(time.time() - started, 1)
                result["stored_at_reshard"] = store.count(GAME) - 1
                aws.kinesis_client().update_shard_count(
                    StreamName=stream, TargetShardCount=cfg.reshard_to, ScalingType="UNIFORM_SCALING"
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
            if any(p.exitcode != 0 for p in producers):
                codes = [p.exitcode for p in producers]
                raise RuntimeError(f"{target.label}: a producer process failed (exit codes {codes})")
            sent = [json.loads(out.read_text()) for out in outs]
            total = sum(s["stats"]["steps_acked"] for s in sent)
            first_put = min(s["first_put"] for s in sent)
            _wait_until(lambda: store.count(GAME) >= total + 1, cfg.drain_timeout_s, job)
            visible = time.time()
            # Cassandra counts a batch's rows once their seqs are reserved, a moment before they are readable.
            reconciled = _reconcile(store, sent, warm_up)
            deadline = time.monotonic() + 30
            while reconciled["lost"] and time.monotonic() < deadline:
                time.sleep(0.5)
                visible = time.time()
                reconciled = _reconcile(store, sent, warm_up)
            result.update(reconciled)
            result.update(_latencies(work / "metrics.jsonl", after=started))
            result.update(_cpu_figures(cfg.master, driver, executors, total))
            result["transitions"] = total
            result["seconds"] = round(visible - first_put, 1)
            result["transitions_per_s"] = round(total / (visible - first_put))
            result["ratio_to_ceiling"] = round(result["transitions_per_s"] / result["store_ceiling_per_s"], 3)
            result["producers"] = cfg.producers
            result["offered_per_s"] = cfg.rate
            result["shards"] = cfg.shards
            summary = aws.kinesis_client().describe_stream_summary(StreamName=stream)
            result["open_shards_at_end"] = summary["StreamDescriptionSummary"]["OpenShardCount"]
            result["chunk_steps"] = cfg.chunk_steps
            result["compress"] = cfg.compress
            result["records_put"] = sum(s["stats"]["records_acked"] for s in sent)
            result["records_per_s"] = round(result["records_put"] / (visible - first_put))
            if cfg.junk_ids:
                junk = json.loads(junk_out.read_text())["records"]
                result["junk"] = {"ids": cfg.junk_ids, "records": junk, "records_per_s": round(junk / cfg.seconds)}
                result["junk"]["dead_lettered"] = _dead_lettered(work / "metrics.jsonl", after=started)
            return result
        finally:
            for p in producers:
                if p.is_alive():
                    p.terminate()
                    p.join()
            if job is not None:
                job.stop()


def _cpu_figures(master: str, driver: CpuMeter, executors: CpuMeter | None, transitions: int) -> dict:
    """CPU per transition: of the whole job under local[N] (the executors are threads and children of the
    driver's JVM); of the driver and of the executors apart under a standalone master, with what one
    executor core can take when busy (transitions per executor CPU second)."""
    driver_s = driver.seconds()
    if executors is None:
        return {"master": master, "ingest_cpu_us_per_transition": round(1e6 * driver_s / transitions, 2)}
    executor_s = executors.seconds()
    return {
        "master": master,
        "driver_cpu_us_per_transition": round(1e6 * driver_s / transitions, 2),
        "executor_cpu_us_per_transition": round(1e6 * executor_s / transitions, 2),
        "transitions_per_executor_core_s": round(transitions / executor_s) if executor_s else None,
    }


def _warm_up(stream: str, store: ExperienceStore, job: IngestJob) -> str:
    """One record through the whole path, so measuring starts once Spark is up, not during its start.
    Returns the warm-up episode id (not one the producers sent)."""
    from rlplatform_client.producer import ExperienceProducer

    episode_id = str(uuid.uuid4())
    with ExperienceProducer(stream, GAME, "bench-warm-up") as producer:
        producer.record(episode_id, 0, [0.0] * OBS_DIM, 0, 1.0, [0.0] * OBS_DIM, True, False, 0)
    _wait_until(lambda: store.count(GAME) >= 1, 180, job)
    return episode_id


def _wait_until(condition: Callable[[], bool], timeout_s: float, job: IngestJob) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        job.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def stored_keys(store: ExperienceStore, game: str) -> list[tuple[str, int]]:
    """The (episode_id, t) of every stored step of ``game``, duplicates kept, through the store port."""
    steps = store._episode_steps(game)
    return list(zip(steps.episode_id.tolist(), steps.t.tolist(), strict=True))


def _reconcile(store: ExperienceStore, sent: list[dict], warm_up: str) -> dict:
    """Key-by-key comparison of what producers had acknowledged with what the store holds."""
    expected = {(e, t) for s in sent for e, n in s["episodes"].items() for t in range(n)}
    rows = [key for key in stored_keys(store, GAME) if key[0] != warm_up]
    stored = set(rows)
    return {
        # Steps of an unflushed producer that Kinesis never acknowledged count as lost here too.
        "lost": len(expected - stored),
        "duplicated": len(rows) - len(stored & expected),
        "unflushed_producers": sum(not s["flushed"] for s in sent),
    }


def _dead_lettered(metrics: Path, after: float) -> int:
    """Records the job rejected in the batches that became visible after ``after``."""
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    return sum(sum(m["rejected"].values()) for m in lines if m["visible_at"] >= after)


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
