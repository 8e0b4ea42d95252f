"""Bot clients that play a gymnasium game, stream experience and follow the newest published model.

Each client is a separate process (``spawn`` context: no inherited threads, locks or boto3 sessions from
the parent). Every client plays uniformly at random until a model exists. A model with a ``sample``
output (SAC: a draw from its squashed Gaussian policy) is then explored with that. Otherwise clients explore
differently, Ape-X style: client ``i`` of ``N`` uses ``eps_i = 0.4 ** (1 + 7 * i / max(N - 1, 1))``, as
the epsilon of epsilon-greedy for a model of Q-values (DQN), or as the standard deviation of Gaussian noise,
in units of half the box's width, added to a model's action and clipped to the box.

Shutdown: SIGTERM/SIGINT (the parent forwards them), the time or episode budget, or the parent's death
(children must never outlive the parent) make a client stop playing, close its producer (flushing every
recorded step), write final stats with ``done: true`` and exit 0 (2 if the flush did not complete).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from .games import GameSpec
from .models import ModelError
from .producer import BufferFullError, ExperienceProducer
from .signing import load_trusted_keys
from .stopping import die_with_parent, set_on_signals
from .subscriber import ModelSubscriber

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
EXIT_FLUSH_INCOMPLETE = 2


class MissingDependencyError(RuntimeError):
    """An optional dependency (the ``simulate`` extra) is not installed."""


@dataclass(frozen=True)
class SimConfig:
    """Everything a client process needs; picklable so it crosses the spawn boundary."""

    game: str
    clients: int
    stream: str
    bucket: str
    seconds: float | None = None
    episodes_per_client: int | None = None
    stats_dir: str | None = None
    poll_seconds: float = 2.0
    chunk_steps: int = 64
    seed: int = 0
    flush_timeout_s: float = 60.0
    client_prefix: str = "client"
    log_level: str = "INFO"
    max_steps_per_second: float | None = None  # Per client; None = as fast as the CPU allows.
    trusted_keys: str | None = None  # PEM bundle of the public keys models must be signed by
    accept_unsigned: bool = False  # development only: load models whose signature is not verified
    # Every client's exploration rate; None: Ape-X's, a different one per client (``epsilon``).
    epsilon: float | None = None


def epsilon(index: int, clients: int) -> float:
    """Ape-X per-client exploration rate: 0.4 for client 0 down to 0.4**8 for the last one."""
    return 0.4 ** (1 + 7 * index / max(clients - 1, 1))


def gaussian_explore(
    action: np.ndarray, low: np.ndarray, high: np.ndarray, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """``action`` float32[k] plus noise of std ``scale`` times half the box's width (1 where unbounded), clipped."""
    width = np.where(np.isfinite(high - low), (high - low) / 2.0, 1.0)
    noisy = action + rng.normal(0.0, 1.0, action.shape) * scale * width
    return np.clip(noisy, low, high).astype(np.float32)


def import_gymnasium() -> Any:
    """Import gymnasium lazily so the SDK core does not depend on it."""
    try:
        import gymnasium
    except ImportError:
        raise MissingDependencyError(
            "gymnasium is required for `simulate`; install it with: pip install 'rlplatform-client[simulate]'"
        ) from None
    return gymnasium


# ---------------------------------------------------------------------- parent


