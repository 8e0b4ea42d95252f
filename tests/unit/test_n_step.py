"""n-step transitions from a store sample: sums stop at an episode's end, a gap, another episode."""

from __future__ import annotations

import numpy as np
import pytest

from rlplatform.store import TransitionBatch
from rlplatform.train.n_step import n_step_transitions


def _rows(keys: list[tuple[str, int]], rewards: list[float], ended: list[bool]) -> TransitionBatch:
    n = len(keys)
    obs = np.arange(n, dtype=np.float32)[:, None].repeat(4, axis=1)
    return TransitionBatch(
        episode_id=np.array([k[0] for k in keys], dtype=object),
        t=np.array([k[1] for k in keys], dtype=np.int64),
        obs=obs,
        action=np.arange(n, dtype=np.int64),
        reward=np.array(rewards, dtype=np.float32),
        next_obs=obs + 100,
        terminated=np.array(ended, dtype=bool),
        truncated=np.zeros(n, dtype=bool),
        model_version=np.zeros(n, dtype=np.int64),
    )


def test_sums_follow_the_episode_and_stop_at_its_end_a_gap_or_a_placeholder() -> None:
    g = 0.5
    rows = _rows(
        [("a", 0), ("a", 1), ("a", 2),   # the whole way: 3 steps
         ("a", 5), ("a", 6), ("a", 7),   # the episode ends at t=6: 2 steps, terminated
         ("a", 8), ("b", 0), ("b", 1),   # another episode follows: 1 step
         ("b", 3), ("b", 5), ("b", 6),   # a gap (t=4 not next): 1 step
         ("c", 9), ("", -1), ("", -1)],  # followers not stored: 1 step
        [1, 2, 4, 1, 2, 4, 1, 2, 4, 1, 2, 4, 8, 0, 0],
        [False, False, False, False, True, False, False, False, False, False, False, False, False, False, False],
    )  # fmt: skip
    out, steps = n_step_transitions(rows, 3, g)
    assert steps.tolist() == [3, 2, 1, 1, 1]
    np.testing.assert_allclose(out.reward, [1 + 0.5 * 2 + 0.25 * 4, 1 + 0.5 * 2, 1, 1, 8])
    assert out.t.tolist() == [0, 5, 8, 3, 9] and out.action.tolist() == [0, 3, 6, 9, 12]
    np.testing.assert_array_equal(out.obs[:, 0], [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(out.next_obs[:, 0], [102, 104, 106, 109, 112])  # the last counted step's
    assert out.terminated.tolist() == [False, True, False, False, False]


def test_one_step_is_the_sample_itself() -> None:
    rows = _rows([("a", 0), ("a", 1)], [1, 2], [False, True])
    out, steps = n_step_transitions(rows, 1, 0.99)
    assert out is rows and steps.tolist() == [1, 1]


def test_rows_must_come_in_whole_groups() -> None:
    with pytest.raises(ValueError, match="not whole groups of n_step=3"):
        n_step_transitions(_rows([("a", 0), ("a", 1)], [1, 1], [False, False]), 3, 0.99)
