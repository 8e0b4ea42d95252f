"""What the judge judges: the returns of the episodes the clients played with a candidate and with the stable
version over the same period, from the steps stored since the watch began, each read once.

An episode counts when it is finished and whole, as live returns count it (``store.base.live_returns_of``): its
steps ``0..T`` all read, in order, the last one terminated or truncated, every one chosen by the same version.
An episode that began before the watch did is not whole here, so both versions' episodes come from one period.

Why in the order episodes *started*, and only up to the first one still running: a game's return often grows
with its length (CartPole's is its length). Taking each version's first episodes to *finish* would favour short
ones, the more so for the version with fewer clients (a 10 % canary): the judge would read its candidate as worse
than it plays. Episodes that started in a period, all of them, are a fair sample. An episode that gets no step for
``STALE_S`` (its client stopped) no longer holds the others back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from rlplatform.store import ExperienceStore, TransitionBatch
from rlplatform.store.base import READ_STEPS
from rlplatform.store.episodes import EpisodeAssembler

# An unfinished episode without a new step for this long was abandoned by its client.
STALE_S = 120.0


class CandidateWatch:
    """Finished, whole episodes of ``stable`` and ``candidate`` among the game's steps stored from ``start_seq`` on."""

    def __init__(
        self,
        store: ExperienceStore,
        game_id: str,
        stable: int,
        candidate: int,
        start_seq: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.game_id = store, game_id
        self.stable, self.candidate = stable, candidate
        self.cursor = start_seq
        self.clock = clock
        self._episodes = EpisodeAssembler()
        self._finished: dict[int, list[tuple[int, float]]] = {stable: [], candidate: []}  # (started, return)

    @classmethod
    def from_now(cls, store: ExperienceStore, game_id: str, stable: int, candidate: int) -> CandidateWatch:
        """A watch of the steps stored after this moment."""
        return cls(store, game_id, stable, candidate, store.seq_bounds(game_id)[1] + 1)

    def update(self) -> int:
        """Read the steps stored since the last update (at most ``READ_STEPS``); returns how many were read."""
        hi = self.store.seq_bounds(self.game_id)[1]
        last = min(hi, self.cursor + READ_STEPS - 1)
        if last < self.cursor:
            return 0
        seqs, rows = self.store.read_seqs(self.game_id, self.cursor, last)
        self.feed(rows)
        self.cursor = last + 1
        return len(seqs)

    def feed(self, rows: TransitionBatch) -> None:
        """Account for stored steps, in seq order."""
        for episode in self._episodes.feed(rows, self.clock()):
            if episode.whole and episode.version in self._finished:
                self._finished[episode.version].append((episode.started, episode.total))

    def returns(self, version: int) -> np.ndarray:
        """float64[n]: the returns of the version's finished, whole episodes in the order they started, up to the
        first one of its episodes still running (so long episodes count as much as short ones)."""
        now = self.clock()
        running = [
            e.started
            for e in self._episodes.open.values()
            if e.version == version and e.whole and now - e.seen_at < STALE_S
        ]
        cutoff = min(running, default=None)
        started = sorted(self._finished.get(version, []))
        return np.asarray([r for s, r in started if cutoff is None or s < cutoff], dtype=np.float64)