def run_simulation(cfg: SimConfig) -> int:
    """Start ``cfg.clients`` client processes, forward stop signals, wait; 0 iff every client exited 0."""
    gym = import_gymnasium()
    try:
        gym.spec(cfg.game)  # Fail fast, once, rather than in every client.
    except gym.error.Error as exc:
        raise ValueError(f"unknown gymnasium game {cfg.game!r}: {exc}") from None
    if cfg.trusted_keys is not None:
        load_trusted_keys(cfg.trusted_keys)  # A malformed bundle fails here, once (SignatureError is a ValueError).
    elif not cfg.accept_unsigned:
        raise ValueError(
            "no trusted keys: pass --trusted-keys (the PEM bundle `rlplatform keys export` writes), or "
            "--accept-unsigned to play unverified models in development"
        )
    if cfg.stats_dir:
        Path(cfg.stats_dir).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    previous = _install_forwarding_handlers(procs)
    try:
        for i in range(cfg.clients):
            proc = ctx.Process(target=client_main, args=(cfg, i, os.getpid()), name=f"{cfg.client_prefix}-{i}")
            proc.start()
            procs.append(proc)
        _wait_all(procs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = {p.name: p.exitcode for p in procs}
    log.info("clients exited: %s", codes)
    return 0 if all(code == 0 for code in codes.values()) else 1


def _install_forwarding_handlers(procs: list[Any]) -> dict[int, Any]:
    """SIGTERM/SIGINT in the parent -> SIGTERM to every live child (they shut down gracefully)."""

    def forward(signum: int, _frame: Any) -> None:
        log.info("received signal %d: stopping %d clients", signum, len(procs))
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # Exited since the check.
                    os.kill(proc.pid, signal.SIGTERM)

    return {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}


def _wait_all(procs: list[Any]) -> None:
    """Block until every child has exited (wakes on exits; signal handlers still run in between)."""
    while alive := [p for p in procs if p.exitcode is None]:
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=1.0)
    for proc in procs:
        proc.join()


# ---------------------------------------------------------------------- child


def client_main(cfg: SimConfig, index: int, parent_pid: int) -> None:
    """Entry point of a client process."""
    stop = threading.Event()
    set_on_signals(stop)
    die_with_parent()
    client_id = f"{cfg.client_prefix}-{index}"
    logging.basicConfig(level=cfg.log_level, format=f"%(asctime)s {client_id} %(levelname)s %(name)s: %(message)s")
    sys.exit(BotClient(cfg, index, parent_pid, stop).run())


