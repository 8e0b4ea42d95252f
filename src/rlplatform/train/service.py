"""The training service: one trainer per declared game, each a Ray actor placed by Ray, watched and restarted.

``rlplatform trainers`` attaches to a Ray cluster (or starts a local Ray) and, every ``poll_s``, reconciles what
runs with the catalog: a trainer for every declared game that is not retired (``train.training``), started
with the game's training document; a trainer whose document changed is restarted with the new one; a retired
or undeclared game's trainer is stopped. A trainer that fails is started again after a backoff, on whichever
node Ray places it (its state is in the bucket, ``train.checkpoints``), at most ``max_restarts`` times in a row
(a trainer that ran ``HEALTHY_S`` before it failed starts a new count: a service that runs for months must not
use its restarts up on crashes weeks apart); a bad training document is reported and nothing is started until it
changes. Each game's state goes to ``trainers/{game_id}/status.json`` in the bucket, where ``rlplatform games
show`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from pydantic import SecretStr

from rlplatform.games import GameCatalog, UnknownGameError
from rlplatform.infra import aws
from rlplatform.infra.ray_cluster import init_ray
from rlplatform.registry import keys
from rlplatform.settings import Settings
from rlplatform.train.algorithms import AlgorithmConfigError
from rlplatform.train.status import status_key
from rlplatform.train.trainer import Trainer, TrainerConfig
from rlplatform.train.training import read_training, retired, training_config, training_key
from rlplatform_client.retry import Backoff

log = logging.getLogger(__name__)

# A trainer's own CPU: it samples the store, runs its learner (in the same process) and evaluates models.
TRAINER_CPUS = 1
# How long a stopping trainer may take to finish its update and leave (then it is killed).
STOP_TIMEOUT_S = 60.0
# A trainer that ran this long before it failed was healthy: its failure is the first of a new count (and
# backoff). Ten minutes, as Kubernetes resets a container's crash backoff.
HEALTHY_S = 600.0


class TrainerActor:
    """One game's trainer in a Ray actor. Threaded (``max_concurrency=2``): ``run`` holds one thread for as long
    as the trainer trains; ``status`` and ``stop`` answer on the other."""

    def __init__(self, settings: Settings, cfg: TrainerConfig) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("botocore").setLevel(logging.WARNING)  # one line per client made, in every trainer
        self.settings, self.cfg = settings, cfg
        self.stopping = threading.Event()
        self.trainer: Trainer | None = None

    def run(self) -> dict[str, Any]:
        """Train until ``stop``; returns the final status. Raises what stopped the trainer otherwise."""
        self.trainer = Trainer(self.settings, self.cfg, stop=self.stopping)
        try:
            self.trainer.run(self.stopping)
        finally:
            self.trainer.close()
        return asdict(self.trainer.status)

    def status(self) -> dict[str, Any]:
        return {} if self.trainer is None else asdict(self.trainer.status)

    def node(self) -> dict[str, Any]:
        """Where this trainer runs: its Ray node, and its process there (what an operator inspects or kills)."""
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def stop(self) -> None:
        self.stopping.set()


@dataclass
class GameTrainer:
    """What the service knows of one game's trainer."""

    doc: dict[str, Any]  # the training document it was started with (or refused for)
    state: str = "starting"  # starting | running | restarting | failed | config_error | retired
    error: str | None = None
    restarts: int = 0  # in all, as shown
    failures_in_a_row: int = 0  # what the restart limit and the backoff count
    started_at: float = 0.0
    restart_at: float = 0.0
    actor: Any = None
    run_ref: Any = None
    node: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)

    def failed(self, error: str, now: float, max_restarts: int, backoff: Backoff) -> bool:
        """Count a failure of the trainer started at ``started_at``: True, with its restart due at ``restart_at``,
        while ``max_restarts`` in a row are not used up; else its state is ``failed``."""
        self.error = error
        if now - self.started_at >= HEALTHY_S:
            self.failures_in_a_row = 0
        if self.failures_in_a_row >= max_restarts:
            self.state = "failed"
            return False
        self.failures_in_a_row += 1
        self.restarts += 1
        self.state, self.restart_at = "restarting", now + backoff.delay(self.failures_in_a_row)
        return True

    def document(self, game_id: str) -> dict[str, Any]:
        return {
            "game_id": game_id,
            "state": self.state,
            "error": self.error,
            "restarts": self.restarts,
            **self.node,
            **{k: self.progress[k] for k in ("algorithm", "updates", "version", "judge") if k in self.progress},
            "training": self.doc,
            "updated_at": time.time(),
        }


