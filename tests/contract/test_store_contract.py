"""The store contract: every ExperienceStore adapter passes these (the Feast "universal tests" idea).

Adapters are listed in ``ADAPTERS``; one that is unreachable here is skipped with its reason.

Cassandra is the ``cassandra_settings`` fixture's (``tests/conftest.py``): a cluster named by
``RLP_TEST_CASSANDRA_CONTACT_POINTS``, else a real node started on this machine from Maven's jars (CI), else a
container. Tables are truncated between tests (Cassandra / ScyllaDB; Amazon
Keyspaces has no TRUNCATE, so point this suite at one of those).

Retention: both adapters implement ``retain()`` (SQLite deletes by seq; Cassandra deletes whole partitions
plus one clustering range), so ``test_retention_drops_oldest_rows`` runs for both. Cassandra's primary
retention is the TTL, checked by ``test_rows_expire_after_ttl`` (SQLite has no TTL: not applicable there).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore, TransitionBatch
from rlplatform.store.sqlite import SqliteStore

GAME = "CartPole-v1"


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> ExperienceStore:
    return SqliteStore(tmp_path / "store.sqlite")


def _cassandra(request: pytest.FixtureRequest, tmp_path: Path, **kwargs: object) -> ExperienceStore:
    settings: Settings = request.getfixturevalue("cassandra_settings")
    from rlplatform.store.cassandra import TABLES, CassandraStore

    store = CassandraStore(settings.cassandra, **kwargs)
    for table in TABLES:  # every test starts from empty tables
        store._session.execute(f"TRUNCATE {settings.cassandra.keyspace}.{table}", timeout=120)
    return store


def _cassandra_small_partitions(request: pytest.FixtureRequest, tmp_path: Path) -> ExperienceStore:
    """Cassandra with partitions of two blocks: every test's rows span partitions and blocks, as a large
    table's do (a game's own partitions hold up to 32,768 steps)."""
    return _cassandra(request, tmp_path, rows_per_partition=64)


ADAPTERS: dict[str, Callable[[pytest.FixtureRequest, Path], ExperienceStore]] = {
    "sqlite": _sqlite,
    "cassandra": _cassandra,
    "cassandra-small-partitions": _cassandra_small_partitions,
}


@pytest.fixture(params=sorted(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExperienceStore]:
    s = ADAPTERS[request.param](request, tmp_path)
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


def test_a_step_re_sent_with_other_content_keeps_the_first_and_is_reported(store: ExperienceStore) -> None:
    episode = str(uuid.uuid4())
    first = make_batch(8, episode)
    assert store.write(GAME, first) == 8
    assert store.conflicting(GAME, first) == []  # an exact replay is no conflict
    resent = make_batch(8, episode, seed=1)  # same keys, other observations for steps 1..7 (obs[:, 0] is t)
    resent.reward[0] = 2.0
    resent.model_version[3] = 4
    assert store.write(GAME, resent) == 0
    assert store.conflicting(GAME, resent) == list(range(8))
    stored = store.sample(GAME, 64, np.random.default_rng(0))
    by_t = {int(t): i for i, t in enumerate(stored.t)}
    for t, i in by_t.items():
        np.testing.assert_array_equal(stored.obs[i], first.obs[t])
        assert stored.reward[i] == first.reward[t] and stored.model_version[i] == first.model_version[t]
    # Keys that are not stored are no conflict either.
    assert store.conflicting(GAME, make_batch(4)) == []


def episode(n: int, version: int, reward: float, ended: str = "terminated", start_t: int = 0) -> TransitionBatch:
    """One episode's steps ``start_t..start_t+n-1`` played by ``version``, each earning ``reward``."""
    batch = make_batch(n, start_t=start_t)
    batch.model_version[:] = version
    batch.reward[:] = reward
    batch.terminated[:] = False
    if ended:
        getattr(batch, ended)[-1] = True
    return batch