class BotClient:
    """One simulated game client: plays, records every step, follows the newest model."""

    def __init__(self, cfg: SimConfig, index: int, parent_pid: int, stop: threading.Event) -> None:
        self.cfg = cfg
        self.index = index
        self.client_id = f"{cfg.client_prefix}-{index}"
        self.parent_pid = parent_pid
        self.stop = stop
        self.epsilon = epsilon(index, cfg.clients) if cfg.epsilon is None else cfg.epsilon
        self.rng = np.random.default_rng([cfg.seed, index])
        self.episodes = 0
        self.returns: deque[float] = deque(maxlen=20)
        self.steps_rejected = 0
        # Per model version: (its publish stamp, when this client first acted with it), Unix seconds.
        self.pickups: dict[int, tuple[float, float]] = {}
        self.deadline = None if cfg.seconds is None else time.monotonic() + cfg.seconds
        self.next_step_at = time.monotonic()
        self.producer: ExperienceProducer | None = None
        self.subscriber: ModelSubscriber | None = None

    def run(self) -> int:
        gym = import_gymnasium()
        env = gym.make(self.cfg.game)
        env.action_space.seed(int(self.rng.integers(2**31)))
        self.producer = ExperienceProducer(
            self.cfg.stream, self.cfg.game, self.client_id, chunk_steps=self.cfg.chunk_steps
        )
        spec = GameSpec.from_gym_spaces(self.cfg.game, env.observation_space, env.action_space)
        self.subscriber = ModelSubscriber(
            self.cfg.bucket,
            self.cfg.game,
            spec=spec,
            trusted_keys=self.cfg.trusted_keys,
            accept_unsigned=self.cfg.accept_unsigned,
            client_id=self.client_id,  # a release candidate's share of clients is chosen by id
        )
        flushed = False
        try:
            self._play(env)
        finally:
            flushed = self.producer.close(timeout=self.cfg.flush_timeout_s)
            self.write_stats(done=True, flushed=flushed)
            env.close()
        log.info("done: %s", self.producer.stats)
        return 0 if flushed else EXIT_FLUSH_INCOMPLETE

    def should_stop(self) -> bool:
        """Signal, parent death, or budget exhausted."""
        if self.stop.is_set():
            return True
        if os.getppid() != self.parent_pid:
            log.warning("parent %d is gone: stopping", self.parent_pid)
            self.stop.set()
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        return self.cfg.episodes_per_client is not None and self.episodes >= self.cfg.episodes_per_client

    def _play(self, env: Any) -> None:
        next_poll = next_stats = time.monotonic()
        while not self.should_stop():
            obs, _ = env.reset(seed=int(self.rng.integers(2**31)))
            episode_id, episode_return, t = str(uuid.uuid4()), 0.0, 0
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    self._poll()
                    next_poll = now + self.cfg.poll_seconds
                if now >= next_stats:
                    self.write_stats(done=False)
                    next_stats = now + STATS_INTERVAL_S
                self._pace()
                model_version = self.subscriber.version
                action = self._choose(env, obs)
                if model_version and model_version not in self.pickups:
                    self._note_pickup(model_version)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                self._record(episode_id, t, obs, action, reward, next_obs, terminated, truncated, model_version)
                episode_return += float(reward)
                if terminated or truncated:
                    self.episodes += 1
                    self.returns.append(episode_return)
                    break
                if self.should_stop():
                    return
                obs, t = next_obs, t + 1

    def _note_pickup(self, version: int) -> None:
        """The first step this client acts with ``version``: the end of that model's pickup."""
        manifest = self.subscriber.manifest
        if manifest is not None and manifest.version == version:
            self.pickups[version] = (manifest.created_at_unix, time.time())

    def _pace(self) -> None:
        """Optional step-rate cap, so bots on a shared machine leave CPU for the platform."""
        if not self.cfg.max_steps_per_second:
            return
        self.next_step_at = max(self.next_step_at + 1.0 / self.cfg.max_steps_per_second, time.monotonic() - 1.0)
        delay = self.next_step_at - time.monotonic()
        if delay > 0:
            self.stop.wait(delay)  # Wakes immediately on SIGTERM/SIGINT.

    def _choose(self, env: Any, obs: Any) -> Any:
        """Random until a model exists, then the model's own sample if it has one, else epsilon-greedy
        (Q-values) or Gaussian noise (actions) on its action."""
        manifest = self.subscriber.manifest
        if manifest is None:
            return env.action_space.sample()
        if manifest.output_kind == "q_values":
            return env.action_space.sample() if self.rng.random() < self.epsilon else self.subscriber.act(obs)
        if (sampled := self.subscriber.sample(obs)) is not None:
            return sampled
        space = env.action_space
        return gaussian_explore(self.subscriber.act(obs), space.low, space.high, self.epsilon, self.rng)

    def _record(self, episode_id: str, t: int, *args: Any) -> None:
        try:
            self.producer.record(episode_id, t, *args)
        except BufferFullError as exc:  # Kinesis cannot keep up; keep playing, the step is knowingly lost.
            self.steps_rejected += 1
            log.warning("step not recorded: %s", exc)

    def _poll(self) -> None:
        """A failed poll must not stop the game: keep playing with the current model."""
        try:
            self.subscriber.poll()
        except ModelError as exc:
            log.error("model rejected: %s", exc)
        except (ClientError, BotoCoreError) as exc:
            log.warning("model poll failed: %s", exc)

    def write_stats(self, done: bool, flushed: bool | None = None) -> None:
        """Atomically (temp file + os.replace) write {stats_dir}/{client_id}.json."""
        if not self.cfg.stats_dir:
            return
        stats = self.producer.stats
        doc = {
            "client_id": self.client_id,
            "steps_acked": stats["steps_acked"],
            "steps_recorded": stats["steps_recorded"],
            "steps_dropped": stats["steps_dropped"],
            "steps_rejected": self.steps_rejected,
            "episodes": self.episodes,
            "mean_return_last_20": float(np.mean(self.returns)) if self.returns else None,
            "model_version": self.subscriber.version,
            "verified_loads": self.subscriber.verified_loads,
            "rejected_loads": self.subscriber.rejected_loads,
            "pickups": {str(v): list(times) for v, times in self.pickups.items()},
            "epsilon": self.epsilon,
            "done": done,
            "flushed": flushed,
            "pid": os.getpid(),
        }
        path = Path(self.cfg.stats_dir) / f"{self.client_id}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
