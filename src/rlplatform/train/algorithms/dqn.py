"""DQN (double, dueling) for discrete action spaces; the ONNX model outputs Q-values, greedy = argmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.core.columns import Columns
from torch.onnx import symbolic_helper

from rlplatform.train.algorithms.base import DISCRETE, Algorithm, Hyperparameters


@dataclass(frozen=True)
class DQNHyperparameters(Hyperparameters):
    batch_size: int = 128
    learning_starts: int = 1_000
    # Learning from hour-old policies' data slows DQN down.
    replay_window: int = 50_000
    max_replay_ratio: float = 64.0
    lr: float = 5e-4
    gamma: float = 0.99
    # Ape-X's n: rewards reach earlier states n times sooner than with one-step targets.
    n_step: int = 3
    hidden: int = 64
    # Counted in learner updates: data arrives independently of updates. 250 took 11-21k updates to greedy
    # 475 on CartPole, 100 took 9-13k (RLlib alone counts env steps: its 250 meant every ~83 updates at n_step 3).
    target_update_every: int = 100


def _nanmean(g: object, x: object, dim: object, keepdim: object, dtype: object) -> object:
    """``aten::nanmean`` for the TorchScript ONNX exporter (which has none): sum of the non-NaN values over
    their count. RLlib's dueling head uses it; without it every publish fell back to the dynamo exporter,
    ~1.5 s of the learner's 2 cores instead of ~0.15 s, with a page of log per publish."""
    is_nan = g.op("IsNaN", x)
    values = g.op("Where", is_nan, g.op("Constant", value_t=torch.tensor(0.0)), x)
    counts = g.op("Cast", g.op("Not", is_nan), to_i=1)  # 1: FLOAT
    axes = g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(dim, "is", "dim"), dtype=torch.int64))
    keep = symbolic_helper._get_const(keepdim, "i", "keepdim")
    total, count = (g.op("ReduceSum", v, axes, keepdims_i=keep) for v in (values, counts))
    return g.op("Div", total, count)


torch.onnx.register_custom_op_symbolic("aten::nanmean", _nanmean, 13)


class _QValues(torch.nn.Module):
    """obs float32[batch, obs_dim] -> Q-values float32[batch, n], exactly RLlib's Q computation."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.module.compute_q_values({Columns.OBS: obs})["qf_preds"]


class DQN(Algorithm):
    name = "DQN"
    action_spaces = frozenset({DISCRETE})
    hyperparameters_cls = DQNHyperparameters
    output = {"name": "q_values", "kind": "q_values"}

    def rllib_config(self) -> DQNConfig:
        hp = self.hp
        return (
            DQNConfig()
            .training(
                lr=hp.lr,
                gamma=hp.gamma,
                train_batch_size_per_learner=hp.batch_size,
                target_network_update_freq=hp.target_update_every,
                double_q=True,
                dueling=True,
                n_step=hp.n_step,
            )
            .rl_module(
                model_config={
                    "fcnet_hiddens": [hp.hidden],
                    "fcnet_activation": "tanh",
                    "head_fcnet_hiddens": [hp.hidden],
                }
            )
        )

    def policy_head(self, module: torch.nn.Module) -> torch.nn.Module:
        return _QValues(module)
