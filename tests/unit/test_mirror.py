"""The trainer's replay mirror against real stores: it holds what the store holds, draws uniformly over its
window with the store's follower layout, and neither waits forever on a hole nor skips a write in flight."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from rlplatform.settings import Settings
from rlplatform.store import TransitionBatch
from rlplatform.store.sqlite import SqliteStore
from rlplatform.train import mirror as mirror_module
from rlplatform.train.mirror import ReplayMirror

GAME = "CartPole-v1"


def _episode(n: int, seed: int) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.int64)
    obs = rng.standard_normal((n, 4)).astype(np.float32)
    obs[:, 0] = seed  # which episode a row came from
    obs[:, 1] = t
    return TransitionBatch(
        episode_id=np.array([str(uuid.uuid4())] * n, dtype=object),
        t=t,
        obs=obs,
        action=(t % 2).astype(np.int64),
        reward=np.ones(n, dtype=np.float32),
        next_obs=obs + 1,
        terminated=t == n - 1,
        truncated=np.zeros(n, dtype=bool),
        model_version=np.full(n, 2, dtype=np.int64),
    )


def test_the_mirror_holds_what_the_store_holds_and_draws_with_its_layout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite")
    first, second = _episode(40, seed=0), _episode(25, seed=1)
    store.write(GAME, first)
    mirror = ReplayMirror(store, GAME, capacity=1_000)
    with pytest.raises(LookupError, match="no transitions mirrored"):
        mirror.sample(8, np.random.default_rng(0))
    assert mirror.refresh() == 40
    store.write(GAME, second)
    assert mirror.refresh() == 25 and mirror.refresh() == 0  # each step is read once
    assert len(mirror) == 65

    rows = mirror.sample(3_000, np.random.default_rng(1), follow=2)
    written = TransitionBatch.concat([first, second])
    draws = rows[::3]
    index = (draws.obs[:, 0] * 40 + draws.obs[:, 1]).astype(int)  # the draw's row in ``written``
    np.testing.assert_array_equal(draws.obs, written.obs[index])
    assert draws.episode_id.tolist() == written.episode_id[index].tolist()
    counts = np.bincount(index, minlength=65)
    assert counts.min() > 15 and counts.max() < 80  # uniform: ~46 each
    followers = rows[1::3]  # the step stored next, whichever episode; past the newest a placeholder
    inside = index + 1 < 65
    np.testing.assert_array_equal(followers.obs[inside], written.obs[index[inside] + 1])
    assert set(followers.episode_id[~inside].tolist()) == {""} and set(followers.t[~inside].tolist()) == {-1}


def test_the_mirror_keeps_the_newest_capacity_steps_and_leaves_what_retention_drops(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite")
    for seed in range(4):
        store.write(GAME, _episode(50, seed=seed))
    mirror = ReplayMirror(store, GAME, capacity=60)
    mirror.refresh()
    drawn = mirror.sample(2_000, np.random.default_rng(0))
    assert set(drawn.obs[:, 0].tolist()) == {2.0, 3.0}
    assert drawn.obs[drawn.obs[:, 0] == 2, 1].min() == 40  # the newest 60 of 200: episode 2 from t 40 on
    store.retain(GAME, 20)
    mirror.refresh()
    drawn = mirror.sample(2_000, np.random.default_rng(1))
    assert set(drawn.obs[:, 0].tolist()) == {3.0} and drawn.obs[:, 1].min() == 30


def test_the_mirror_waits_for_a_write_in_flight_then_skips_a_hole(
    cassandra_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cassandra reserves seqs before it writes them: seqs reserved and not (yet) written sit below newer
    steps. The mirror re-reads from the first of them until it appears, or until it is old enough to be a
    hole (a writer that died), and then reads on past it."""
    from rlplatform.store.cassandra import TABLES, CassandraStore

    store = CassandraStore(cassandra_settings.cassandra, rows_per_partition=64)
    try:
        for table in TABLES:
            store._session.execute(f"TRUNCATE {store.keyspace}.{table}", timeout=120)
        store.write(GAME, _episode(10, seed=0))
        store._reserve(GAME, 5)  # a writer reserved seqs 10..14 and has not written them
        store.write(GAME, _episode(7, seed=1))  # seqs 15..21
        mirror = ReplayMirror(store, GAME, capacity=100)
        assert mirror.refresh() == 17 and mirror.cursor == 10  # waits at the gap
        assert mirror.refresh() == 7  # re-reads past it: nothing is skipped while it may still land
        monkeypatch.setattr(mirror_module, "HOLE_AFTER_S", 0.0)
        mirror.refresh()
        assert mirror.cursor == 22  # a hole now: read on past it
        assert set(mirror.sample(500, np.random.default_rng(0)).obs[:, 0].tolist()) == {0.0, 1.0}
    finally:
        store.close()
