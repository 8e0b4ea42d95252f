"""Segments without a server: how a write's rows are cut into stored runs, and found again by seq."""

from __future__ import annotations

import numpy as np

from rlplatform.store.base import GameShapes, TransitionBatch
from rlplatform.store.segments import Pool, encode, split_runs, step_bytes

SHAPES = GameShapes(obs_dim=4, action_dtype=np.dtype(np.int64), action_dim=1)


def _batch(episodes: list[str], t: list[int]) -> TransitionBatch:
    n = len(t)
    obs = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    return TransitionBatch(
        episode_id=np.array(episodes, dtype=object),
        t=np.array(t, dtype=np.int64),
        obs=obs,
        action=np.arange(n, dtype=np.int64) % 2,
        reward=np.linspace(0, 1, n, dtype=np.float32),
        next_obs=obs + 0.5,
        terminated=np.arange(n) == n - 1,
        truncated=np.arange(n) == 0,
        model_version=np.arange(n, dtype=np.int64),
    )


def test_runs_break_at_blocks_episodes_seq_jumps_and_the_size_cap() -> None:
    episodes = np.array(["a"] * 6 + ["b"] * 4, dtype=object)
    seqs = np.array([6, 7, 8, 9, 10, 11, 20, 21, 22, 23], dtype=np.int64)
    rows = np.arange(10, dtype=np.int64)
    runs = split_runs(rows, seqs, episodes, block_steps=8, max_steps=3)
    # block 0: 6,7 | block 1: 8,9,10 (cap 3) | 11 | episode b after a seq jump: 20,21,22 (cap) | 23
    assert [(r.start, r.rows.tolist()) for r in runs] == [
        (6, [0, 1]),
        (8, [2, 3, 4]),
        (11, [5]),
        (20, [6, 7, 8]),
        (23, [9]),
    ]
    assert split_runs(rows[:0], seqs[:0], episodes[:0], 8, 3) == []


def test_a_pool_returns_each_stored_step_by_seq_and_placeholders_elsewhere() -> None:
    batch = _batch(["a"] * 5 + ["b"] * 3, [0, 1, 2, 3, 4, 7, 8, 9])
    rows = np.arange(8, dtype=np.int64)
    seqs = np.array([100, 101, 102, 103, 104, 110, 111, 112], dtype=np.int64)
    runs = split_runs(rows, seqs, batch.episode_id, block_steps=4, max_steps=32)
    stored = [(run.start, *encode(run, batch, batch.obs, batch.next_obs, batch.action[:, None])) for run in runs]
    pool = Pool(SHAPES, stored[::-1])  # in any order, as partitions answer
    assert len(pool) == 8
    index = pool.index(np.array([104, 100, 105, 99, 112, 113], dtype=np.int64))
    assert (index >= 0).tolist() == [True, True, False, False, True, False]
    got = pool.take(index)
    np.testing.assert_array_equal(got.t, [4, 0, -1, -1, 9, -1])
    assert got.episode_id.tolist() == ["a", "a", "", "", "b", ""]
    np.testing.assert_array_equal(got.obs[[0, 1, 4]], batch.obs[[4, 0, 7]])
    np.testing.assert_array_equal(got.next_obs[[0, 1, 4]], batch.next_obs[[4, 0, 7]])
    np.testing.assert_array_equal(got.action, [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(got.reward[[0, 4]], batch.reward[[4, 7]])
    assert got.terminated.tolist() == [False, False, False, False, True, False]
    assert got.truncated.tolist() == [False, True, False, False, False, False]
    np.testing.assert_array_equal(got.model_version, [4, 0, -1, -1, 7, -1])


def test_an_empty_pool_holds_nothing() -> None:
    pool = Pool(SHAPES, [])
    assert len(pool) == 0 and pool.index(np.array([0, 5])).tolist() == [-1, -1]
    assert pool.take(np.array([-1])).t.tolist() == [-1]


def test_step_bytes_counts_every_stored_column() -> None:
    # obs + next_obs (2 x 4 float32), action int64, t int64, reward float32, flags uint8, model_version int64
    assert step_bytes(SHAPES) == 32 + 8 + 8 + 4 + 1 + 8
