"""Greedy evaluation of a policy on a local gymnasium env (reporting only, never training data)."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import onnxruntime as ort

from rlplatform_client.models import INPUT_NAME, greedy_action


def evaluate(act: Callable[[np.ndarray], int | np.ndarray], game_id: str, episodes: int, seed: int = 0) -> float:
    """Mean undiscounted return of ``act`` (float32[obs_dim] -> action) over ``episodes`` episodes."""
    env = gym.make(game_id)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed * 1000 + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(np.asarray(obs, dtype=np.float32)))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return float(np.mean(returns))


def evaluate_onnx(
    onnx_bytes: bytes, game_id: str, output: dict, action_space: dict, episodes: int, seed: int = 0
) -> float:
    """``evaluate`` with the greedy action of an ONNX model; ``output`` and ``action_space`` as in its manifest."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def act(obs: np.ndarray) -> int | np.ndarray:
        row = session.run([output["name"]], {INPUT_NAME: obs[None]})[0][0]
        return greedy_action(row, output["kind"], action_space)

    return evaluate(act, game_id, episodes, seed)
