"""``rlplatform bench dashboard``: what one dashboard refresh costs beside a large store.

The page refreshes every few seconds for as long as someone watches, so its cost per refresh must not grow with
the store. A fresh SQLite store is filled with ``transitions`` CartPole-like steps (episodes of 10..500 steps
from several clients, interleaved in chunks as ingest stores them, played by model versions 0..3) and a moto
server holds the bucket (the game declared, three versions published). Then, timed (wall and this process's
CPU; the S3 requests and store calls counted):

- **catch-up**: a new ``Collector`` refreshed until it has read every stored step (a dashboard opened on a
  large store reads at most ``store.live.MAX_STEPS_PER_REFRESH`` per refresh);
- **idle**: refreshes with nothing new stored;
- **new steps**: refreshes each after ``new_steps`` more steps were stored (the write is not timed);
- **full recompute**: ``store.live_returns`` over the whole store, what a refresh would cost without reading
  incrementally.

The collector's live returns are checked against ``store.live_returns`` at the end: the figures count for
nothing if the incremental reading missed a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from rlplatform.dashboard.collect import Collector, Snapshot
from rlplatform.games import GameCatalog, game_spec
from rlplatform.infra import aws
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store import ExperienceStore, TransitionBatch, open_store
from rlplatform.store.live import MAX_STEPS_PER_REFRESH
from rlplatform_client.models import ModelManifest, publish_model

GAME = "CartPole-v1"
MODEL_VERSIONS = 3  # published; steps are played by 0 (before any model) .. 3
CLIENTS = 16  # concurrent episodes, interleaved in the store as ingest writes their chunks
CHUNK_STEPS = 256  # steps per client chunk
FILL_BATCH = 100_000  # steps per store write while filling
MAX_EPISODE = 500  # CartPole-v1's time limit: an episode this long is truncated, a shorter one terminated
FULL_REPEATS = 3


class BenchDashboardError(ValueError):
    """An option the bench cannot run with, naming it."""


@dataclass(frozen=True)
class DashboardBenchConfig:
    transitions: int = 1_000_000  # stored before the first refresh, over all games
    games: int = 1
    new_steps: int = 10_000  # stored before each refresh of the "new steps" part, over all games
    refreshes: int = 5  # timed per steady-state part
    store: str = "sqlite"
    work_dir: Path = Path("runs/bench-dashboard")
    seed: int = 0


def check_options(cfg: DashboardBenchConfig) -> None:
    """Refuse what the bench cannot measure, naming the option."""
    if cfg.store != "sqlite":
        raise BenchDashboardError(f"store: only sqlite is measured (a fresh file in the work dir), got {cfg.store!r}")
    if cfg.games < 1:
        raise BenchDashboardError(f"--games: at least 1, got {cfg.games}")
    if cfg.transitions < 1000 * cfg.games:
        raise BenchDashboardError(f"--transitions: at least 1000 per game ({1000 * cfg.games}), got {cfg.transitions}")
    if not cfg.games <= cfg.new_steps <= MAX_STEPS_PER_REFRESH:
        raise BenchDashboardError(
            f"--new-steps: {cfg.games}..{MAX_STEPS_PER_REFRESH} (what one refresh reads at most), got {cfg.new_steps}"
        )
    if cfg.refreshes < 1:
        raise BenchDashboardError(f"--refreshes: at least 1, got {cfg.refreshes}")


# ------------------------------------------------------------------------------------------------- the data


def game_ids(games: int) -> list[str]:
    """CartPole-v1, then copies of it declared under other ids: each game has a table of its own."""
    return [GAME] + [f"CartPole-bench-{i}" for i in range(1, games)]


def play(steps: int, rng: np.random.Generator) -> TransitionBatch:
    """``steps`` CartPole-shaped steps in the order the store receives them: ``CLIENTS`` clients each playing
    episodes of 10..500 steps one after another, their chunks of ``CHUNK_STEPS`` interleaved. An episode's steps
    are spread over many chunks, so any slice of the play may end in the middle of episodes (the next slice
    holds their rest), as a refresh finds the store."""
    per_client = [steps // CLIENTS + (c < steps % CLIENTS) for c in range(CLIENTS)]
    parts = [_client_play(n, rng) for n in per_client]
    chunk = np.concatenate([np.arange(n) // CHUNK_STEPS for n in per_client])
    client = np.concatenate([np.full(n, c) for c, n in enumerate(per_client)])
    order = np.lexsort((client, chunk))  # chunk 0 of every client, then chunk 1, ...
    return TransitionBatch.concat(parts)[order]


def _client_play(n: int, rng: np.random.Generator) -> TransitionBatch:
    """One client's ``n`` steps: whole episodes one after another, the last one cut at ``n`` (unfinished); each
    episode played by one version (0..3), reward 1 per step, its last step terminated, or truncated at the
    time limit."""
    lengths = rng.integers(10, MAX_EPISODE + 1, size=n // 10 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]  # enough episodes to cover n steps
    episode = np.repeat(np.arange(len(lengths)), lengths)[:n]
    t = np.arange(n) - np.concatenate([[0], np.cumsum(lengths)[:-1]])[episode]
    ends = t == lengths[episode] - 1
    ids = np.array([str(uuid.uuid4()) for _ in lengths], dtype=object)
    obs = rng.standard_normal((n, 4), dtype=np.float32)
    return TransitionBatch(
        episode_id=ids[episode],
        t=t.astype(np.int64),
        obs=obs,
        action=rng.integers(0, 2, size=n, dtype=np.int64),
        reward=np.ones(n, dtype=np.float32),
        next_obs=obs + np.float32(0.01),
        terminated=ends & (t < MAX_EPISODE - 1),
        truncated=ends & (t == MAX_EPISODE - 1),
        model_version=rng.integers(0, MODEL_VERSIONS + 1, size=len(lengths), dtype=np.int64)[episode],
    )


# ----------------------------------------------------------------------------------------------- the bucket


def prepare_bucket(settings: Settings, ids: list[str]) -> None:
    """The bucket a running platform has: each game declared and ``MODEL_VERSIONS`` versions published (signed),
    so a refresh reads what it reads in use (manifests, the latest pointer, the catalog)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    aws.bootstrap(settings)
    catalog, s3, key = GameCatalog(settings.bucket, wait=False), aws.s3_client(), Ed25519PrivateKey.generate()
    for game_id in ids:
        catalog.register(dataclasses.replace(game_spec(GAME), game_id=game_id))
        for version in range(1, MODEL_VERSIONS + 1):
            manifest = ModelManifest.create(
                game_id, version, b"onnx", algorithm="DQN", learner_step=1000 * version,
                observation_space={"type": "box", "shape": [4], "dtype": "float32"},
                action_space={"type": "discrete", "n": 2}, eval_return=100.0 * version,
            )  # fmt: skip
            publish_model(s3, settings.bucket, manifest, b"onnx", key)