def test_live_returns_count_whole_finished_episodes_of_one_version(store: ExperienceStore) -> None:
    assert store.live_returns(GAME) == {}
    for batch in (
        episode(10, version=0, reward=1.0),
        episode(30, version=0, reward=1.0, ended="truncated"),  # a time limit ends an episode too
        episode(20, version=2, reward=0.5),
        episode(5, version=2, reward=9.0, ended=""),  # still running: not counted
        episode(5, version=2, reward=9.0, start_t=3),  # steps 0..2 missing: not counted
    ):
        store.write(GAME, batch)
    mixed = episode(8, version=1, reward=1.0)
    mixed.model_version[4:] = 2  # the client swapped models mid-episode: judges neither
    store.write(GAME, mixed)
    # One episode written in two parts, as chunks arrive.
    split = episode(12, version=2, reward=0.5)
    store.write(GAME, split[:7])
    store.write(GAME, split[7:])
    live = store.live_returns(GAME)
    assert sorted(live) == [0, 2]
    assert (live[0].episodes, live[0].mean_return, live[0].std_return, live[0].mean_length) == (2, 20.0, 10.0, 20.0)
    assert (live[2].episodes, live[2].mean_return, live[2].mean_length) == (2, 8.0, 16.0)


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


def test_sample_follow_brings_each_draws_next_stored_rows(store: ExperienceStore) -> None:
    first, second = make_batch(40, seed=0), make_batch(25, seed=1)
    store.write(GAME, first)
    store.write(GAME, second)  # stored after the first episode: the first's last row is followed by it
    follow, n = 2, 300
    rows = store.sample(GAME, n, np.random.default_rng(4), follow=follow)
    assert len(rows) == n * (follow + 1)
    written = TransitionBatch.concat([first, second])
    for i in range(n):
        draw = i * (follow + 1)
        seq = int(np.flatnonzero((written.episode_id == rows.episode_id[draw]) & (written.t == rows.t[draw]))[0])
        for j in range(1, follow + 1):
            if seq + j < len(written):  # the row stored j after the draw, whichever episode it belongs to
                key = (rows.episode_id[draw + j], rows.t[draw + j])
                assert key == (written.episode_id[seq + j], written.t[seq + j])
                np.testing.assert_array_equal(rows.obs[draw + j], written.obs[seq + j])
            else:  # past the newest row: a placeholder that continues no episode
                assert (rows.episode_id[draw + j], rows.t[draw + j]) == ("", -1)
    drawn = rows[:: follow + 1]
    assert set(drawn.t[drawn.episode_id == second.episode_id[0]].tolist()) == set(range(25))  # draws stay uniform


def test_read_seqs_returns_every_stored_step_once_in_write_order(store: ExperienceStore) -> None:
    """What a replay mirror reads: seq_bounds spans the stored steps, read_seqs returns them in write order,
    any sub-range alone, and nothing below the bounds after retention."""
    assert store.seq_bounds(GAME) == (0, -1)
    first, second = make_batch(70, seed=0), make_batch(45, seed=1)
    store.write(GAME, first)
    store.write(GAME, second)
    lo, hi = store.seq_bounds(GAME)
    assert hi - lo + 1 == store.count(GAME) == 115
    seqs, rows = store.read_seqs(GAME, lo, hi)
    written = TransitionBatch.concat([first, second])
    np.testing.assert_array_equal(seqs, np.arange(lo, hi + 1))
    assert rows.episode_id.tolist() == written.episode_id.tolist()
    np.testing.assert_array_equal(rows.t, written.t)
    np.testing.assert_array_equal(rows.obs, written.obs)
    np.testing.assert_array_equal(rows.action, written.action)
    np.testing.assert_array_equal(rows.terminated, written.terminated)
    middle_seqs, middle = store.read_seqs(GAME, lo + 60, lo + 80)
    np.testing.assert_array_equal(middle_seqs, np.arange(lo + 60, lo + 81))
    np.testing.assert_array_equal(middle.obs, written.obs[60:81])
    store.retain(GAME, 30)
    lo_after, hi_after = store.seq_bounds(GAME)
    assert (lo_after, hi_after) == (hi - 29, hi)
    kept_seqs, kept = store.read_seqs(GAME, lo, hi)
    np.testing.assert_array_equal(kept_seqs, np.arange(hi - 29, hi + 1))
    np.testing.assert_array_equal(kept.obs, written.obs[-30:])


