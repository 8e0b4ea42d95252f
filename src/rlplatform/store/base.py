"""The experience-store port: idempotent writes keyed by (game_id, episode_id, t), uniform sampling."""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields

import numpy as np

from rlplatform.settings import Settings

# Steps a reader of stored steps in seq order (``ExperienceStore.read_seqs``: the replay mirror, the release
# watch, live returns) asks for in one request: a reader that falls behind catches up over several reads
# instead of holding one for the whole backlog.
READ_STEPS = 65_536


@dataclass(frozen=True)
class TransitionBatch:
    """Columnar transitions of one game; every array has the same first dimension ``n``.

    episode_id: object[n] (UUID strings)   t: int64[n]
    obs, next_obs: float32[n, obs_dim]     action: int64[n] (discrete) or float32[n, act_dim]
    reward: float32[n]                     terminated, truncated: bool[n]
    model_version: int64[n]
    """

    episode_id: np.ndarray
    t: np.ndarray
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    model_version: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def __post_init__(self) -> None:
        n = len(self.t)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"TransitionBatch.{f.name} has {len(getattr(self, f.name))} rows, expected {n}")

    def __getitem__(self, rows: slice | np.ndarray) -> TransitionBatch:
        """The rows a slice, an index array or a boolean mask selects."""
        return TransitionBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def concat(cls, batches: list[TransitionBatch]) -> TransitionBatch:
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})


