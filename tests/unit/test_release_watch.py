"""The judge's data: whole, finished episodes of the candidate and the stable version, stored since the watch
began, each step read once, in the order they started and only up to the first one still running."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlplatform.release.watch import STALE_S, CandidateWatch
from rlplatform.store.sqlite import SqliteStore
from tests.contract.test_store_contract import episode

GAME = "CartPole-v1"


def test_only_whole_finished_episodes_stored_since_the_watch_began_count(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.sqlite") as store:
        store.write(GAME, episode(10, version=1, reward=1.0))  # before the watch: not its period
        watch = CandidateWatch.from_now(store, GAME, stable=1, candidate=2)
        assert watch.update() == 0 and len(watch.returns(1)) == 0
        store.write(GAME, episode(10, version=1, reward=2.0))
        store.write(GAME, episode(4, version=2, reward=0.5))
        store.write(GAME, episode(5, version=2, reward=1.0, start_t=3))  # began before: steps 0..2 not seen
        mixed = episode(8, version=1, reward=1.0)
        mixed.model_version[4:] = 2  # swapped models mid-episode: judges neither
        store.write(GAME, mixed)
        store.write(GAME, episode(3, version=7, reward=1.0))  # neither version
        assert watch.update() == 10 + 4 + 5 + 8 + 3
        np.testing.assert_array_equal(watch.returns(1), [20.0])
        np.testing.assert_array_equal(watch.returns(2), [2.0])
        store.write(GAME, episode(12, version=1, reward=1.0))
        assert watch.update() == 12 and watch.update() == 0  # each step read once
        np.testing.assert_array_equal(watch.returns(1), [20.0, 12.0])


def test_episodes_count_in_the_order_they_started_up_to_the_first_still_running(tmp_path: Path) -> None:
    """A long episode that started first holds back the short ones that started after it, so the judge never
    reads a version by its shortest episodes."""
    now = [0.0]
    with SqliteStore(tmp_path / "s.sqlite") as store:
        watch = CandidateWatch(store, GAME, stable=1, candidate=2, start_seq=0, clock=lambda: now[0])
        long = episode(100, version=2, reward=1.0)
        store.write(GAME, long[:50])  # the long one starts first and is still running
        store.write(GAME, episode(5, version=2, reward=1.0))
        store.write(GAME, episode(6, version=2, reward=1.0))
        watch.update()
        assert len(watch.returns(2)) == 0
        store.write(GAME, long[50:])
        watch.update()
        np.testing.assert_array_equal(watch.returns(2), [100.0, 5.0, 6.0])  # start order, not finish order

        abandoned = episode(30, version=2, reward=1.0, ended="")
        store.write(GAME, abandoned)  # its client stops playing
        store.write(GAME, episode(7, version=2, reward=1.0))
        watch.update()
        np.testing.assert_array_equal(watch.returns(2), [100.0, 5.0, 6.0])
        now[0] += STALE_S  # no step for that long: it holds nothing back any more
        np.testing.assert_array_equal(watch.returns(2), [100.0, 5.0, 6.0, 7.0])