def test_sample_unknown_game_is_a_clear_error(store: ExperienceStore) -> None:
    with pytest.raises(LookupError, match="no transitions stored"):
        store.sample("Nope-v0", 8, np.random.default_rng(0))


def test_games_are_kept_apart(store: ExperienceStore) -> None:
    store.write(GAME, make_batch(10))
    store.write("Acrobot-v1", _acrobot_batch(7))
    assert store.count(GAME) == 10
    assert store.count("Acrobot-v1") == 7
    assert store.sample("Acrobot-v1", 20, np.random.default_rng(0)).obs.shape == (20, 6)


# Legal, different game ids that a name derived by replacing characters, by case-folding or by truncating
# would merge: punctuation and case variants, Unicode, SQL/CQL keywords and quoting, the longest id.
ADVERSARIAL_IDS = [
    "CartPole-v1",
    "CartPole_v1",
    "CartPole.v1",
    "cartpole-v1",
    "CARTPOLE-V1",
    "CartPole v1",
    "Ærø-ゲーム-🎮",
    "Aero-game",
    "select",
    "games",
    'x"; DROP TABLE games; --',
    "x'; DROP TABLE games; --",
    "g" * 64,
    "g" * 63 + "h",
]


def test_every_legal_game_id_keeps_its_own_storage(store: ExperienceStore) -> None:
    """Each id gets rows of its own (obs[:, 1] marks the id): counts, samples, windows, followers and live
    returns of one never show another's rows."""
    for i, game in enumerate(ADVERSARIAL_IDS):
        batch = make_batch(10 + i, seed=i)
        batch.obs[:, 1] = i
        assert store.write(game, batch) == 10 + i, game
    for i, game in enumerate(ADVERSARIAL_IDS):
        assert store.count(game) == 10 + i, game
        assert set(store.sample(game, 64, np.random.default_rng(i)).obs[:, 1].tolist()) == {float(i)}, game
        followed = store.sample(game, 16, np.random.default_rng(i), follow=2)
        stored = followed[np.flatnonzero(followed.t >= 0)]  # rows past the newest are placeholders
        assert set(stored.obs[:, 1].tolist()) == {float(i)}, game
        assert set(store.live_returns(game)) == {3}, game
        assert store.live_returns(game)[3].episodes == 1, game


def test_retention_drops_oldest_rows(store: ExperienceStore) -> None:
    episode = str(uuid.uuid4())
    assert store.written(GAME) == 0
    store.write(GAME, make_batch(100, episode, start_t=0))
    assert store.retain(GAME, 30) == 70
    assert (store.count(GAME), store.written(GAME)) == (30, 100)
    sample = store.sample(GAME, 500, np.random.default_rng(0))
    assert sample.t.min() >= 70
    assert store.write(GAME, make_batch(20, episode, start_t=100)) == 20  # the buffer goes on after a cut
    assert store.retain(GAME, 30) == 20
    assert (store.count(GAME), store.written(GAME)) == (30, 120)
    assert store.sample(GAME, 500, np.random.default_rng(1)).t.min() >= 90


