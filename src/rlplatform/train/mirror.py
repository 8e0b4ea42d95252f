"""The trainer's replay buffer: the newest ``capacity`` stored steps of its game, mirrored from the store.

A learner draws ~16 samples of every stored step (its replay ratio); reading each draw from the store is a
random row read per draw (Cassandra: ~50 us of client and server CPU each), while mirroring reads each step
once, in seq order, in large sequential reads. The store stays the source of truth: a restarted trainer
refills its mirror from it, and steps that expire or are dropped by retention leave the draw range.

Layout: a ring of ``capacity`` slots indexed by ``seq % capacity``, so a step lands in its slot whenever it
arrives (a write that was in flight lands after later ones) and the newest steps overwrite the oldest.
``slot_seq[slot]`` says which seq a slot holds (-1: none yet), so a draw checks membership in O(1); one more
slot holds the placeholder a follower that is not mirrored gets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields

import numpy as np

from rlplatform.store import ExperienceStore, TransitionBatch
from rlplatform.store.base import READ_STEPS, GameShapes

log = logging.getLogger(__name__)

# A seq missing this long below newer stored steps is a hole (a writer that reserved it and died), not a write
# still in flight: the mirror stops waiting for it.
HOLE_AFTER_S = 30.0
# How often the mirror asks the store for new steps: a learner samples tens of times a second.
REFRESH_S = 0.5
# Redraw rounds for draws that hit an empty slot (a hole, or a step not yet read).
_DRAW_ROUNDS = 16


class ReplayMirror:
    """The newest ``capacity`` steps of one game, read from ``store`` by ``refresh()``, drawn by ``sample()``."""

    def __init__(self, store: ExperienceStore, game_id: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.store, self.game_id, self.capacity = store, game_id, capacity
        self.slot_seq = np.full(capacity, -1, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}  # TransitionBatch field -> array[capacity + 1, ...], at the first read
        self.lo, self.hi = 0, -1  # the store's bounds at the last refresh
        self.cursor = 0  # every seq below it that the window needs is mirrored or a hole
        self._gap: tuple[int, float] | None = None  # (seq, since when) the cursor waits for
        self._refreshed_at = -REFRESH_S
        self._behind = True  # the last refresh read all it could: there may be more

    def __len__(self) -> int:
        return int(np.count_nonzero(self.slot_seq >= max(self.lo, self.hi - self.capacity + 1)))

    def refresh(self) -> int:
        """Read the steps stored since the last refresh (at most ``READ_STEPS``: a trainer that starts against a
        full store fills its mirror over a few refreshes); returns how many were read."""
        self._refreshed_at = time.monotonic()
        self.lo, self.hi = self.store.seq_bounds(self.game_id)
        first = max(self.cursor, self.lo, self.hi - self.capacity + 1)
        last = min(self.hi, first + READ_STEPS - 1)
        self._behind = last < self.hi
        if first > last:
            return 0
        seqs, rows = self.store.read_seqs(self.game_id, first, last)
        self._add(seqs, rows)
        self.cursor = self._advance(first, last, seqs)
        return len(seqs)

    def refresh_if_due(self) -> None:
        """``refresh()`` once ``REFRESH_S`` has passed since the last one, or at once while it has more to read."""
        if self._behind or time.monotonic() - self._refreshed_at >= REFRESH_S:
            self.refresh()

    def sample(self, n: int, rng: np.random.Generator, follow: int = 0) -> TransitionBatch:
        """``n`` steps drawn uniformly with replacement from the mirrored window, each followed by the ``follow``
        steps stored after it: the layout of ``ExperienceStore.sample`` (a placeholder, episode_id "" and t -1,
        where a follower is not mirrored). ``LookupError`` when nothing is mirrored."""
        lo = max(self.lo, self.hi - self.capacity + 1)
        drawn = np.empty(0, dtype=np.int64)
        for _ in range(_DRAW_ROUNDS):
            if lo > self.hi:
                break
            draws = rng.integers(lo, self.hi + 1, size=n - len(drawn))
            drawn = np.concatenate([drawn, draws[self._held(draws)]])
            if len(drawn) == n:
                break
        if len(drawn) == 0:
            raise LookupError(f"no transitions mirrored for game {self.game_id!r}")
        if len(drawn) < n:  # most of the window is not read yet (a refill at start): draw among what is
            drawn = np.concatenate([drawn, drawn[rng.integers(0, len(drawn), size=n - len(drawn))]])
        return self._rows((drawn[:, None] + np.arange(follow + 1)).reshape(-1))

    def _held(self, seqs: np.ndarray) -> np.ndarray:
        return (seqs <= self.hi) & (self.slot_seq[seqs % self.capacity] == seqs)

    def _rows(self, seqs: np.ndarray) -> TransitionBatch:
        """The rows of ``seqs``; the placeholder row (slot ``capacity``) where one is not mirrored."""
        index = np.where(self._held(seqs), seqs % self.capacity, self.capacity)
        return TransitionBatch(**{name: column[index] for name, column in self.columns.items()})

    def _add(self, seqs: np.ndarray, rows: TransitionBatch) -> None:
        if len(seqs) == 0:
            return
        if not self.columns:
            # One slot past the ring holds the placeholder that continues no episode, as a sample returns it.
            shapes = GameShapes.of(rows)
            placeholder = shapes.to_batch([shapes.placeholder_row()])
            for f in fields(rows):
                stored = getattr(rows, f.name)
                column = np.empty((self.capacity + 1, *stored.shape[1:]), dtype=stored.dtype)  # read once written
                column[self.capacity] = getattr(placeholder, f.name)[0]
                self.columns[f.name] = column
            nbytes = sum(c.nbytes for name, c in self.columns.items() if name != "episode_id")
            log.info("%s: replay mirror of %d steps, %.1f MB", self.game_id, self.capacity, nbytes / 1e6)
        keep = slice(-self.capacity, None)  # more seqs than slots: the newest win
        seqs, slots = seqs[keep], seqs[keep] % self.capacity
        for name, column in self.columns.items():
            column[slots] = getattr(rows, name)[keep]
        self.slot_seq[slots] = seqs

    def _advance(self, first: int, last: int, seqs: np.ndarray) -> int:
        """Where the next refresh starts: after ``last`` when ``[first, last]`` is complete, else at its first
        missing seq (a write still in flight lands there soon), unless that seq has been missing for
        ``HOLE_AFTER_S`` with newer steps stored after it: a hole, skipped with the missing run it starts."""
        present = np.zeros(last - first + 1, dtype=bool)
        present[seqs - first] = True
        start = 0
        while not present[start:].all():
            gap = first + start + int(np.argmin(present[start:]))
            later = np.flatnonzero(present[gap - first :])
            now = time.monotonic()
            if self._gap is None or self._gap[0] != gap:
                self._gap = (gap, now)
            if now - self._gap[1] < HOLE_AFTER_S or len(later) == 0:
                return gap
            waited = now - self._gap[1]
            log.info("%s: seq %d missing for %.0f s below stored steps: a hole, read past", self.game_id, gap, waited)
            self._gap = None
            start = gap - first + int(later[0])
        self._gap = None
        return last + 1