@contextlib.contextmanager
def counted_s3_requests() -> Iterator[Counter]:
    """S3 requests by operation sent through this process's S3 client (``aws.s3_client``, which the collector
    reads through) while open: a hook on the client's events."""
    events = aws.s3_client().meta.events
    counts: Counter = Counter()

    def count(model: Any, **_: Any) -> None:
        counts[model.name] += 1

    events.register("before-call.s3", count)
    try:
        yield counts
    finally:
        events.unregister("before-call.s3", count)


# -------------------------------------------------------------------------------------------------- the store


class CountingStore:
    """The collector's store, counting its calls by method and the steps it read (``read_seqs``)."""

    def __init__(self, store: ExperienceStore) -> None:
        self.store = store
        self.calls: Counter = Counter()
        self.steps_read = 0

    def read_seqs(self, game_id: str, first: int, last: int) -> tuple[np.ndarray, TransitionBatch]:
        self.calls["read_seqs"] += 1
        seqs, rows = self.store.read_seqs(game_id, first, last)
        self.steps_read += len(seqs)
        return seqs, rows

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def fill(store: ExperienceStore, plays: dict[str, TransitionBatch], steps: int) -> None:
    """Store the first ``steps`` of each game's play, in large writes (the fill is set-up, not measured use)."""
    for game_id, batch in plays.items():
        for start in range(0, steps, FILL_BATCH):
            store.write(game_id, batch[start : min(steps, start + FILL_BATCH)])


def _remove_store(path: Path) -> None:
    """The SQLite file and its WAL: hundreds of MB for a million steps, of no use after the run."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Refreshes:
    """Wall and CPU seconds of each timed refresh, and the requests they sent in all."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    s3: Counter = dataclasses.field(default_factory=Counter)
    store: Counter = dataclasses.field(default_factory=Counter)

    def summary(self) -> dict:
        n = len(self.wall)
        return {
            "refreshes": n,
            "median_s": round(statistics.median(self.wall), 4),
            "median_cpu_s": round(statistics.median(self.cpu), 4),
            "max_s": round(max(self.wall), 4),
            "s3_requests_per_refresh": round(sum(self.s3.values()) / n, 2),
            "s3_by_operation": {op: round(c / n, 2) for op, c in sorted(self.s3.items())},
            "store_calls_per_refresh": {m: round(c / n, 2) for m, c in sorted(self.store.items())},
        }


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """``work()``'s result, wall seconds and this process's CPU seconds (the moto server's are not counted)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def refresh(collector: Collector, store: CountingStore, s3: Counter, into: Refreshes) -> Snapshot:
    """One timed refresh, its requests added to ``into``; a source that failed fails the bench (its figures would
    measure an error path)."""
    s3_before, store_before = Counter(s3), Counter(store.calls)
    snapshot, wall, cpu = timed(collector.refresh)
    if snapshot.errors:
        raise RuntimeError(f"dashboard refresh failed: {snapshot.errors}")
    into.wall.append(wall)
    into.cpu.append(cpu)
    into.s3.update(s3 - s3_before)
    into.store.update(store.calls - store_before)
    return snapshot


def matches_full_recompute(snapshot: Snapshot, full: dict[str, dict]) -> bool:
    """The collector counted the same whole finished episodes per version, with the same mean return (to float32
    precision: the store sums float32 rewards), as ``store.live_returns``: every step was read, once."""
    if len(snapshot.games) != len(full):
        return False
    for game in snapshot.games:
        shown = {v.version: v for v in game.versions if v.episodes}
        want = full[game.game_id]
        if shown.keys() != want.keys():
            return False
        for version, live in want.items():
            view = shown[version]
            if view.episodes != live.episodes or not math.isclose(view.mean_return, live.mean_return, rel_tol=1e-6):
                return False
    return True


def run_dashboard_bench(cfg: DashboardBenchConfig) -> dict:
    """Fill a fresh store beside a moto bucket, then time the collector's refreshes and the full recompute."""
    check_options(cfg)
    load_before = os.getloadavg()
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.work_dir / "bench.sqlite"
    _remove_store(path)
    settings = Settings(store="sqlite", sqlite=SqliteSettings(path=path))
    moto = aws.MotoServer.start()
    try:
        moto.apply_env()
        ids = game_ids(cfg.games)
        prepare_bucket(settings, ids)
        with open_store(settings) as store:
            result = measure(cfg, settings, store, ids)
    finally:
        moto.stop()  # and restore_env
        _remove_store(path)
        with contextlib.suppress(OSError):
            cfg.work_dir.rmdir()  # when nothing else is in it
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    return {**result, "machine": machine, "load_average": load}


