"""Segments: how the Cassandra adapter packs consecutive steps into one stored row, and finds a step again.

Every stored step has a dense per-game sequence number ``seq`` (see ``cassandra.py``). A *segment* is a run
of steps with consecutive seqs, of one episode, inside one *block* (``seq // block_steps``): one row whose
columns are the run's arrays as little-endian bytes. A step is found from its seq alone: read its block,
take the segment whose ``[start, start + n)`` holds it. Pure numpy; no driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlplatform.store.base import EpisodeSteps, GameShapes, TransitionBatch

TERMINATED, TRUNCATED = np.uint8(1), np.uint8(2)  # bits of a segment's ``flags`` byte per step
# Stored dtypes of the per-step columns besides obs, next_obs and action (flags: one uint8).
_T, _REWARD, _VERSION = np.dtype("<i8"), np.dtype("<f4"), np.dtype("<i8")
_FIXED_STEP_BYTES = _T.itemsize + _REWARD.itemsize + 1 + _VERSION.itemsize


def steps_in(t: bytes) -> int:
    """Steps in a segment, from its ``t`` column."""
    return len(t) // _T.itemsize


def step_bytes(shapes: GameShapes) -> int:
    """Stored bytes of one step of a game with these shapes."""
    return 2 * 4 * shapes.obs_dim + shapes.action_dtype.itemsize * shapes.action_dim + _FIXED_STEP_BYTES


@dataclass(frozen=True)
class Run:
    """One segment to write: batch rows ``rows`` (int64[n]) stored at seqs ``start .. start + n - 1``."""

    start: int
    rows: np.ndarray


def split_runs(
    rows: np.ndarray, seqs: np.ndarray, episode_id: np.ndarray, block_steps: int, max_steps: int
) -> list[Run]:
    """Segments for batch rows ``rows`` (int64[k]) placed at ``seqs`` (int64[k], ascending): a new segment
    wherever the seq jumps, the episode (``episode_id``, object[k]) changes, a block starts, or a segment
    reaches ``max_steps``."""
    if len(rows) == 0:
        return []
    cut = np.ones(len(rows), dtype=bool)
    cut[1:] = (np.diff(seqs) != 1) | (seqs[1:] // block_steps != seqs[:-1] // block_steps)
    cut[1:] |= episode_id[1:] != episode_id[:-1]
    bounds = np.append(np.flatnonzero(cut), len(rows)).tolist()
    runs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        runs += [Run(int(seqs[i]), rows[i : min(i + max_steps, b)]) for i in range(a, b, max_steps)]
    return runs


def encode(run: Run, batch: TransitionBatch, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray) -> tuple:
    """A run's stored columns ``(episode_id, t, obs, action, reward, next_obs, flags, model_version)``: the
    episode id, then bytes (``obs``, ``next_obs``, ``action`` are ``GameShapes.arrays`` of the batch)."""
    r = run.rows
    flags = np.where(batch.terminated[r], TERMINATED, 0) | np.where(batch.truncated[r], TRUNCATED, 0)
    return (
        str(batch.episode_id[r[0]]),
        batch.t[r].astype(_T).tobytes(),
        obs[r].tobytes(),
        action[r].tobytes(),
        batch.reward[r].astype(_REWARD).tobytes(),
        next_obs[r].tobytes(),
        flags.astype(np.uint8).tobytes(),
        batch.model_version[r].astype(_VERSION).tobytes(),
    )


class Pool:
    """Stored segments, decoded into one columnar batch, with a lookup from seq to row.

    ``segments`` are ``(start, episode_id, t, obs, action, reward, next_obs, flags, model_version)`` as read.
    """

    def __init__(self, shapes: GameShapes, segments: list[tuple]) -> None:
        segments = sorted(segments, key=lambda s: s[0])
        cols = list(zip(*segments, strict=True)) if segments else [()] * 9
        lengths = np.array([steps_in(t) for t in cols[2]], dtype=np.int64)
        self._starts = np.array(cols[0], dtype=np.int64)
        self._ends = self._starts + lengths
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flags = np.frombuffer(b"".join(cols[7]), dtype=np.uint8)
        rows = shapes.columns(
            episode_id=np.repeat(np.array(cols[1], dtype=object), lengths),
            t=np.frombuffer(b"".join(cols[2]), dtype=_T),
            obs=b"".join(cols[3]),
            action=b"".join(cols[4]),
            reward=np.frombuffer(b"".join(cols[5]), dtype=_REWARD),
            next_obs=b"".join(cols[6]),
            terminated=(flags & TERMINATED) > 0,
            truncated=(flags & TRUNCATED) > 0,
            model_version=np.frombuffer(b"".join(cols[8]), dtype=_VERSION),
        )
        # One placeholder row after the stored ones: what a seq that is not stored maps to in ``take``.
        self._rows = TransitionBatch.concat([rows, shapes.to_batch([shapes.placeholder_row()])])

    def __len__(self) -> int:
        return len(self._rows) - 1

    def index(self, seqs: np.ndarray) -> np.ndarray:
        """Row of each seq (int64[k]) in this pool, -1 where no segment holds it."""
        seqs = np.asarray(seqs, dtype=np.int64)
        if len(self._starts) == 0:
            return np.full(seqs.shape, -1, dtype=np.int64)
        k = np.clip(np.searchsorted(self._starts, seqs, side="right") - 1, 0, None)
        held = (self._starts[k] <= seqs) & (seqs < self._ends[k])
        return np.where(held, self._offsets[k] + seqs - self._starts[k], -1)

    def take(self, index: np.ndarray) -> TransitionBatch:
        """The rows at ``index`` (from ``index()``); a placeholder that continues no episode where it is -1."""
        return self._rows[np.where(index < 0, len(self._rows) - 1, index)]

    def held(self, seqs: np.ndarray) -> tuple[np.ndarray, TransitionBatch]:
        """The seqs (int64[k]) this pool holds, in the given order, and their rows."""
        seqs = np.asarray(seqs, dtype=np.int64)
        index = self.index(seqs)
        return seqs[index >= 0], self.take(index[index >= 0])


def episode_steps(segments: list) -> EpisodeSteps:
    """``EpisodeSteps`` of read segments that carry ``episode_id``, ``t``, ``reward``, ``flags`` and
    ``model_version`` (the live-returns columns, read without the observations)."""
    lengths = [steps_in(s.t) for s in segments]
    flags = np.frombuffer(b"".join(s.flags for s in segments), dtype=np.uint8)
    return EpisodeSteps(
        episode_id=np.repeat(np.array([s.episode_id for s in segments], dtype=object), lengths),
        t=np.frombuffer(b"".join(s.t for s in segments), dtype=_T).astype(np.int64),
        reward=np.frombuffer(b"".join(s.reward for s in segments), dtype=_REWARD).astype(np.float32),
        ended=(flags & (TERMINATED | TRUNCATED)) > 0,
        model_version=np.frombuffer(b"".join(s.model_version for s in segments), dtype=_VERSION).astype(np.int64),
    )
