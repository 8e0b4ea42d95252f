"""Live returns per model version, counted from each stored step once: the store is read from where the last
update stopped (its per-game ``seq``), so an update costs what was stored since, not the table's size
(``ExperienceStore.live_returns`` reads every stored step each time). The dashboard and ``rlplatform up`` keep
one ``GameLive`` per game."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlplatform.store.base import READ_STEPS, ExperienceStore, LiveReturns
from rlplatform.store.episodes import EpisodeAssembler

# Steps read at most per refresh (in requests of READ_STEPS): a dashboard opened on a large store catches up over
# several refreshes instead of holding one for minutes.
MAX_STEPS_PER_REFRESH = 8 * READ_STEPS
# Episodes per point of a version's curve at first: each point is the mean and spread of that many consecutive
# episodes. A curve that reaches MAX_POINTS points merges them in pairs (and its groups double), so a version's
# memory and what a page draws stay bounded however long it is played.
SERIES_GROUP = 20
MAX_POINTS = 256
# An unfinished episode without a new step for this long was abandoned by its client (its steps are forgotten).
STALE_EPISODE_S = 600.0


@dataclass(frozen=True)
class SeriesPoint:
    at_step: int  # the game's stored steps when the group's last episode ended (a clock that runs with play)
    mean: float
    std: float
    episodes: int


@dataclass
class VersionLive:
    """The finished, whole episodes one version played: running sums, and the curve in groups of episodes."""

    version: int
    episodes: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    steps: int = 0
    series: list[SeriesPoint] = field(default_factory=list)
    group_size: int = SERIES_GROUP
    _group: list[float] = field(default_factory=list)

    def add(self, episode_return: float, length: int, at_step: int) -> None:
        self.episodes += 1
        self.total += episode_return
        self.total_sq += episode_return * episode_return
        self.steps += length
        self._group.append(episode_return)
        if len(self._group) == self.group_size:
            self.series.append(_point(self._group, at_step))
            self._group = []
            if len(self.series) == MAX_POINTS:
                self.series = [_merged(a, b) for a, b in zip(self.series[::2], self.series[1::2], strict=True)]
                self.group_size *= 2

    @property
    def mean(self) -> float:
        return self.total / self.episodes if self.episodes else math.nan

    @property
    def std(self) -> float:
        if not self.episodes:
            return math.nan
        return math.sqrt(max(0.0, self.total_sq / self.episodes - self.mean**2))

    @property
    def mean_length(self) -> float:
        return self.steps / self.episodes if self.episodes else math.nan

    def points(self, at_step: int) -> list[SeriesPoint]:
        """The curve, with the episodes of the group still filling as its last point."""
        return self.series + ([_point(self._group, at_step)] if self._group else [])


def _point(returns: list[float], at_step: int) -> SeriesPoint:
    n = len(returns)
    mean = sum(returns) / n
    return SeriesPoint(at_step, mean, math.sqrt(max(0.0, sum(r * r for r in returns) / n - mean**2)), n)


def _merged(a: SeriesPoint, b: SeriesPoint) -> SeriesPoint:
    """One point for the episodes of two consecutive ones (pooled mean and spread)."""
    n = a.episodes + b.episodes
    mean = (a.episodes * a.mean + b.episodes * b.mean) / n
    second = (a.episodes * (a.std**2 + a.mean**2) + b.episodes * (b.std**2 + b.mean**2)) / n
    return SeriesPoint(b.at_step, mean, math.sqrt(max(0.0, second - mean**2)), n)


class GameLive:
    """One game's live returns by version, brought up to date by ``update``."""

    def __init__(self, game_id: str) -> None:
        self.game_id = game_id
        self.cursor: int | None = None  # the next seq to read
        self.origin = 0  # the seq the first read started at (steps before it were dropped already)
        self.episodes = EpisodeAssembler()
        self.versions: dict[int, VersionLive] = {}

    @property
    def at_step(self) -> int:
        return self.origin + self.episodes.read

    def returns(self) -> dict[int, LiveReturns]:
        """Per version, its finished, whole episodes so far (what ``ExperienceStore.live_returns`` counts)."""
        return {
            v: LiveReturns(v, live.episodes, live.mean, live.std, live.mean_length)
            for v, live in sorted(self.versions.items())
        }

    def update(self, store: ExperienceStore, now: float) -> int:
        """Read what was stored since the last update (at most ``MAX_STEPS_PER_REFRESH``); returns how many steps."""
        lo, hi = store.seq_bounds(self.game_id)
        if self.cursor is None:
            self.cursor = self.origin = lo
        self.cursor = max(self.cursor, lo)  # retention dropped steps not read yet: they are gone
        read = 0
        while self.cursor <= hi and read < MAX_STEPS_PER_REFRESH:
            last = min(hi, self.cursor + READ_STEPS - 1)
            seqs, rows = store.read_seqs(self.game_id, self.cursor, last)
            for episode in self.episodes.feed(rows, now):
                if episode.whole:
                    live = self.versions.setdefault(episode.version, VersionLive(episode.version))
                    live.add(episode.total, episode.length, self.origin + episode.ended)
            self.cursor, read = last + 1, read + len(seqs)
        self.episodes.forget_stale(now - STALE_EPISODE_S)
        return read