@dataclass(frozen=True)
class GameShapes:
    """What a game's first write fixes, in every adapter: ``float32[obs_dim]`` observations and
    ``action_dtype[action_dim]`` actions (int64 for discrete games, float32 for box games)."""

    obs_dim: int
    action_dtype: np.dtype
    action_dim: int

    @classmethod
    def of(cls, batch: TransitionBatch) -> GameShapes:
        """The shapes a game's first batch declares."""
        action_dtype = np.dtype(np.int64 if np.issubdtype(batch.action.dtype, np.integer) else np.float32)
        return cls(int(batch.obs.shape[1]), action_dtype, int(np.prod(batch.action.shape[1:], dtype=np.int64)))

    def arrays(self, game_id: str, batch: TransitionBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``obs``, ``next_obs`` float32[n, obs_dim] and ``action`` [n, action_dim], contiguous in the stored
        dtypes, ready for ``tobytes``; ``ValueError`` naming both shapes when the batch does not fit the game."""
        obs = np.ascontiguousarray(batch.obs, dtype=np.float32)
        next_obs = np.ascontiguousarray(batch.next_obs, dtype=np.float32)
        action = np.ascontiguousarray(batch.action, dtype=self.action_dtype).reshape(len(batch), -1)
        if (
            obs.shape[1:] != (self.obs_dim,)
            or next_obs.shape[1:] != (self.obs_dim,)
            or action.shape[1] != self.action_dim
        ):
            raise ValueError(
                f"{game_id}: obs/next_obs must be [n, {self.obs_dim}] and action [n, {self.action_dim}], got "
                f"{obs.shape}, {next_obs.shape}, {action.shape}"
            )
        return obs, next_obs, action

    def to_batch(self, rows: list[tuple]) -> TransitionBatch:
        """A batch from stored rows ``(episode_id, t, obs bytes, action bytes, reward, next_obs bytes,
        terminated, truncated, model_version)``, as the SQLite adapter reads them."""
        cols = list(zip(*rows, strict=True)) if rows else [()] * 9
        return self.columns(
            episode_id=np.array(cols[0], dtype=object),
            t=np.array(cols[1], dtype=np.int64),
            obs=b"".join(cols[2]),
            action=b"".join(cols[3]),
            reward=np.array(cols[4], dtype=np.float32),
            next_obs=b"".join(cols[5]),
            terminated=np.array(cols[6], dtype=bool),
            truncated=np.array(cols[7], dtype=bool),
            model_version=np.array(cols[8], dtype=np.int64),
        )

    def columns(self, *, obs: bytes, action: bytes, next_obs: bytes, **rest: np.ndarray) -> TransitionBatch:
        """A batch from the stored bytes of ``obs``, ``action`` and ``next_obs`` (rows back to back, in the
        stored dtypes) and the other columns as arrays."""
        n = len(rest["t"])
        action_2d = np.frombuffer(action, dtype=self.action_dtype).reshape(n, self.action_dim)
        return TransitionBatch(
            obs=np.frombuffer(obs, dtype=np.float32).reshape(n, self.obs_dim),
            action=action_2d[:, 0] if self.action_dtype == np.int64 and self.action_dim == 1 else action_2d,
            next_obs=np.frombuffer(next_obs, dtype=np.float32).reshape(n, self.obs_dim),
            **rest,
        )

    def placeholder_row(self) -> tuple:
        """A stored-row tuple that continues no episode (episode_id "", t -1): a follower not stored."""
        zeros = bytes(4 * self.obs_dim)
        return ("", -1, zeros, bytes(self.action_dtype.itemsize * self.action_dim), 0.0, zeros, False, False, -1)


@dataclass(frozen=True)
class EpisodeSteps:
    """A few columns of every stored step of a game, for live evaluation; every array has length ``n``.

    episode_id: object[n]   t: int64[n]   reward: float32[n]   ended: bool[n] (terminated or truncated)
    model_version: int64[n]
    """

    episode_id: np.ndarray
    t: np.ndarray
    reward: np.ndarray
    ended: np.ndarray
    model_version: np.ndarray


@dataclass(frozen=True)
class LiveReturns:
    """How the clients played one model version: its finished episodes' return and length."""

    model_version: int
    episodes: int
    mean_return: float
    std_return: float
    mean_length: float


def live_returns_of(steps: EpisodeSteps) -> dict[int, LiveReturns]:
    """Per model version, the episodes that are finished and whole: steps ``0..T`` all stored, the last one
    terminated or truncated, every step chosen by that one version (a client that swapped models mid-episode
    played a mix, which judges neither)."""
    import pandas as pd

    if len(steps.t) == 0:
        return {}
    df = pd.DataFrame({f.name: getattr(steps, f.name) for f in fields(steps)}).sort_values(["episode_id", "t"])
    per_episode = df.groupby("episode_id").agg(
        ret=("reward", "sum"),
        length=("t", "size"),
        first_t=("t", "min"),
        last_t=("t", "max"),
        ended=("ended", "last"),
        v_min=("model_version", "min"),
        v_max=("model_version", "max"),
    )
    whole = per_episode[
        per_episode.ended
        & (per_episode.first_t == 0)
        & (per_episode.length == per_episode.last_t + 1)
        & (per_episode.v_min == per_episode.v_max)
    ]
    per_version = whole.groupby("v_min").agg(
        episodes=("ret", "size"),
        mean_return=("ret", "mean"),
        std_return=("ret", lambda r: float(np.std(r))),
        mean_length=("length", "mean"),
    )
    return {
        int(v): LiveReturns(
            int(v), int(row.episodes), float(row.mean_return), float(row.std_return), float(row.mean_length)
        )
        for v, row in per_version.iterrows()
    }


class ExperienceStore(abc.ABC):
    """Where transitions live between ingest and training."""

    @abc.abstractmethod
    def write(self, game_id: str, batch: TransitionBatch) -> int:
        """Store transitions; rows whose (game_id, episode_id, t) already exists are ignored.

        Returns the number of rows that were new.
        """

    def sample(
        self, game_id: str, n: int, rng: np.random.Generator, window: int | None = None, follow: int = 0
    ) -> TransitionBatch:
        """``n`` transitions drawn uniformly with replacement from the newest ``window`` rows (all rows
        when None), like a replay buffer of that capacity; cost independent of table size.

        With ``follow`` > 0 each draw comes with the ``follow`` rows stored right after it, read in the
        same requests (for n-step returns): ``n * (1 + follow)`` rows, draw ``i`` at row ``i * (1 + follow)``
        and its followers after it. A write stores its rows consecutively, so a follower is usually the
        episode's next step; where it is not stored (yet) it is a placeholder that continues no episode
        (episode_id "", t -1). Callers check that a follower continues the draw's episode.

        Raises ``LookupError`` when nothing is stored for the game.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if follow < 0:
            raise ValueError(f"follow must be >= 0, got {follow}")
        return self._sample(game_id, n, rng, window, follow)

    @abc.abstractmethod
    def _sample(
        self, game_id: str, n: int, rng: np.random.Generator, window: int | None, follow: int
    ) -> TransitionBatch:
        """``sample`` with validated arguments."""

    def conflicting(self, game_id: str, batch: TransitionBatch) -> list[int]:
        """Indices of the rows of ``batch`` whose key is stored with different content.

        A write keeps the first content stored under a key, so a client re-sending a step with other values
        would otherwise be ignored without a trace; ingest reports these after a write that ignored rows.
        """
        if len(batch) == 0:
            return []
        stored = self._stored(game_id, batch)
        index = {key: j for j, key in enumerate(zip(stored.episode_id.tolist(), stored.t.tolist(), strict=True))}
        keys = zip(batch.episode_id.tolist(), batch.t.tolist(), strict=True)
        return [i for i, key in enumerate(keys) if key in index and not _same_row(batch, i, stored, index[key])]

    @abc.abstractmethod
    def _stored(self, game_id: str, batch: TransitionBatch) -> TransitionBatch:
        """The stored rows whose ``(episode_id, t)`` keys appear in ``batch``, in any order."""

    def after_end(self, game_id: str, batch: TransitionBatch) -> list[int]:
        """Indices of the rows of ``batch`` that follow the end of their episode: a terminated or truncated step
        at a smaller ``t``, stored already or in ``batch`` itself.

        Ingest dead-letters them (``step_after_end``) instead of writing them, so the store never holds a step
        after a terminal state, whatever record it came in; a replay of the end itself is not after it. An
        episode whose end was dropped by retention or expired has no end here any more.
        """
        if len(batch) == 0:
            return []
        episodes, ts = batch.episode_id.tolist(), batch.t.tolist()
        ends = self._episode_ends(game_id, sorted(set(episodes)))
        done = (batch.terminated | batch.truncated).tolist()
        for e, t, d in zip(episodes, ts, done, strict=True):
            if d and t < ends.get(e, t + 1):
                ends[e] = t
        return [i for i, (e, t) in enumerate(zip(episodes, ts, strict=True)) if t > ends.get(e, t)]

    @abc.abstractmethod
    def _episode_ends(self, game_id: str, episode_ids: list[str]) -> dict[str, int]:
        """For each of ``episode_ids`` with a terminated or truncated step stored, the smallest such ``t``."""

    def live_returns(self, game_id: str) -> dict[int, LiveReturns]:
        """Per model version, the return and length of the finished episodes the clients played with it
        (``live_returns_of``): the measure that works for every game, simulator or not. It reads a few
        columns of every stored step, so its cost grows with the table: for reports, not the training loop."""
        return live_returns_of(self._episode_steps(game_id))

    @abc.abstractmethod
    def _episode_steps(self, game_id: str) -> EpisodeSteps:
        """``EpisodeSteps`` of every stored step of the game (empty arrays for an unknown game)."""

    @abc.abstractmethod
    def seq_bounds(self, game_id: str) -> tuple[int, int]:
        """``(lo, hi)``: the seqs of the oldest retained and the newest stored step, ``(0, -1)`` when none.

        Every adapter numbers a game's stored steps 0 or 1, 2, 3, ... in write order (its ``seq``); steps below
        ``lo`` were dropped by retention or expiry."""

    @abc.abstractmethod
    def read_seqs(self, game_id: str, first: int, last: int) -> tuple[np.ndarray, TransitionBatch]:
        """The stored steps whose seqs are in ``[first, last]``, in seq order: ``seqs`` int64[k] and their rows.
        A seq with no step (dropped, a hole, or reserved by a write still in flight) is absent. What a replay
        mirror (``rlplatform.train.mirror``) reads each step with, once."""

    def count(self, game_id: str) -> int:
        """Rows stored for the game and retained now (0 for an unknown game): what sampling draws from."""
        lo, hi = self.seq_bounds(game_id)
        return max(0, hi - lo + 1)

    @abc.abstractmethod
    def written(self, game_id: str) -> int:
        """Rows ever stored for the game, retained or dropped since (0 for an unknown game): what reconciles
        with the transitions clients sent."""

    @abc.abstractmethod
    def retain(self, game_id: str, max_rows: int) -> int:
        """Drop the oldest rows beyond ``max_rows``; returns how many were dropped."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # What the factory (``rlplatform.store.open_store``) asks of every adapter.

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> ExperienceStore:
        """The adapter connected as the settings say."""

    @classmethod
    @abc.abstractmethod
    def endpoint(cls, settings: Settings) -> str:
        """Where the store the settings name lives, for log lines."""

    @classmethod
    @abc.abstractmethod
    def unavailable_errors(cls) -> tuple[type[BaseException], ...]:
        """Errors that mean "not reachable now" (worth waiting for), not a bug."""

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def episode_steps_of(rows: list[tuple]) -> EpisodeSteps:
    """``EpisodeSteps`` from ``(episode_id, t, reward, ended, model_version)`` rows, as adapters read them."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 5
    return EpisodeSteps(
        episode_id=np.array(cols[0], dtype=object),
        t=np.array(cols[1], dtype=np.int64),
        reward=np.array(cols[2], dtype=np.float32),
        ended=np.array(cols[3], dtype=bool),
        model_version=np.array(cols[4], dtype=np.int64),
    )


def _same_row(a: TransitionBatch, i: int, b: TransitionBatch, j: int) -> bool:
    """Row ``i`` of ``a`` equals row ``j`` of ``b`` as the store keeps it (float32 values, compared bit for bit)."""
    return all(
        np.asarray(getattr(a, name)[i], dtype=np.asarray(getattr(b, name)[j]).dtype).tobytes()
        == np.asarray(getattr(b, name)[j]).tobytes()
        for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "model_version")
    )
