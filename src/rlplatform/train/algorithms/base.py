"""The Algorithm seam: what the trainer needs from an RLlib algorithm fed by the experience store.

An algorithm module subclasses ``Algorithm`` once and adds one line to the registry
(``rlplatform.train.algorithms.ALGORITHMS``). RLlib owns the losses, optimizers and target networks;
an algorithm here only says how to build RLlib's ``LearnerGroup`` for a game, how store columns become
RLlib's train batch, and how the learned RLModule becomes the ONNX model clients act with.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner_group import LearnerGroup
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch

from rlplatform.games import GameSpec
from rlplatform.infra.ray_cluster import init_ray
from rlplatform.store import TransitionBatch

log = logging.getLogger(__name__)

DISCRETE = "discrete"
BOX = "box"


class AlgorithmConfigError(ValueError):
    """A trainer config names an unknown algorithm, one unfit for the game, or an unknown hyperparameter."""


@dataclass(frozen=True)
class Hyperparameters:
    """The replay knobs every store-fed algorithm has; each algorithm subclasses this with its own defaults.

    batch_size: transitions per learner update, sampled uniformly from the store.
    learning_starts: stored transitions before the first update.
    replay_window: sample only the newest this many rows, like a replay buffer of this capacity.
    max_replay_ratio: at most this many sampled transitions per stored one (stops a fast learner
        overfitting the first episodes while clients are still slow to produce data).
    gamma: the discount.
    n_step: rewards summed over up to this many steps of an episode per transition (1: one-step targets).
    """

    batch_size: int
    learning_starts: int
    replay_window: int
    max_replay_ratio: float
    gamma: float
    n_step: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], algorithm: str) -> Hyperparameters:
        """The defaults with ``values`` over them; ``AlgorithmConfigError`` names an unknown or mistyped key."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in defaults:
                raise AlgorithmConfigError(
                    f"hyperparameters.{key}: not a {algorithm} hyperparameter; allowed: {', '.join(sorted(defaults))}"
                )
            if not _same_kind(value, defaults[key]):
                raise AlgorithmConfigError(
                    f"hyperparameters.{key}: must be like {defaults[key]!r} ({type(defaults[key]).__name__}), "
                    f"got {value!r}"
                )
        hp = cls(**{**defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}})
        for key in ("batch_size", "n_step"):
            if getattr(hp, key) < 1:
                raise AlgorithmConfigError(f"hyperparameters.{key}: must be at least 1, got {getattr(hp, key)}")
        return hp


