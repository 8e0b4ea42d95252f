"""The trainer: RLlib's DQN Learner updated from store samples, publishing ONNX models to S3.

RLlib owns the algorithm (loss, optimizer, target network); this module only feeds it. One training
step, top to bottom: sample ``batch_size`` transitions uniformly from the store -> build a
``SampleBatch`` -> ``LearnerGroup.update``. Every ``publish_every_updates`` updates the Q-network is
exported to ONNX, evaluated greedily on a local env (for the manifest only, never for training data),
the learner state is checkpointed (so a restarted trainer resumes), and the model is published with
its manifest.

An unreachable S3 or store is waited out with capped exponential backoff (``rlplatform_client.retry``),
never a reason to exit. The next version number comes from the registry's versioned keys, so a stale
or bogus latest pointer can neither stop the trainer nor skew its numbering.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner_group import LearnerGroup
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from rlplatform import aws, registry
from rlplatform.games import GameSpec, game_spec
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore, TransitionBatch, open_store, store_endpoint, unavailable_errors
from rlplatform.train.evaluate import evaluate_onnx
from rlplatform.train.export import export_q_network
from rlplatform_client.models import ModelError, ModelManifest
from rlplatform_client.retry import Backoff, RetryStopped, aws_unreachable, retry

log = logging.getLogger(__name__)
ALGORITHM = "DQN"
T = TypeVar("T")


@dataclass(frozen=True)
class TrainerConfig:
    game_id: str = "CartPole-v1"
    batch_size: int = 128
    lr: float = 5e-4
    gamma: float = 0.99
    hidden: int = 64
    # Target-network sync cadence, counted in learner updates (data arrives independently of updates).
    target_update_every: int = 250
    learning_starts: int = 1_000
    # Sample from the newest rows only, like a DQN replay buffer of this capacity: the store keeps
    # all history, but learning from hour-old policies' data slows DQN down.
    replay_window: int = 50_000
    # At most this many sampled transitions per stored transition: stops a fast learner overfitting
    # to the first few episodes while clients are still slow to produce data.
    max_replay_ratio: float = 64.0
    publish_every_updates: int = 1_000
    eval_episodes: int = 5
    seed: int = 0
    # Waits between attempts to reach an unreachable S3 or store.
    unreachable_backoff: Backoff = Backoff()


@dataclass
class TrainerStatus:
    updates: int = 0
    version: int = 0
    stored_rows: int = 0
    loss: float | None = None
    eval_return: float | None = None
    published_at: float | None = None


def build_learner_group(spec: GameSpec, cfg: TrainerConfig, ray_address: str | None = None) -> LearnerGroup:
    """RLlib's DQN LearnerGroup for the game's spaces.

    Without ``ray_address`` the learner runs in this process; with it, this process joins that Ray
    cluster and the learner runs there as an actor (the compose profile's ray-head).
    """
    obs_space, act_space = spec.spaces()
    config = (
        DQNConfig()
        .environment(observation_space=obs_space, action_space=act_space)
        .training(
            lr=cfg.lr,
            gamma=cfg.gamma,
            train_batch_size_per_learner=cfg.batch_size,
            target_network_update_freq=cfg.target_update_every,
            double_q=True,
            dueling=True,
            n_step=1,
        )
        .rl_module(
            model_config={"fcnet_hiddens": [cfg.hidden], "fcnet_activation": "tanh", "head_fcnet_hiddens": [cfg.hidden]}
        )
        .debugging(seed=cfg.seed)
    )
    if ray_address:
        import ray

        ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        config = config.learners(num_learners=1, num_cpus_per_learner=1)
        log.info("joined Ray cluster at %s: the learner runs there as a Ray actor", ray_address)
    return config.build_learner_group(spaces={DEFAULT_POLICY_ID: (obs_space, act_space)})


def to_train_batch(batch: TransitionBatch) -> MultiAgentBatch:
    """Store columns -> RLlib's train batch. ``terminated`` alone stops bootstrapping; truncation does not."""
    n = len(batch)
    columns = {
        Columns.OBS: batch.obs,
        Columns.ACTIONS: batch.action,
        Columns.REWARDS: batch.reward,
        Columns.NEXT_OBS: batch.next_obs,
        Columns.TERMINATEDS: batch.terminated,
        Columns.TRUNCATEDS: batch.truncated,
        "n_step": np.ones(n, dtype=np.float32),  # one-step targets
        "weights": np.ones(n, dtype=np.float32),  # uniform sampling: no importance weights
    }
    return MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(columns)}, env_steps=n)


