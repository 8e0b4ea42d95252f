"""The trainer: an RLlib Learner updated from samples of the store, publishing ONNX models to S3.

The algorithm is a plug-in (``rlplatform.train.algorithms``), chosen per game: the default for its
action space, a trainer config file, or ``--algorithm``. RLlib owns the algorithm (losses, optimizers,
target networks); this module only feeds it. One training step, top to bottom: sample ``batch_size``
transitions uniformly from the replay mirror (``train.mirror``: the newest ``replay_window`` stored steps,
each read from the store once), each with the steps stored after it -> ``n_step``-step transitions -> the
algorithm's train batch -> ``LearnerGroup.update``; the next sample is drawn while the update runs. Every
``publish_every_updates`` updates the policy is exported to ONNX, evaluated greedily on a local env
(for the manifest only, never for training data), the learner state is checkpointed in the bucket (so a
trainer restarted on any node resumes, ``train.checkpoints``), and the model is published with its manifest.

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
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from ray.rllib.core.learner.learner_group import LearnerGroup
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from rlplatform import registry
from rlplatform.games import GameCatalog
from rlplatform.infra import aws
from rlplatform.registry import keys
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore, TransitionBatch, open_store, wait_for_store
from rlplatform.train import checkpoints
from rlplatform.train.algorithms import (
    Algorithm,
    AlgorithmConfigError,
    Hyperparameters,
    algorithm_class,
    known_algorithm,
)
from rlplatform.train.evaluate import evaluate_onnx
from rlplatform.train.mirror import ReplayMirror
from rlplatform.train.n_step import n_step_transitions
from rlplatform.train.releasing import JUDGE_EVERY_S, Releaser
from rlplatform_client.games import DEFAULT_GAME
from rlplatform_client.models import ModelError, ModelManifest
from rlplatform_client.retry import Backoff, RetryStopped, aws_unreachable, retry

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TrainerConfig:
    game_id: str = DEFAULT_GAME
    # None: the default for the game's action space (rlplatform.train.algorithms.DEFAULT_BY_ACTION_SPACE).
    algorithm: str | None = None
    # Over the algorithm's own defaults (its Hyperparameters dataclass), e.g. {"batch_size": 64}.
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    # None: the algorithm's (Algorithm.publish_every_updates).
    publish_every_updates: int | None = None
    # Learner actors (Algorithm.build_learner_group); 0: in this process, or 1 on the cluster RLP_RAY_ADDRESS names.
    learners: int = 0
    # Of the game's clients, the share that plays a new version as the release candidate (rlplatform.release);
    # 0: every new version is the stable one at once.
    canary_share: float = 0.0
    eval_episodes: int = 5
    seed: int = 0
    # Waits between attempts to reach an unreachable S3 or store.
    unreachable_backoff: Backoff = Backoff()


def read_config_file(path: Path, allowed: Collection[str] = ("algorithm", "hyperparameters")) -> dict[str, Any]:
    """A per-game trainer config, JSON or YAML: ``{"algorithm": "SAC", "hyperparameters": {...}}``, both optional
    (or any of the keys ``allowed``, e.g. a training document's).

    Raises ``AlgorithmConfigError`` naming the field that is wrong.
    """
    import yaml  # YAML is a superset of JSON: one parser reads both

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AlgorithmConfigError(f"{path}: neither JSON nor YAML: {exc}") from None
    return checked_config(doc, str(path), allowed)


def checked_config(doc: object, where: str, allowed: Collection[str] = ("algorithm", "hyperparameters")) -> dict:
    """``doc`` (a parsed trainer config from ``where``) if its keys are ``allowed`` and its ``algorithm`` and
    ``hyperparameters`` have the right types; ``AlgorithmConfigError`` naming the field otherwise."""
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise AlgorithmConfigError(f"{where}: must be a mapping with keys {', '.join(allowed)}")
    if unknown := sorted(set(doc) - set(allowed)):
        raise AlgorithmConfigError(f"{where}: {unknown[0]}: unknown key; allowed: {', '.join(allowed)}")
    if not isinstance(doc.get("algorithm", ""), str):
        raise AlgorithmConfigError(f"{where}: algorithm: must be a string, got {doc['algorithm']!r}")
    if not isinstance(doc.get("hyperparameters", {}), dict):
        raise AlgorithmConfigError(f"{where}: hyperparameters: must be a mapping, got {doc['hyperparameters']!r}")
    return doc


def trainer_config(
    game_id: str,
    *,
    config_file: Path | None = None,
    algorithm: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    **loop: Any,
) -> TrainerConfig:
    """The game's ``TrainerConfig``: the config file's algorithm and hyperparameters, with ``algorithm`` and
    ``hyperparameters`` (the command line's) over them; ``loop`` sets the other ``TrainerConfig`` fields."""
    doc = read_config_file(config_file) if config_file is not None else {}
    return TrainerConfig(
        game_id=game_id,
        algorithm=algorithm or doc.get("algorithm"),
        hyperparameters={**doc.get("hyperparameters", {}), **(hyperparameters or {})},
        **loop,
    )


@dataclass
class TrainerStatus:
    algorithm: str | None = None
    updates: int = 0
    version: int = 0
    stored_rows: int = 0
    loss: float | None = None
    eval_return: float | None = None
    published_at: float | None = None
    judge: str | None = None  # the judge's last word on the release candidate, if there is one


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
        if cfg.algorithm is not None:
            known_algorithm(cfg.algorithm)  # a typo fails before any S3 or store call
        keys.signing_key(settings)  # so does a missing or malformed signing key, not the first publish
        # Declared in the bucket's catalog, else a gymnasium id: a game needs no environment here.
        self.spec = GameCatalog(settings.bucket).wait_for(cfg.game_id, self.stop, log)
        self.algorithm: Algorithm = algorithm_class(self.spec, cfg.algorithm)(self.spec, cfg.hyperparameters)
        self.hp = self.algorithm.hp
        self.publish_every = cfg.publish_every_updates or self.algorithm.publish_every_updates
        log.info("%s learns %s with %s", self.algorithm.name, cfg.game_id, self.hp)
        self.rng = np.random.default_rng(cfg.seed)
        learners = cfg.learners or (1 if settings.ray_address else 0)
        self.learner_group = self.algorithm.build_learner_group(cfg.seed, learners, settings.ray_address)
        self.status = TrainerStatus(algorithm=self.algorithm.name)
        self.status_path = status_path
        self.releaser = Releaser(settings, cfg.game_id, cfg.canary_share, self._s3, self._store)
        self._restore()

    def train_step(self, sampler: PrefetchingSampler) -> float:
        """One learner update on a uniform store sample (read while the previous update ran); returns the loss."""
        batch, steps = sampler.take()
        self.status.updates += 1
        return learner_update(self.learner_group, self.algorithm, batch, steps, self.status.updates)

    def publish(self) -> ModelManifest:
        """Export, evaluate, checkpoint, then publish the next version (after the checkpoint, so a restarted
        trainer never publishes a learner step that was already published)."""
        algorithm = self.algorithm
        onnx_bytes = export_policy(self.learner_group, algorithm)
        obs_space, act_space = self.spec.manifest_spaces()
        eval_return = None  # a game without a simulator is judged by live play only (rlplatform models)
        if self.spec.simulator is not None:
            episodes, seed = self.cfg.eval_episodes, self.status.version
            eval_return = evaluate_onnx(onnx_bytes, self.spec.simulator, algorithm.output, act_space, episodes, seed)
        manifest = ModelManifest.create(
            self.cfg.game_id,
            self._s3(lambda: registry.next_version(self.settings.bucket, self.cfg.game_id)),
            onnx_bytes,
            algorithm=algorithm.name,
            learner_step=self.status.updates,
            observation_space=obs_space,
            action_space=act_space,
            eval_return=eval_return,
            output=algorithm.output,
        )
        self._checkpoint()
        signing = keys.signing_keys(self.settings)  # read at each publish: a rotated key needs no restart
        self._s3(lambda: registry.publish(self.settings.bucket, manifest, onnx_bytes, signing.signing))
        self.releaser.propose(manifest, signing)
        self.status.version = manifest.version
        self.status.eval_return = eval_return
        self.status.published_at = time.time()
        log.info(
            "published %s v%d (updates %d, simulator eval %s)",
            self.cfg.game_id,
            manifest.version,
            self.status.updates,
            "-" if eval_return is None else f"{eval_return:.1f}",
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

    def close(self) -> None:
        """Stop the learner (its Ray actor, on a cluster) while Ray is still connected: left to RLlib's
        ``__del__`` at interpreter exit, it re-initialises Ray and the process hangs instead of exiting
        (seen after a crash under a Ray head), so no supervisor could restart it."""
        self.learner_group.shutdown()

    def _train(self, store: ExperienceStore, max_updates: int | None) -> None:
        last_count_at = judged_at = 0.0
        mirror = ReplayMirror(store, self.cfg.game_id, self.hp.replay_window)
        with PrefetchingSampler(lambda: self._store(lambda: sample_transitions(mirror, self.hp, self.rng))) as sampler:
            while not self.stop.is_set() and (max_updates is None or self.status.updates < max_updates):
                if time.monotonic() - last_count_at > 1.0:
                    self.status.stored_rows = self._store(lambda: store.count(self.cfg.game_id))
                    last_count_at = time.monotonic()
                    self._write_status()
                if time.monotonic() - judged_at > JUDGE_EVERY_S:
                    self.status.judge = self.releaser.judge(store)
                    judged_at = time.monotonic()
                if not self._may_update():
                    self.stop.wait(0.2)
                    continue
                self.status.loss = self.train_step(sampler)
                if self.status.updates % self.publish_every == 0:
                    self.publish()
        if self.status.updates > 0 and self.status.published_at is None:
            self.publish()

    def _s3(self, call: Callable[[], T]) -> T:
        return retry(
            call,
            service="S3",
            endpoint=self._s3_endpoint,
            unreachable=aws_unreachable,
            stop=self.stop,
            backoff=self.cfg.unreachable_backoff,
            logger=log,
        )

    def _store(self, call: Callable[[], T]) -> T:
        return wait_for_store(self.settings, call, stop=self.stop, backoff=self.cfg.unreachable_backoff, logger=log)

    def _may_update(self) -> bool:
        stored = self.status.stored_rows
        if stored < self.hp.learning_starts:
            return False
        return self.status.updates * self.hp.batch_size < self.hp.max_replay_ratio * stored

    def _checkpoint(self) -> None:
        written_by = {"algorithm": self.algorithm.name, "hyperparameters": asdict(self.hp)}
        state = {"updates": self.status.updates, **written_by}
        self._s3(lambda: checkpoints.save(self.settings.bucket, self.cfg.game_id, self.learner_group, state))

    def _restore(self) -> None:
        """Resume learner weights and counters from the bucket (whichever node wrote them); the version
        continues after the highest published one."""
        packed = self._s3(lambda: checkpoints.fetch(self.settings.bucket, self.cfg.game_id))
        if packed is not None:
            with checkpoints.unpacked(packed) as checkpoint:
                self._resume(checkpoint)
        versions = self._s3(lambda: registry.published_versions(self.settings.bucket, self.cfg.game_id))
        self.status.version = max(versions, default=0)
        try:
            self._s3(lambda: registry.check_pointer(self.settings.bucket, self.cfg.game_id))
        except ModelError as exc:
            log.warning("latest model pointer is broken (the next publish replaces it): %s", exc)

    def _resume(self, checkpoint: checkpoints.Checkpoint) -> None:
        where = checkpoints.checkpoint_url(self.settings.bucket, self.cfg.game_id)
        try:
            self.learner_group.restore_from_path(checkpoint.learner_dir)
        except RuntimeError as exc:  # torch: the saved weights' shapes differ from these networks'
            doc = checkpoint.state
            written_by = f"{doc.get('algorithm', '?')} with {doc.get('hyperparameters', '(not recorded)')}"
            raise AlgorithmConfigError(
                f"{where}: its networks do not fit {self.algorithm.name} with {asdict(self.hp)}; "
                f"it was written by {written_by}. Train with those, or delete the object to start afresh"
            ) from exc
        self.status.updates = checkpoint.state["updates"]
        log.info("resumed from %s at update %d", where, self.status.updates)

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.status)))
        os.replace(tmp, self.status_path)


