"""The store contract: every ExperienceStore adapter passes these (the Feast "universal tests" idea).

Adapters are listed in ``ADAPTERS``; one that is unreachable here is skipped with its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rlplatform.store import ExperienceStore, TransitionBatch
from rlplatform.store.sqlite import SqliteStore

GAME = "CartPole-v1"


def _sqlite(tmp_path: Path) -> ExperienceStore:
    return SqliteStore(tmp_path / "store.sqlite")


ADAPTERS: dict[str, Callable[[Path], ExperienceStore]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExperienceStore]:
    s = ADAPTERS[request.param](tmp_path)
    yield s
    s.close()


def make_batch(n: int, episode_id: str | None = None, start_t: int = 0, seed: int = 0) -> TransitionBatch:
    """``n`` distinct CartPole-shaped transitions of one episode; obs[:, 0] encodes t for checks."""
    rng = np.random.default_rng(seed)
    t = np.arange(start_t, start_t + n, dtype=np.int64)
    obs = rng.standard_normal((n, 4)).astype(np.float32)
    obs[:, 0] = t
    return TransitionBatch(
        episode_id=np.array([episode_id or str(uuid.uuid4())] * n, dtype=object),
        t=t,
        obs=obs,
        action=(t % 2).astype(np.int64),
        reward=np.ones(n, dtype=np.float32),
        next_obs=obs + 1,
        terminated=t == start_t + n - 1,
        truncated=np.zeros(n, dtype=bool),
        model_version=np.full(n, 3, dtype=np.int64),
    )


def test_write_then_count(store: ExperienceStore) -> None:
    assert store.count(GAME) == 0
    assert store.write(GAME, make_batch(100)) == 100
    assert store.write(GAME, make_batch(50)) == 50
    assert store.count(GAME) == 150


def test_replayed_rows_are_ignored_by_idempotency_key(store: ExperienceStore) -> None:
    episode = str(uuid.uuid4())
    assert store.write(GAME, make_batch(64, episode)) == 64
    # Same keys again (a Kinesis redelivery), plus an overlap with 16 new steps.
    assert store.write(GAME, make_batch(64, episode)) == 0
    assert store.write(GAME, make_batch(32, episode, start_t=48)) == 16
    assert store.count(GAME) == 80


def test_sample_returns_columnar_arrays_of_stored_rows(store: ExperienceStore) -> None:
    episode = str(uuid.uuid4())
    written = make_batch(200, episode)
    store.write(GAME, written)
    sample = store.sample(GAME, 64, np.random.default_rng(1))
    assert len(sample) == 64
    assert sample.obs.dtype == np.float32 and sample.obs.shape == (64, 4)
    assert sample.next_obs.shape == (64, 4)
    assert sample.action.dtype == np.int64 and sample.action.shape == (64,)
    assert sample.terminated.dtype == bool and sample.truncated.dtype == bool
    # Every sampled row is exactly the row written under its key.
    for i, t in enumerate(sample.t):
        assert sample.episode_id[i] == episode
        np.testing.assert_array_equal(sample.obs[i], written.obs[t])
        np.testing.assert_array_equal(sample.next_obs[i], written.next_obs[t])
        assert sample.action[i] == written.action[t]
        assert sample.terminated[i] == written.terminated[t]
    assert set(sample.model_version.tolist()) == {3}


def test_sample_is_uniform_over_rows(store: ExperienceStore) -> None:
    store.write(GAME, make_batch(10))
    sample = store.sample(GAME, 5000, np.random.default_rng(2))
    counts = np.bincount(sample.t, minlength=10)
    # Each of 10 rows expected 500 times; 5 sigma of a binomial(5000, 0.1) is ~106.
    assert counts.min() > 390 and counts.max() < 610


def test_sample_window_draws_only_the_newest_rows(store: ExperienceStore) -> None:
    store.write(GAME, make_batch(100, start_t=0))
    store.write(GAME, make_batch(30, start_t=0, seed=1))  # a newer episode, also t = 0..29
    sample = store.sample(GAME, 2000, np.random.default_rng(3), window=30)
    assert set(sample.episode_id.tolist()) == {store.sample(GAME, 1, np.random.default_rng(0), window=1).episode_id[0]}
    assert set(sample.t.tolist()) == set(range(30))


def test_sample_unknown_game_is_a_clear_error(store: ExperienceStore) -> None:
    with pytest.raises(LookupError, match="no transitions stored"):
        store.sample("Nope-v0", 8, np.random.default_rng(0))


def test_games_are_kept_apart(store: ExperienceStore) -> None:
    store.write(GAME, make_batch(10))
    store.write("Acrobot-v1", _acrobot_batch(7))
    assert store.count(GAME) == 10
    assert store.count("Acrobot-v1") == 7
    assert store.sample("Acrobot-v1", 20, np.random.default_rng(0)).obs.shape == (20, 6)


def test_retention_drops_oldest_rows(store: ExperienceStore) -> None:
    store.write(GAME, make_batch(100, start_t=0))
    assert store.retain(GAME, 30) == 70
    assert store.count(GAME) == 30
    sample = store.sample(GAME, 500, np.random.default_rng(0))
    assert sample.t.min() >= 70


def test_continuous_actions_round_trip(store: ExperienceStore) -> None:
    batch = make_batch(20)
    actions = np.random.default_rng(0).uniform(-2, 2, (20, 1)).astype(np.float32)
    batch = TransitionBatch(**{**batch.__dict__, "action": actions})
    store.write(
        "Pendulum-v1", TransitionBatch(**{**batch.__dict__, "obs": batch.obs[:, :3], "next_obs": batch.next_obs[:, :3]})
    )
    sample = store.sample("Pendulum-v1", 50, np.random.default_rng(0))
    assert sample.action.dtype == np.float32 and sample.action.shape == (50, 1)
    np.testing.assert_array_equal(sample.action[:, 0], actions[sample.t, 0])


def _acrobot_batch(n: int) -> TransitionBatch:
    b = make_batch(n)
    obs6 = np.zeros((n, 6), dtype=np.float32)
    return TransitionBatch(**{**b.__dict__, "obs": obs6, "next_obs": obs6})