class TrainingService:
    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        poll_s: float = 5.0,
        max_restarts: int = 3,
        backoff: Backoff | None = None,
        local_cpus: int | None = None,
    ) -> None:
        self.settings = settings
        self.local_cpus = local_cpus
        self.stop = stop
        self.poll_s = poll_s
        self.max_restarts = max_restarts
        self.backoff = backoff or Backoff()
        self.catalog = GameCatalog(settings.bucket, recheck_s=poll_s)
        self.games: dict[str, GameTrainer] = {}
        self._written: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        """Attach to Ray (``settings.ray_address``, else a local Ray of ``local_cpus`` logical CPUs) and reconcile
        until ``stop`` is set."""
        keys.signing_key(self.settings)  # a missing signing key fails here, not in every trainer
        if self.settings.ray_address:
            init_ray(self.settings.ray_address, log_to_driver=True)
        else:  # no dashboard: on a laptop its processes would take CPU from the trainers
            init_ray(num_cpus=self.local_cpus, include_dashboard=False, log_to_driver=True)
        log.info("training service attached to Ray (%s)", self.settings.ray_address or "local")
        try:
            while not self.stop.is_set():
                self.reconcile()
                self.stop.wait(self.poll_s)
        finally:
            log.info("training service stopping: stopping its trainers")
            for game in self.games.values():  # all at once: each finishes its update meanwhile
                if game.actor is not None:
                    game.actor.stop.remote()
            for game_id, game in self.games.items():
                self._stop_trainer(game_id)
                with contextlib.suppress(Exception):  # best effort: the bucket may be what failed
                    self._publish_status(game_id, game)
            ray.shutdown()

    def reconcile(self) -> None:
        """One pass: start, restart or stop trainers so that every declared, unretired game has one."""
        declared = self.catalog.declared_ids()
        for game_id in sorted(declared):
            self._reconcile_game(game_id)
        for game_id in sorted(set(self.games) - declared):
            log.info("%s is no longer declared: stopping its trainer", game_id)
            self._stop_trainer(game_id)
            del self.games[game_id]
        for game_id, game in self.games.items():
            self._publish_status(game_id, game)

    def _reconcile_game(self, game_id: str) -> None:
        try:
            doc = read_training(self.settings.bucket, game_id)
        except AlgorithmConfigError as exc:
            doc = {"unreadable": str(exc)}
        game = self.games.get(game_id)
        if game is not None and game.doc != doc:
            log.info("%s: training document changed: restarting its trainer with it", game_id)
            self._stop_trainer(game_id)
            game = None
        if game is None:
            game = self.games[game_id] = GameTrainer(doc)
            self._start(game_id, game)
        elif game.run_ref is not None:
            self._check(game_id, game)
        elif game.state == "restarting" and time.monotonic() >= game.restart_at:
            self._start(game_id, game)

    def _start(self, game_id: str, game: GameTrainer) -> None:
        if "unreadable" in game.doc:
            self._refuse(game_id, game, game.doc["unreadable"])
            return
        if retired(game.doc):
            game.state, game.error = "retired", None
            return
        try:
            spec = self.catalog.resolve(game_id)
            cfg = training_config(spec, game.doc, f"s3://{self.settings.bucket}/{training_key(game_id)}")
        except (AlgorithmConfigError, UnknownGameError) as exc:
            self._refuse(game_id, game, str(exc))
            return
        # No Ray address: the actor already runs in the cluster (learner actors, if any, join it there). The
        # signing key travels with the settings, as the actor's node may not hold the service's key file.
        pem = SecretStr(keys.private_pem(keys.signing_key(self.settings)).decode())
        settings = self.settings.model_copy(update={"ray_address": None, "signing_key": pem, "signing_key_file": None})
        remote = ray.remote(TrainerActor).options(
            num_cpus=TRAINER_CPUS,
            # Over as many nodes as there are: losing one loses as few trainers as can be.
            scheduling_strategy="SPREAD",
            max_concurrency=2,
            name=f"trainer-{game_id}",
            runtime_env={"env_vars": aws.client_env()},
        )
        game.actor = remote.remote(settings, cfg)
        game.run_ref = game.actor.run.remote()
        game.state, game.error, game.started_at = "running", None, time.monotonic()
        log.info("%s: trainer started (%s, restarts %d)", game_id, cfg.algorithm, game.restarts)

    def _refuse(self, game_id: str, game: GameTrainer, error: str) -> None:
        game.state, game.error = "config_error", error
        log.error("%s: not training it: %s", game_id, error)

    def _check(self, game_id: str, game: GameTrainer) -> None:
        """Note where the trainer runs and how far it is; handle its end."""
        ready, _ = ray.wait([game.run_ref], timeout=0)
        if not ready:
            try:
                game.node = game.node or ray.get(game.actor.node.remote(), timeout=10)
                game.progress = ray.get(game.actor.status.remote(), timeout=10)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                pass  # busy or gone: the run reference says which
            return
        refused = None
        try:
            game.progress = ray.get(game.run_ref)
            error = "the trainer stopped by itself"
        except AlgorithmConfigError as exc:  # e.g. a checkpoint of other networks: a restart would not help
            refused = error = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever ended it (a crash, its node lost), it is restarted
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        ray.kill(game.actor)  # its run ended, but the actor (and its CPU) stays until killed
        game.actor = game.run_ref = None
        game.node = {}
        if refused is not None:
            self._refuse(game_id, game, refused)
            return
        restarting = game.failed(error, time.monotonic(), self.max_restarts, self.backoff)
        in_a_row, limit = game.failures_in_a_row, self.max_restarts
        if restarting:
            log.warning("%s: trainer failed (%s); restart %d of %d in a row", game_id, error, in_a_row, limit)
        else:
            log.error("%s: trainer failed (%s) after %d restarts in a row; not restarting it", game_id, error, in_a_row)

    def _stop_trainer(self, game_id: str) -> None:
        game = self.games.get(game_id)
        if game is None or game.actor is None:
            return
        game.actor.stop.remote()
        try:
            game.progress = ray.get(game.run_ref, timeout=STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - stopping: whatever it raised, it is going away
            log.warning("%s: trainer did not stop cleanly: %s", game_id, exc)
        ray.kill(game.actor)
        game.actor = game.run_ref = None
        game.state = "stopped"
        updates, version = game.progress.get("updates"), game.progress.get("version")
        log.info("%s: trainer stopped (updates %s, version %s)", game_id, updates, version)

    def _publish_status(self, game_id: str, game: GameTrainer) -> None:
        document = game.document(game_id)
        comparable = {k: v for k, v in document.items() if k != "updated_at"}
        if self._written.get(game_id) == comparable:
            return
        body = json.dumps(document, indent=2).encode()
        aws.s3_client().put_object(Bucket=self.settings.bucket, Key=status_key(game_id), Body=body)
        self._written[game_id] = comparable
