"""SQLite adapter (embedded profile): one WAL database, one table per game.

The ``games`` table maps each game id to its table, named once at the game's first write
(``infra.names.unique_name``: distinct for every distinct id); a store written before keeps its tables.

Each game's table has a dense integer key ``seq`` (appends only: ignored duplicates take no key;
retention deletes from the head), so uniform sampling draws random keys in [min, max] and reads them
by primary key, and the row count is max - min + 1: no scan, whatever the size.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np

from rlplatform.infra.names import unique_name
from rlplatform.settings import Settings
from rlplatform.store.base import (
    EpisodeSteps,
    ExperienceStore,
    GameShapes,
    TransitionBatch,
    episode_steps_of,
)

_COLUMNS = "episode_id, t, obs, action, reward, next_obs, terminated, truncated, model_version"
# Values per IN (...) list: below SQLite's default limit of host parameters (999 before 3.32).
_IN_CHUNK = 500


class SqliteStore(ExperienceStore):
    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per store object, guarded by a lock: sqlite3 objects are not thread-safe.
        self._conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS games (game_id TEXT PRIMARY KEY, table_name TEXT NOT NULL,"
            " obs_dim INTEGER NOT NULL, action_dtype TEXT NOT NULL, action_dim INTEGER NOT NULL)"
        )
        self._games: dict[str, tuple[str, GameShapes]] = {}

    def write(self, game_id: str, batch: TransitionBatch) -> int:
        if len(batch) == 0:
            return 0
        table, shapes = self._game(game_id, batch)
        obs, next_obs, action = shapes.arrays(game_id, batch)
        rows = zip(
            batch.episode_id.tolist(),
            batch.t.tolist(),
            map(bytes, obs),
            map(bytes, action),
            batch.reward.tolist(),
            map(bytes, next_obs),
            batch.terminated.tolist(),
            batch.truncated.tolist(),
            batch.model_version.tolist(),
            strict=True,
        )
        with self._lock:
            before = self._conn.total_changes
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(f"INSERT OR IGNORE INTO {table} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return self._conn.total_changes - before

    def _sample(
        self, game_id: str, n: int, rng: np.random.Generator, window: int | None, follow: int
    ) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            raise LookupError(f"no transitions stored for game {game_id!r}")
        table, shapes = game
        with self._lock:
            lo, hi = self._seq_range(table)
            if lo is None:
                raise LookupError(f"no transitions stored for game {game_id!r}")
            if window is not None:
                lo = max(lo, hi - window + 1)
            rowids = rng.integers(lo, hi + 1, size=n)
            wanted = _followed_seqs(rowids, follow)
            placeholders = ",".join("?" * len(wanted))
            found = self._conn.execute(
                f"SELECT seq, {_COLUMNS} FROM {table} WHERE seq IN ({placeholders})", wanted
            ).fetchall()
        by_rowid = {row[0]: row[1:] for row in found}
        # A rowid can vanish between the range read and the fetch only through retention; redraw those.
        drawn = [r for r in rowids.tolist() if r in by_rowid]
        batch = shapes.to_batch(_with_followers(shapes, drawn, by_rowid, follow))
        if len(drawn) < n:
            return TransitionBatch.concat([batch, self.sample(game_id, n - len(drawn), rng, window, follow)])
        return batch

    def _stored(self, game_id: str, batch: TransitionBatch) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            return batch[:0]
        table, shapes = game
        rows: list[tuple] = []
        with self._lock:
            for episode_id, (lo, hi) in _t_ranges(batch).items():
                rows += self._conn.execute(
                    f"SELECT {_COLUMNS} FROM {table} WHERE episode_id = ? AND t BETWEEN ? AND ?", (episode_id, lo, hi)
                ).fetchall()
        return shapes.to_batch(rows)

    def _episode_ends(self, game_id: str, episode_ids: list[str]) -> dict[str, int]:
        game = self._known_game(game_id)
        if game is None:
            return {}
        ends: dict[str, int] = {}
        with self._lock:
            for i in range(0, len(episode_ids), _IN_CHUNK):
                part = episode_ids[i : i + _IN_CHUNK]
                ends |= dict(
                    self._conn.execute(
                        f"SELECT episode_id, MIN(t) FROM {game[0]} WHERE episode_id IN ({','.join('?' * len(part))})"
                        " AND (terminated OR truncated) GROUP BY episode_id",
                        part,
                    ).fetchall()
                )
        return ends

    def _episode_steps(self, game_id: str) -> EpisodeSteps:
        game = self._known_game(game_id)
        if game is None:
            return episode_steps_of([])
        with self._lock:
            rows = self._conn.execute(
                f"SELECT episode_id, t, reward, terminated OR truncated, model_version FROM {game[0]}"
            ).fetchall()
        return episode_steps_of(rows)

    def seq_bounds(self, game_id: str) -> tuple[int, int]:
        game = self._known_game(game_id)
        if game is None:
            return 0, -1
        with self._lock:
            lo, hi = self._seq_range(game[0])
        return (0, -1) if lo is None else (lo, hi)

    def read_seqs(self, game_id: str, first: int, last: int) -> tuple[np.ndarray, TransitionBatch]:
        game = self._known_game(game_id)
        if game is None:
            raise LookupError(f"no transitions stored for game {game_id!r}")
        table, shapes = game
        with self._lock:
            found = self._conn.execute(
                f"SELECT seq, {_COLUMNS} FROM {table} WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)
            ).fetchall()
        return np.array([row[0] for row in found], dtype=np.int64), shapes.to_batch([row[1:] for row in found])

    def written(self, game_id: str) -> int:
        game = self._known_game(game_id)
        if game is None:
            return 0
        with self._lock:  # seqs are dense from 1 and retention never drops the newest row
            _, hi = self._seq_range(game[0])
        return hi or 0

    def retain(self, game_id: str, max_rows: int) -> int:
        game = self._known_game(game_id)
        if game is None:
            return 0
        with self._lock:
            (hi,) = self._conn.execute(f"SELECT max(seq) FROM {game[0]}").fetchone()
            if hi is None:
                return 0
            cur = self._conn.execute(f"DELETE FROM {game[0]} WHERE seq <= ?", (hi - max_rows,))
            return cur.rowcount

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteStore:
        return cls(settings.sqlite.path)

    @classmethod
    def endpoint(cls, settings: Settings) -> str:
        return str(settings.sqlite.path)

    @classmethod
    def unavailable_errors(cls) -> tuple[type[BaseException], ...]:
        return (sqlite3.OperationalError,)  # locked, or the file cannot be opened

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _seq_range(self, table: str) -> tuple[int | None, int | None]:
        """(min, max) of the dense ``seq`` key. Two scalar subqueries on purpose: SQLite answers a lone
        min() or max() from the primary key, but scans the whole table for both in one SELECT."""
        return self._conn.execute(f"SELECT (SELECT min(seq) FROM {table}), (SELECT max(seq) FROM {table})").fetchone()

    def _known_game(self, game_id: str) -> tuple[str, GameShapes] | None:
        if game_id not in self._games:
            with self._lock:
                row = self._conn.execute(
                    "SELECT table_name, obs_dim, action_dtype, action_dim FROM games WHERE game_id = ?", (game_id,)
                ).fetchone()
            if row is None:
                return None
            self._games[game_id] = (row[0], GameShapes(row[1], np.dtype(row[2]), row[3]))
        return self._games[game_id]

    def _game(self, game_id: str, batch: TransitionBatch) -> tuple[str, GameShapes]:
        """The game's table, created on its first write with the shapes of that batch."""
        known = self._known_game(game_id)
        if known is not None:
            return known
        table = unique_name("exp_", game_id)
        shapes = GameShapes.of(batch)
        with self._lock:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY, episode_id TEXT NOT NULL,"
                " t INTEGER NOT NULL, obs BLOB NOT NULL, action BLOB NOT NULL, reward REAL NOT NULL,"
                " next_obs BLOB NOT NULL, terminated INTEGER NOT NULL, truncated INTEGER NOT NULL,"
                " model_version INTEGER NOT NULL, UNIQUE (episode_id, t))"
            )
            self._conn.execute(
                "INSERT OR IGNORE INTO games VALUES (?, ?, ?, ?, ?)",
                (game_id, table, shapes.obs_dim, shapes.action_dtype.str, shapes.action_dim),
            )
        self._games.pop(game_id, None)
        game = self._known_game(game_id)
        assert game is not None
        return game


def _followed_seqs(draws: np.ndarray, follow: int) -> list[int]:
    """The distinct seqs to read for ``draws`` and their ``follow`` followers each."""
    return np.unique(draws[:, None] + np.arange(follow + 1)).tolist()


def _with_followers(shapes: GameShapes, draws: list[int], found: dict[int, tuple], follow: int) -> list[tuple]:
    """Per draw (a seq that is in ``found``) its row, then the rows at the next ``follow`` seqs, a
    placeholder where one is not in ``found``: the layout ``ExperienceStore.sample`` returns."""
    placeholder = shapes.placeholder_row()
    return [found.get(s + j, placeholder) for s in draws for j in range(follow + 1)]


def _t_ranges(batch: TransitionBatch) -> dict[str, tuple[int, int]]:
    """Per episode of the batch, the lowest and highest step index: one range read per episode."""
    ranges: dict[str, tuple[int, int]] = {}
    for episode_id, t in zip(batch.episode_id.tolist(), batch.t.tolist(), strict=True):
        lo, hi = ranges.get(episode_id, (t, t))
        ranges[episode_id] = (min(lo, t), max(hi, t))
    return ranges