class Trainer:
    def __init__(
        self,
        settings: Settings,
        cfg: TrainerConfig,
        status_path: Path | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = cfg
        # Set by SIGTERM/SIGINT: ends waits for an unreachable S3 or store (RetryStopped).
        self.stop = stop or threading.Event()
        self._s3_endpoint = aws.s3_client().meta.endpoint_url
        self._store_errors = unavailable_errors(settings)
        self.spec = game_spec(cfg.game_id)
        if not self.spec.discrete:
            raise ValueError(f"game_id: {cfg.game_id!r} has a continuous action space; the DQN trainer needs discrete")
        self.rng = np.random.default_rng(cfg.seed)
        self.learner_group = build_learner_group(self.spec, cfg, settings.ray_address)
        self.status = TrainerStatus()
        self.status_path = status_path
        self.checkpoint_dir = Path(settings.checkpoint_dir) / cfg.game_id
        self._restore()

    def train_step(self, store: ExperienceStore) -> float:
        """One learner update on a uniform store sample; returns the loss."""
        cfg = self.cfg
        batch = self._store(lambda: store.sample(cfg.game_id, cfg.batch_size, self.rng, window=cfg.replay_window))
        self.status.updates += 1
        results = self.learner_group.update(
            batch=to_train_batch(batch), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.status.updates}
        )
        loss = results[0][DEFAULT_POLICY_ID]["total_loss"] if isinstance(results, list) else None
        return float(_peek(loss)) if loss is not None else float("nan")

    def publish(self) -> ModelManifest:
        """Export, evaluate, checkpoint, then publish the next version (after the checkpoint, so a restarted
        trainer never publishes a learner step that was already published)."""
        obs_dim = self.spec.obs_dim
        # Export where the learner lives (this process or a Ray actor); only the ONNX bytes travel.
        results = self.learner_group.foreach_learner(
            lambda learner: export_q_network(learner.module[DEFAULT_POLICY_ID], obs_dim)
        )
        onnx_bytes = next(iter(results)).get()
        eval_return = evaluate_onnx(onnx_bytes, self.cfg.game_id, self.cfg.eval_episodes, seed=self.status.version)
        obs_space, act_space = self.spec.manifest_spaces()
        manifest = ModelManifest.create(
            self.cfg.game_id,
            self._s3(lambda: registry.next_version(self.settings.bucket, self.cfg.game_id)),
            onnx_bytes,
            algorithm=ALGORITHM,
            learner_step=self.status.updates,
            observation_space=obs_space,
            action_space=act_space,
            eval_return=eval_return,
        )
        self._checkpoint()
        self._s3(lambda: registry.publish(self.settings.bucket, manifest, onnx_bytes))
        self.status.version = manifest.version
        self.status.eval_return = eval_return
        self.status.published_at = time.time()
        log.info(
            "published %s v%d (updates %d, eval %.1f)",
            self.cfg.game_id,
            manifest.version,
            self.status.updates,
            eval_return,
        )
        return manifest

    def run(self, stop: threading.Event, max_updates: int | None = None) -> None:
        """Train until ``stop`` is set (or ``max_updates``), publishing at the configured cadence."""
        self.stop = stop
        torch.set_num_threads(1)
        try:
            with self._store(lambda: open_store(self.settings)) as store:
                self._train(store, max_updates)
        except RetryStopped as exc:
            log.info("%s", exc)
        self._write_status()

    def _train(self, store: ExperienceStore, max_updates: int | None) -> None:
        last_count_at = 0.0
        while not self.stop.is_set() and (max_updates is None or self.status.updates < max_updates):
            if time.monotonic() - last_count_at > 1.0:
                self.status.stored_rows = self._store(lambda: store.count(self.cfg.game_id))
                last_count_at = time.monotonic()
                self._write_status()
            if not self._may_update():
                self.stop.wait(0.2)
                continue
            self.status.loss = self.train_step(store)
            if self.status.updates % self.cfg.publish_every_updates == 0:
                self.publish()
        if self.status.updates > 0 and self.status.published_at is None:
            self.publish()

    def _s3(self, call: Callable[[], T]) -> T:
        return self._retry(call, "S3", self._s3_endpoint, aws_unreachable)

    def _store(self, call: Callable[[], T]) -> T:
        errors = self._store_errors
        where = store_endpoint(self.settings)
        return self._retry(call, f"store ({self.settings.store})", where, lambda exc: isinstance(exc, errors))

    def _retry(
        self, call: Callable[[], T], service: str, endpoint: str, unreachable: Callable[[BaseException], bool]
    ) -> T:
        return retry(
            call,
            service=service,
            endpoint=endpoint,
            unreachable=unreachable,
            stop=self.stop,
            backoff=self.cfg.unreachable_backoff,
            logger=log,
        )

    def _may_update(self) -> bool:
        stored = self.status.stored_rows
        if stored < self.cfg.learning_starts:
            return False
        return self.status.updates * self.cfg.batch_size < self.cfg.max_replay_ratio * stored

    def _checkpoint(self) -> None:
        self.learner_group.save_to_path(self.checkpoint_dir / "learner")
        state = self.checkpoint_dir / "trainer.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"updates": self.status.updates}))
        os.replace(tmp, state)

    def _restore(self) -> None:
        """Resume learner weights and counters; the version continues after the highest published one."""
        state = self.checkpoint_dir / "trainer.json"
        if state.exists():
            self.learner_group.restore_from_path(self.checkpoint_dir / "learner")
            self.status.updates = json.loads(state.read_text())["updates"]
            log.info("resumed from %s at update %d", self.checkpoint_dir, self.status.updates)
        versions = self._s3(lambda: registry.published_versions(self.settings.bucket, self.cfg.game_id))
        self.status.version = max(versions, default=0)
        try:
            self._s3(lambda: registry.check_pointer(self.settings.bucket, self.cfg.game_id))
        except ModelError as exc:
            log.warning("latest model pointer is broken (the next publish replaces it): %s", exc)

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.status)))
        os.replace(tmp, self.status_path)


def _peek(value: object) -> float:
    """RLlib's reduced metrics may be plain numbers or Stats objects."""
    return value.peek() if hasattr(value, "peek") else value