def test_rows_expire_after_ttl(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Cassandra's retention: rows written with a TTL vanish from count and sample once it passes."""
    store = _cassandra(request, tmp_path, ttl_seconds=3)
    try:
        assert store.write(GAME, make_batch(50)) == 50
        assert store.count(GAME) > 0
        deadline = time.monotonic() + 60
        while store.count(GAME) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.count(GAME) == 0
        with pytest.raises(LookupError, match="no transitions stored"):
            store.sample(GAME, 8, np.random.default_rng(0))
    finally:
        store.close()


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


def test_one_write_of_many_episodes_and_of_large_rows(store: ExperienceStore) -> None:
    """What ingest hands the store after a backlog: one write holding 200 episodes (a key partition each), and
    a game whose rows are larger than a whole batch may be (8,192-float observations: 64 KiB per row)."""
    many = TransitionBatch.concat([make_batch(8, seed=i) for i in range(200)])
    assert store.write(GAME, many) == 1_600
    assert store.count(GAME) == 1_600 and store.write(GAME, many) == 0
    big = make_batch(40)
    wide = np.repeat(big.obs, 2_048, axis=1)  # [40, 8192] float32
    assert store.write("Wide-v0", TransitionBatch(**{**big.__dict__, "obs": wide, "next_obs": wide + 1})) == 40
    sample = store.sample("Wide-v0", 16, np.random.default_rng(0))
    assert sample.obs.shape == (16, 8_192)
    np.testing.assert_array_equal(sample.next_obs, sample.obs + 1)


def _acrobot_batch(n: int) -> TransitionBatch:
    b = make_batch(n)
    obs6 = np.zeros((n, 6), dtype=np.float32)
    return TransitionBatch(**{**b.__dict__, "obs": obs6, "next_obs": obs6})


def test_cassandra_sampling_rides_out_a_large_write_in_flight(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Seqs reserved for a batch whose rows are still being written: a sample still returns n stored rows
    (a trainer sampling while ingest drains a backlog at start crashed on this in CI)."""
    store = ADAPTERS["cassandra"](request, tmp_path)
    try:
        store.write(GAME, make_batch(50))
        store._reserve(GAME, 1000)  # a writer has reserved 1,000 seqs and not written their rows yet
        batch = store.sample(GAME, 128, np.random.default_rng(0))
        assert len(batch) == 128 and set(batch.t.tolist()) <= set(range(50))
    finally:
        store.close()


def test_cassandra_refuses_a_keyspace_in_the_layout_before_segments(request: pytest.FixtureRequest) -> None:
    """A keyspace written one row per step (tables ``transitions``, ``transition_keys``) is not read as if it
    were empty: opening it fails, naming the keyspace and what to do."""
    from rlplatform.store.cassandra import CassandraStore, LegacyLayoutError, keyspace_cql

    settings: Settings = request.getfixturevalue("cassandra_settings")
    legacy = settings.cassandra.model_copy(update={"keyspace": f"legacy_{uuid.uuid4().hex[:8]}"})
    admin = CassandraStore(settings.cassandra)
    try:
        admin._session.execute(keyspace_cql(legacy), timeout=120)
        admin._session.execute(
            f"CREATE TABLE {legacy.keyspace}.transitions (game_id text, chunk bigint, seq bigint,"
            " PRIMARY KEY ((game_id, chunk), seq))",
            timeout=120,
        )
        with pytest.raises(LegacyLayoutError, match=rf"{legacy.keyspace}.*RLP_CASSANDRA_KEYSPACE.*DROP TABLE"):
            CassandraStore(legacy)
    finally:
        admin._session.execute(f"DROP KEYSPACE IF EXISTS {legacy.keyspace}", timeout=120)
        admin.close()


def test_steps_after_an_episodes_end_are_found_stored_or_in_the_batch(store: ExperienceStore) -> None:
    episode_id = str(uuid.uuid4())
    ended = make_batch(10, episode_id)  # terminated at t=9
    assert store.after_end(GAME, ended) == []
    assert store.write(GAME, ended) == 10
    assert store.after_end(GAME, ended) == []  # a replay of the episode, its end included
    later, fresh = make_batch(5, episode_id, start_t=10), make_batch(3)
    assert store.after_end(GAME, TransitionBatch.concat([later, fresh])) == [0, 1, 2, 3, 4]
    inside = make_batch(6)
    inside.terminated[:] = False
    inside.truncated[2] = True  # an end inside the batch holds for the steps after it
    assert store.after_end(GAME, inside) == [3, 4, 5]
    assert store.after_end("Acrobot-v1", later) == []  # nothing stored for that game: only the batch's own end