def measure(cfg: DashboardBenchConfig, settings: Settings, store: ExperienceStore, ids: list[str]) -> dict:
    """Fill, then the collector's three kinds of refresh, then the full recompute over the same store."""
    rng = np.random.default_rng(cfg.seed)
    per_game, new_per_game = cfg.transitions // len(ids), cfg.new_steps // len(ids)
    plays = {g: play(per_game + new_per_game * cfg.refreshes, rng) for g in ids}
    _, fill_s, _ = timed(lambda: fill(store, plays, per_game))
    stored, new_steps = per_game * len(ids), new_per_game * len(ids)
    counting = CountingStore(open_store(settings))
    collector = Collector(settings, store_factory=lambda _: cast(ExperienceStore, counting))
    catch_up, idle, busy = Refreshes(), Refreshes(), Refreshes()
    try:
        with counted_s3_requests() as s3:
            while counting.steps_read < stored:  # a dashboard opened on the filled store
                if len(catch_up.wall) > stored // MAX_STEPS_PER_REFRESH + 2:
                    raise RuntimeError(f"catch-up read {counting.steps_read} of {stored} steps")
                refresh(collector, counting, s3, catch_up)
            for _ in range(cfg.refreshes):
                refresh(collector, counting, s3, idle)
            for i in range(cfg.refreshes):
                first = per_game + i * new_per_game
                for game_id, batch in plays.items():  # not timed: ingest's work
                    store.write(game_id, batch[first : first + new_per_game])
                read_before = counting.steps_read
                snapshot = refresh(collector, counting, s3, busy)
                if counting.steps_read - read_before != new_steps:
                    raise RuntimeError(f"a refresh read {counting.steps_read - read_before} of {new_steps} new steps")
    finally:
        collector.close()
    full = [timed(lambda: {g: store.live_returns(g) for g in ids}) for _ in range(FULL_REPEATS)]
    return {
        "store": cfg.store,
        "games": len(ids),
        "transitions": stored,
        "new_steps": new_steps,
        "fill": {
            "seconds": round(fill_s, 2),
            "transitions_per_s": round(stored / fill_s),
            "store_mib": round(_size(settings.sqlite.path) / 2**20),
        },
        "catch_up": {
            "refreshes": len(catch_up.wall),
            "seconds": round(sum(catch_up.wall), 3),
            "cpu_seconds": round(sum(catch_up.cpu), 3),
            "max_refresh_s": round(max(catch_up.wall), 3),
            "steps_per_s": round(stored / sum(catch_up.wall)),
            "s3_requests": sum(catch_up.s3.values()),  # in all: the first refresh reads what never changes
            "store_calls": dict(sorted(catch_up.store.items())),
        },
        "refresh_idle": idle.summary(),
        "refresh_new_steps": {
            **busy.summary(),
            "median_s_per_1k_steps": round(statistics.median(busy.wall) / new_steps * 1000, 5),
            # what reading the new steps adds to an idle refresh
            "marginal_s_per_1k_steps": round(
                (statistics.median(busy.wall) - statistics.median(idle.wall)) / new_steps * 1000, 5
            ),
        },
        "full_recompute": {
            "transitions": stored + new_steps * cfg.refreshes,
            "repeats": FULL_REPEATS,
            "median_s": round(statistics.median(w for _, w, _ in full), 3),
            "median_cpu_s": round(statistics.median(c for _, _, c in full), 3),
        },
        "matches_full_recompute": matches_full_recompute(snapshot, full[-1][0]),
    }


def _size(path: Path) -> int:
    """The SQLite file's bytes with its WAL."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
