"""Episodes from stored steps read once each, in seq order: what the release judge and the dashboard count live
returns with, without re-reading a game's every step (``ExperienceStore.live_returns`` does, for reports).

An episode is *whole* as ``store.base.live_returns_of`` counts it: its steps ``0..T`` read in order, every one
chosen by the same model version, the last one terminated or truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlplatform.store.base import TransitionBatch


@dataclass
class OpenEpisode:
    version: int
    started: int  # its first step's place in the order steps were read (1, 2, ...)
    next_t: int
    total: float
    whole: bool
    seen_at: float


@dataclass(frozen=True)
class FinishedEpisode:
    version: int
    started: int  # as OpenEpisode.started
    ended: int  # its last step's place in the read order
    total: float
    length: int
    whole: bool


class EpisodeAssembler:
    """Steps in, finished episodes out; unfinished ones wait in ``open`` (by episode id) for their next steps."""

    def __init__(self) -> None:
        self.read = 0  # steps read so far
        self.open: dict[str, OpenEpisode] = {}

    def feed(self, rows: TransitionBatch, now: float) -> list[FinishedEpisode]:
        """Account for stored steps, in seq order; returns the episodes they finished."""
        finished = []
        ended = rows.terminated | rows.truncated
        for episode_id, t, reward, version, done in zip(
            rows.episode_id, rows.t.tolist(), rows.reward.tolist(), rows.model_version.tolist(), ended.tolist(),
            strict=True,
        ):  # fmt: skip
            self.read += 1
            episode = self.open.get(episode_id)
            if episode is None:
                episode = self.open[episode_id] = OpenEpisode(version, self.read, 0, 0.0, t == 0, now)
            episode.whole &= t == episode.next_t and version == episode.version
            episode.next_t, episode.total, episode.seen_at = t + 1, episode.total + reward, now
            if done:
                del self.open[episode_id]
                finished.append(
                    FinishedEpisode(version, episode.started, self.read, episode.total, t + 1, episode.whole)
                )
        return finished

    def forget_stale(self, before: float) -> int:
        """Drop the unfinished episodes without a step since ``before`` (their clients left); returns how many."""
        stale = [e for e, episode in self.open.items() if episode.seen_at < before]
        for episode_id in stale:
            del self.open[episode_id]
        return len(stale)
