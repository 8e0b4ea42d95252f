"""SAC for continuous (bounded box) action spaces; the ONNX model outputs the deterministic action and one
drawn from the policy (what clients explore with).

RLlib's SAC module acts in [-1, 1]^k (its squashed Gaussian uses the default bounds; RLlib's env
runners rescale to the box). Stored actions are in the game's box, so they are normalised to [-1, 1]
for the learner, and the exported action is the squashed mean scaled back into [low, high].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.columns import Columns
from ray.rllib.utils.numpy import MAX_LOG_NN_OUTPUT, MIN_LOG_NN_OUTPUT

from rlplatform.games import GameSpec
from rlplatform.train.algorithms.base import BOX, Algorithm, Hyperparameters


@dataclass(frozen=True)
class SACHyperparameters(Hyperparameters):
    """Defaults from RLlib's tuned Pendulum example (rllib/tuned_examples/sac/pendulum_sac.py), with
    uniform replay, 3-step returns (its n_step is 2-5; with 3 the greedy return after 2,000 updates was -390
    where one-step targets gave -807..-932) and smaller networks, because the learner's updates per second,
    not data, bound how fast the pipeline learns.

    hidden: the policy's layers, and each Q-network's observation and action encoders.
    fusion_hidden: each Q-network's ReLU layers after joining those two encodings (RLlib's
        ``fusionnet_hiddens``; its default, [256, 256] tanh, took half of every update). One update of batch
        256 on one core without GPU: 43 ms with RLlib's fusion, 21 ms with [64]; 2x256 with RLlib's: 105 ms.
    """

    batch_size: int = 256
    learning_starts: int = 1_000
    replay_window: int = 100_000
    max_replay_ratio: float = 256.0
    actor_lr: float = 2e-4
    critic_lr: float = 8e-4
    alpha_lr: float = 9e-4
    initial_alpha: float = 1.001
    gamma: float = 0.99
    n_step: int = 3
    tau: float = 0.005
    hidden: tuple[int, ...] = (64, 64)
    fusion_hidden: tuple[int, ...] = (64,)


class _PolicyActions(torch.nn.Module):
    """obs float32[batch, obs_dim] -> (action, action_sample), each float32[batch, k] in [low, high].

    ``action``: the squashed mean, what greedy play uses. ``action_sample``: one draw from the policy's
    squashed Gaussian (RLlib's ``TorchSquashedGaussian``, log-std clamped as RLlib does), the action SAC
    explores with; the graph draws the noise itself (ONNX ``RandomNormalLike``).
    """

    def __init__(self, module: torch.nn.Module, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist_inputs = self.module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        mean, log_std = torch.chunk(dist_inputs, 2, dim=-1)
        std = torch.exp(torch.clamp(log_std, MIN_LOG_NN_OUTPUT, MAX_LOG_NN_OUTPUT))
        return self._to_box(mean), self._to_box(mean + std * torch.randn_like(std))

    def _to_box(self, unsquashed: torch.Tensor) -> torch.Tensor:
        unit = (torch.tanh(unsquashed) + 1.0) / 2.0
        return torch.clamp(self.low + unit * (self.high - self.low), self.low, self.high)


class SAC(Algorithm):
    name = "SAC"
    action_spaces = frozenset({BOX})
    hyperparameters_cls = SACHyperparameters
    output = {"name": "action", "kind": "action", "sample": "action_sample"}
    # An update takes ~2x DQN's, so half as many per model (one every ~20 s of learning either way): Pendulum's
    # greedy return crosses -250 anywhere from 2,000 to 4,000 updates, and the model that passes comes sooner.
    publish_every_updates = 500

    @classmethod
    def unfit_reason(cls, spec: GameSpec) -> str | None:
        if reason := super().unfit_reason(spec):
            return reason
        if not all(math.isfinite(b) for b in (*spec.action_low, *spec.action_high)):
            return f"algorithm: SAC squashes actions into a bounded box, but {spec.game_id!r} has unbounded actions"
        return None

    def __init__(self, spec: GameSpec, hyperparameters: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec, hyperparameters)
        self.low = np.asarray(spec.action_low, dtype=np.float32)
        self.high = np.asarray(spec.action_high, dtype=np.float32)

    def rllib_config(self) -> SACConfig:
        hp = self.hp
        return (
            SACConfig()
            .training(
                actor_lr=hp.actor_lr,
                critic_lr=hp.critic_lr,
                alpha_lr=hp.alpha_lr,
                lr=None,
                initial_alpha=hp.initial_alpha,
                target_entropy="auto",
                gamma=hp.gamma,
                tau=hp.tau,
                n_step=hp.n_step,
                twin_q=True,
                train_batch_size_per_learner=hp.batch_size,
                # Soft (tau) target update after every learner update.
                target_network_update_freq=1,
            )
            .rl_module(
                model_config={
                    "fcnet_hiddens": list(hp.hidden),
                    "fcnet_activation": "relu",
                    "head_fcnet_hiddens": [],
                    "fusionnet_hiddens": list(hp.fusion_hidden),
                    "fusionnet_activation": "relu",
                }
            )
        )

    def learner_actions(self, action: np.ndarray) -> np.ndarray:
        """float32[n, k] in [low, high] -> float32[n, k] in [-1, 1], the space RLlib's SAC module acts in."""
        unit = (np.asarray(action, dtype=np.float32).reshape(len(action), -1) - self.low) / (self.high - self.low)
        return np.clip(2.0 * unit - 1.0, -1.0, 1.0).astype(np.float32)

    def policy_head(self, module: torch.nn.Module) -> torch.nn.Module:
        return _PolicyActions(module, self.low, self.high)