def _same_kind(value: Any, default: Any) -> bool:
    """JSON/YAML values fit a default's type: ints for ints, any number for floats, lists of ints for tuples."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


class Algorithm(abc.ABC):
    """One RLlib algorithm (new API stack) trained from store samples for one game.

    Class attributes: ``name`` (the registry key, also the manifest's ``algorithm``), ``action_spaces``
    (the kinds of action space it learns: "discrete", "box"), ``hyperparameters_cls`` (its defaults),
    ``output`` (the ONNX output the manifest announces: its name, how a client acts on it and, optionally,
    the output it explores with) and ``publish_every_updates`` (learner updates per published model, unless
    the trainer config says).
    """

    name: ClassVar[str]
    action_spaces: ClassVar[frozenset[str]]
    hyperparameters_cls: ClassVar[type[Hyperparameters]]
    output: ClassVar[dict[str, str]]
    publish_every_updates: ClassVar[int] = 1_000

    def __init__(self, spec: GameSpec, hyperparameters: Mapping[str, Any] | None = None) -> None:
        if reason := self.unfit_reason(spec):
            raise AlgorithmConfigError(reason)
        self.spec = spec
        self.hp = self.hyperparameters_cls.from_mapping(hyperparameters or {}, self.name)

    @classmethod
    def unfit_reason(cls, spec: GameSpec) -> str | None:
        """Why this algorithm cannot learn the game, or None when it can."""
        kind = DISCRETE if spec.discrete else BOX
        if kind not in cls.action_spaces:
            return (
                f"algorithm: {cls.name} learns {'/'.join(sorted(cls.action_spaces))} action spaces, "
                f"but {spec.game_id!r} has a {kind} action space"
            )
        return None

    def build_learner_group(self, seed: int, num_learners: int = 0, ray_address: str | None = None) -> LearnerGroup:
        """RLlib's LearnerGroup for the game's spaces.

        ``num_learners`` 0: the learner runs in this process. N >= 1: N learner actors of one CPU each, placed by
        Ray; with N >= 2 each takes 1/N of every train batch and their gradients are averaged (torch DDP), so
        their weights stay identical. With ``ray_address`` this process first joins that Ray cluster (else the
        actors go to the Ray this process runs in, or a local one).
        """
        obs_space, act_space = self.spec.spaces()
        config = self.rllib_config().environment(observation_space=obs_space, action_space=act_space)
        config = config.debugging(seed=seed)
        if ray_address:
            init_ray(ray_address, ignore_reinit_error=True, log_to_driver=False)
            log.info("joined Ray cluster at %s: the learners run there as Ray actors", ray_address)
        elif num_learners and not ray.is_initialized():  # RLlib would start one itself, taking SIGTERM over
            init_ray(include_dashboard=False, log_to_driver=False)
        if num_learners:
            config = config.learners(num_learners=num_learners, num_cpus_per_learner=1)
        return config.build_learner_group(spaces={DEFAULT_POLICY_ID: (obs_space, act_space)})

    @abc.abstractmethod
    def rllib_config(self) -> AlgorithmConfig:
        """RLlib's config with this algorithm's hyperparameters (spaces, seed and resources are added)."""

    def to_train_batch(self, batch: TransitionBatch, steps: np.ndarray) -> MultiAgentBatch:
        """Store columns -> RLlib's train batch. ``terminated`` alone stops bootstrapping; truncation does not.

        ``steps`` int[n]: the steps each transition's reward sums (``train.n_step``; all 1 for one-step returns).
        """
        n = len(batch)
        columns = {
            Columns.OBS: batch.obs,
            Columns.ACTIONS: self.learner_actions(batch.action),
            Columns.REWARDS: batch.reward,
            Columns.NEXT_OBS: batch.next_obs,
            Columns.TERMINATEDS: batch.terminated,
            Columns.TRUNCATEDS: batch.truncated,
            "n_step": steps.astype(np.float32),
            "weights": np.ones(n, dtype=np.float32),  # uniform sampling: no importance weights
        }
        return MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(columns)}, env_steps=n)

    def learner_actions(self, action: np.ndarray) -> np.ndarray:
        """Stored actions (int64[n] or float32[n, k]) as the learner's module expects them."""
        return action

    @abc.abstractmethod
    def policy_head(self, module: torch.nn.Module) -> torch.nn.Module:
        """A torch module mapping obs float32[batch, obs_dim] to the announced ``output``."""

    def export_onnx(self, module: torch.nn.Module) -> bytes:
        """ONNX bytes of ``policy_head(module)``: input ``obs`` float32[batch, obs_dim], batch dimension dynamic."""
        head = self.policy_head(module).eval()
        dummy = torch.zeros(1, self.spec.obs_dim, dtype=torch.float32)
        names = [self.output["name"], *([self.output["sample"]] if "sample" in self.output else [])]
        axes = {name: {0: "batch"} for name in ("obs", *names)}
        kwargs = dict(input_names=["obs"], output_names=names, dynamic_axes=axes)
        buf = io.BytesIO()
        with torch.no_grad():
            try:
                # The TorchScript exporter takes ~0.1 s; the dynamo one seconds, but covers more operators.
                torch.onnx.export(head, (dummy,), buf, dynamo=False, **kwargs)
            except torch.onnx.errors.UnsupportedOperatorError as exc:
                log.debug("TorchScript ONNX export unsupported (%s); using the dynamo exporter", exc)
                buf = io.BytesIO()
                torch.onnx.export(head, (dummy,), buf, dynamo=True, **kwargs)
        return buf.getvalue()
