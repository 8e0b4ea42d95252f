"""Data-parallel learners: two learner actors on a local Ray share every update and stay identical; joining Ray
keeps the process's own SIGTERM handler."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import ray
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

from rlplatform.games import game_spec
from rlplatform.infra.ray_cluster import init_ray
from rlplatform.train.algorithms.dqn import DQN
from rlplatform.train.trainer import export_policy, learner_update
from tests.unit.test_trainer import cartpole_batch


def on_sigterm(signum: int, frame: object) -> None:
    """This process's own SIGTERM handler, as a service or trainer sets one before it joins Ray."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def test_joining_ray_leaves_the_processs_sigterm_handler(local_ray: None) -> None:
    # ray.init alone replaces it with one that exits at once: a stopped service would not stop its trainers.
    assert signal.getsignal(signal.SIGTERM) is on_sigterm


def learner_weights(learner_group) -> list[dict[str, np.ndarray]]:
    """Each learner's policy weights, as numpy arrays by parameter name."""
    results = learner_group.foreach_learner(
        lambda learner: {k: v.detach().cpu().numpy() for k, v in learner.module[DEFAULT_POLICY_ID].state_dict().items()}
    )
    return [result.get() for result in results]


def test_two_learners_split_each_batch_and_keep_identical_weights(local_ray: None) -> None:
    algorithm = DQN(game_spec("CartPole-v1"), {"batch_size": 64})
    learner_group = algorithm.build_learner_group(seed=0, num_learners=2)
    try:
        before = learner_weights(learner_group)
        assert len(before) == 2
        for update in range(1, 6):
            batch = cartpole_batch(64, seed=update)
            loss = learner_update(learner_group, algorithm, batch, np.ones(len(batch), np.int64), update)
            assert np.isfinite(loss)
        first, second = learner_weights(learner_group)
        assert first.keys() == second.keys() == before[0].keys()
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        assert any(not np.array_equal(first[name], before[0][name]) for name in first), "no update changed a weight"
        # What a publish exports: the policy the learners share, runnable by a client.
        obs = np.zeros((3, 4), np.float32)
        q_values = ort.InferenceSession(export_policy(learner_group, algorithm)).run(None, {"obs": obs})[0]
        assert q_values.shape == (3, 2) and np.all(np.isfinite(q_values))
    finally:
        learner_group.shutdown()
