"""What ``rlplatform up`` is asked to do (``LaunchConfig``) and what it has observed so far (``Progress``, one
``GameProgress`` per game): the model the launcher updates and the view draws."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rlplatform.games import GameSpec, reward_threshold
from rlplatform.settings import DEFAULT_DASHBOARD_PORT, DEFAULT_MAX_TRANSITIONS_PER_GAME
from rlplatform.store.base import LiveReturns
from rlplatform_client.games import DEFAULT_GAME
from rlplatform_client.releases import ReleaseState
from rlplatform_client.retry import Backoff


@dataclass(frozen=True)
class LaunchConfig:
    # Game id -> target return, in launch order: each game gets its own trainer (and simulated clients).
    targets: Mapping[str, float] = field(default_factory=lambda: {DEFAULT_GAME: reward_threshold(DEFAULT_GAME)})
    clients: int = 4  # simulated clients per gymnasium game
    max_minutes: float = 15.0
    run_dir: Path | None = None
    client_steps_per_second: float = 100.0
    # Every simulated client's exploration rate; None: a different one per client (rlplatform_client.simulate).
    client_epsilon: float | None = None
    eval_episodes: int = 20
    # A game judged by live play is solved once its newest version finished this many episodes on target.
    live_min_episodes: int = 20
    seed: int = 0
    learners: int = 0  # per trainer (TrainerConfig.learners)
    canary_share: float = 0.0  # per game (TrainerConfig.canary_share): 0, every new version is stable at once
    # None: the trainer's own default (TrainerConfig, the algorithm's hyperparameters, its config file).
    algorithm: str | None = None
    trainer_config: Path | None = None
    publish_every_updates: int | None = None
    learning_starts: int | None = None
    max_transitions_per_game: int = DEFAULT_MAX_TRANSITIONS_PER_GAME
    # "sqlite": a file in the run dir; "cassandra": a keyspace of this run's own on the cluster RLP_CASSANDRA_* names.
    store: str = "sqlite"
    # The dashboard's port on 127.0.0.1 (another free one if taken; 0: any); None: no dashboard.
    dashboard_port: int | None = DEFAULT_DASHBOARD_PORT
    drain_timeout_s: float = 120.0
    # Per restartable stage (ingest, the training service) and per trainer (by the service); one more crash fails
    # the run.
    max_restarts: int = 3
    restart_backoff: Backoff = Backoff(base_s=1.0, cap_s=30.0)

    @property
    def games(self) -> tuple[str, ...]:
        return tuple(self.targets)


@dataclass
class GameProgress:
    """What the launcher observed of one game; becomes its part of the summary and its learning curve."""

    game: str
    target: float
    spec: GameSpec | None = None  # None until the game resolves (a gymnasium id, or declared by its clients)
    stored_rows: int = 0  # ever stored: reconciles with transitions_sent
    retained_rows: int = 0  # stored and not yet dropped by retention: what the trainer samples from
    ingest_rate: float = 0.0
    algorithm: str | None = None
    updates: int = 0
    trainer_restarts: int = 0  # by the training service
    # The release state (rlplatform_client.releases) as the clients see it, and the judge's last word on its candidate.
    release: ReleaseState | None = None
    judge: str | None = None
    release_history: list[dict] = field(default_factory=list)  # read once, at the end
    model_version: int = 0
    clients_mean_return: float | None = None
    transitions_sent: int = 0  # acknowledged to the simulated clients
    evals: list[dict] = field(default_factory=list)  # {"seconds", "version", "eval_return"}
    client_curve: list[tuple[float, float]] = field(default_factory=list)
    # Per model version, how the (exploring) clients played it, from the store (each step read once).
    live: dict[int, LiveReturns] = field(default_factory=dict)
    # Per model version, seconds from its publish to the first step any client acted with it.
    pickup_s: dict[int, float] = field(default_factory=dict)
    solved_at: float | None = None
    sent_at_solve: int | None = None

    @property
    def judged_by(self) -> str | None:
        if self.spec is None:
            return None
        return "simulator" if self.spec.simulator is not None else "live play"


@dataclass
class Progress:
    games: dict[str, GameProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    restarts: dict[str, int] = field(default_factory=dict)  # the supervisor's, by stage

    def all_restarts(self) -> dict[str, int]:
        """The stages' restarts and, as ``trainer-{game}``, each trainer's."""
        return self.restarts | {f"trainer-{g.game}": g.trainer_restarts for g in self.games.values()}

    @classmethod
    def of(cls, cfg: LaunchConfig) -> Progress:
        return cls({game: GameProgress(game, target) for game, target in cfg.targets.items()})

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def unsolved(self) -> list[GameProgress]:
        return [g for g in self.games.values() if g.solved_at is None]