class PrefetchingSampler:
    """Reads the next sample while the learner trains on the current one, so drawing it (and the replay
    mirror's refreshes from the store, round trips included) overlaps the update. One sample in flight at a
    time, drawn in order: the draws are the ones sampling in line would make."""

    def __init__(self, draw: Callable[[], T]) -> None:
        self._draw = draw
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-prefetch")
        self._next: Future[T] | None = None

    def take(self) -> T:
        """The sample read ahead (or, the first time, one read now); starts reading the next."""
        current = self._draw() if self._next is None else self._next.result()
        self._next = self._thread.submit(self._draw)
        return current

    def __enter__(self) -> PrefetchingSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def sample_transitions(
    mirror: ReplayMirror, hp: Hyperparameters, rng: np.random.Generator
) -> tuple[TransitionBatch, np.ndarray]:
    """``hp.batch_size`` uniform draws from the newest ``hp.replay_window`` stored steps (the mirror's
    capacity) as ``hp.n_step``-step transitions, and the steps each one sums (``train.n_step``)."""
    mirror.refresh_if_due()
    rows = mirror.sample(hp.batch_size, rng, follow=hp.n_step - 1)
    return n_step_transitions(rows, hp.n_step, hp.gamma)


def export_policy(learner_group: LearnerGroup, algorithm: Algorithm) -> bytes:
    """The policy as ONNX bytes, exported where the first learner lives (this process or a Ray actor): only the
    bytes travel. Data-parallel learners hold identical weights, each wrapped for DDP: the module inside the
    wrapper is the one exported."""
    first = next(iter(learner_group.foreach_learner(
        lambda learner: algorithm.export_onnx(learner.module[DEFAULT_POLICY_ID].unwrapped())
    )))  # fmt: skip
    if not first.ok:
        raise RuntimeError(f"exporting the policy failed on its learner: {first.get()}")
    return first.get()


def learner_update(
    learner_group: LearnerGroup, algorithm: Algorithm, batch: TransitionBatch, steps: np.ndarray, updates: int
) -> float:
    """One RLlib update on store transitions (``updates``: this one's count); returns the loss."""
    # Target-network cadences count these "timesteps": here learner updates, since data arrives on its own.
    results = learner_group.update(
        batch=algorithm.to_train_batch(batch, steps), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: updates}
    )
    loss = results[0][DEFAULT_POLICY_ID]["total_loss"] if isinstance(results, list) else None
    return float(_peek(loss)) if loss is not None else float("nan")


def _peek(value: object) -> float:
    """RLlib's reduced metrics may be plain numbers or Stats objects."""
    return value.peek() if hasattr(value, "peek") else value
