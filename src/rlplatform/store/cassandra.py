"""Cassandra adapter (compose / aws profiles): Apache Cassandra 4/5, ScyllaDB and Amazon Keyspaces.

Schema (one keyspace, five tables; every query names a full partition key with equality, so none
needs ALLOW FILTERING, a secondary index or a materialized view):

``segments ((game_id, chunk), block, start)``
    The steps. Each game has a dense sequence ``seq`` (0, 1, 2, ... in write order, as in the SQLite
    adapter). A stored row is a *segment* (``segments.py``): up to ``block_steps`` (32) steps with
    consecutive seqs, of one episode, inside one block ``seq // block_steps``, its columns the run's
    arrays as bytes. A chunk of 256 steps is ~8 rows, not 256: that is what makes writes cheap in
    requests, client CPU and server mutations. Block ``b`` lives in partition ``chunk = b *
    block_steps // rows_per_partition`` (fixed per game at its first write so a partition holds ~4 MiB,
    at most 32,768 steps): bounded partitions, and every step has a known address. Uniform sampling draws
    random seqs in ``[lo, hi]``, reads their blocks by primary key (``chunk = ? AND block IN ?``, one
    read per touched partition) and takes each draw's step from its segment: no scan, no token-range
    walk, whatever the size. ``window`` is ``[hi - window + 1, hi]``. Draws that hit a missing seq (see
    holes below) are redrawn, so the result stays uniform over the steps that exist. ``[lo, hi]`` is read
    at most once a second per game (``_BOUNDS_TTL_S``; at once after a write or retain through the same
    store): another process's new steps become sampleable within that second.
``seq_alloc (game_id)``
    ``next_seq`` = hi + 1. A writer reserves a block of ``k`` seqs with one compare-and-set
    (``UPDATE ... IF next_seq = ?``, a lightweight transaction) per write, not per row. No counters:
    counters cannot carry a TTL and Keyspaces does not mix them with it.
``episode_runs ((game_id, episode_id), t_last) -> t_first, seq_first``
    The idempotency keys: per episode, runs of steps ``t_first..t_last`` stored at seqs ``seq_first..``.
    A write first reads the runs of its episodes that end at or after its lowest step (one
    single-partition read per episode), reserves seqs only for the steps not recorded, writes their runs
    (one row per episode per write, as a chunk arrives), then the segments. A redelivered step is not
    counted again; if its segment is missing (a writer died between the two phases) it is written at its
    recorded seq, which repairs that write.
``episode_ends ((game_id, episode_id)) -> t_end``
    The episode's earliest terminated or truncated step, written with the runs of the write that stores it;
    ingest reads it for the episodes of a batch (one single-partition read each) to refuse steps after an end
    (``after_end``).
``games (game_id)``
    obs_dim, action dtype/dim, rows_per_partition and block_steps, fixed by the game's first write (LWT).

Amazon Keyspaces quotas, and where the code respects them: a row is at most 1 MB (``SEGMENT_BYTES``
caps a segment's values at half of it); a batch holds at most 30 statements (``BATCH_STATEMENTS``, and
``BATCH_BYTES`` keeps it under Cassandra's batch size limit too), of one partition each; an ``IN`` list
holds at most 100 values (``IN_LIMIT``); a connection serves up to 3,000 requests/s, and a write of 256
steps is ~5 requests. A partition takes at most 1,000 write units/s (1 KB each): writes go to the newest
partition of a game, so one game's ingest is bounded there by ~1 MB/s of stored steps (~15,000 CartPole
steps/s); reads spread over every partition.

Retention is TTL: every ``segments``, ``episode_runs`` and ``episode_ends`` row is written ``USING TTL``
``RLP_CASSANDRA_TTL_SECONDS``, so the cluster drops it that long after it was written, with no delete
traffic from us (TimeWindowCompactionStrategy is the natural compaction for these tables; it is not
set here because Keyspaces rejects compaction options). Because seqs are handed out in write order,
expiry eats the sequence from its head: the oldest live step ``lo`` is found with a binary search over
the partitions (``... WHERE game_id = ? AND chunk = ? AND block >= ? LIMIT 1``), log2(#chunks)
single-row reads at most and one read in the steady state (a per-store hint remembers the head once a
second observation, a minute later, has confirmed it). ``count`` is ``hi - lo + 1``.
``retain(game_id, max_rows)`` bounds the size too: it deletes whole partitions and blocks below the cut,
and rewrites the one segment the cut splits (its kept steps get a fresh TTL).

Known approximations (documented, not hidden):
  * Holes: seqs reserved but never written (a writer died after reserving; two writers raced on the
    same new step and both reserved a seq), and seqs of a write in flight (reserved, rows not yet written).
    Sampling redraws them, then fills up among the steps it found; ``count`` includes them.
  * Two writers that write the same new step at the same moment both count and store it (the key
    read and the key write are not one transaction; an LWT per write would fix it at ~4x the cost).
  * A key whose step was removed by ``retain`` stays until its TTL: a redelivery of it is ignored.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from cassandra import ConsistencyLevel, DriverException, OperationTimedOut, Unavailable, WriteTimeout
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from rlplatform.settings import CassandraSettings, Settings
from rlplatform.store.base import EpisodeSteps, ExperienceStore, GameShapes, TransitionBatch, episode_steps_of
from rlplatform.store.segments import Pool, encode, episode_steps, split_runs, step_bytes, steps_in

log = logging.getLogger(__name__)

BLOCK_STEPS = 32
# A partition holds this many bytes of steps (rows_per_partition, fixed per game), and at most MAX_BLOCKS blocks.
PARTITION_BYTES = 4 * 1024 * 1024
MAX_BLOCKS = 1024
# Values of one segment row: half of Amazon Keyspaces' 1 MB row limit (a wide game's segments hold fewer steps).
SEGMENT_BYTES = 512 * 1024
CONCURRENCY = 64
# Blocks per ``block IN ?`` read (Amazon Keyspaces caps IN lists at 100 values).
IN_LIMIT = 100
# Rows per write request: an unlogged batch of one partition's rows is one mutation, one request. Amazon
# Keyspaces accepts at most 30 statements per batch; Cassandra fails a batch above batch_size_fail_threshold
# (50 KiB by default, counted with each cell's overhead), so a batch also stops before this many bytes of values.
BATCH_STATEMENTS = 30
BATCH_BYTES = 32 * 1024
# Tables, in creation order. Experience tables carry a TTL; the other two are O(games) metadata.
TABLES = ("games", "seq_alloc", "segments", "episode_runs", "episode_ends")
TTL_TABLES = ("segments", "episode_runs", "episode_ends")
# Tables of the layout before segments (one row per step), which this adapter does not read.
LEGACY_TABLES = ("transitions", "transition_keys")
_SEGMENT_COLUMNS = "start, episode_id, t, obs, action, reward, next_obs, flags, model_version"
# Redraw rounds for draws that hit missing seqs; then the draws still missing are made among the steps found.
_SAMPLE_ROUNDS = 16
# A head observation is trusted as a search hint once a second one, this much later, confirms it
# (by then every write that was in flight at the first observation has landed or failed).
_HEAD_SETTLE_S = 60.0
# A sample reads the seq bounds at most this often: another writer's steps become sampleable within this long
# (this store's own writes and retain() refresh them at once).
_BOUNDS_TTL_S = 1.0
_DDL_TIMEOUT_S = 120.0


class CassandraUnavailable(ConnectionError):
    """No contact point answered."""


def is_keyspaces(settings: CassandraSettings) -> bool:
    """Amazon Keyspaces (needs its own keyspace replication class and table TTL property)."""
    return settings.sigv4 or any(h.endswith(".amazonaws.com") for h in _contact_points(settings))


def keyspace_cql(settings: CassandraSettings) -> str:
    ks = settings.keyspace
    if is_keyspaces(settings):
        replication = "{'class': 'SingleRegionStrategy'}"
    elif settings.local_dc:
        replication = f"{{'class': 'NetworkTopologyStrategy', '{settings.local_dc}': {settings.replication_factor}}}"
    else:
        replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {settings.replication_factor}}}"
    return f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"


def schema_cql(keyspace: str, keyspaces_service: bool = False) -> dict[str, str]:
    """CREATE TABLE statements by table name (idempotent)."""
    # Keyspaces only accepts ``USING TTL`` on tables with TTL enabled; Cassandra/Scylla reject the property.
    ttl = " WITH CUSTOM_PROPERTIES = {'ttl': {'status': 'enabled'}}" if keyspaces_service else ""
    ks = keyspace
    return {
        "games": f"CREATE TABLE IF NOT EXISTS {ks}.games (game_id text PRIMARY KEY, obs_dim int, action_dtype text,"
        " action_dim int, rows_per_partition int, block_steps int)",
        "seq_alloc": f"CREATE TABLE IF NOT EXISTS {ks}.seq_alloc (game_id text PRIMARY KEY, next_seq bigint,"
        " writer uuid)",
        "segments": f"CREATE TABLE IF NOT EXISTS {ks}.segments (game_id text, chunk bigint, block bigint,"
        " start bigint, episode_id text, t blob, obs blob, action blob, reward blob, next_obs blob, flags blob,"
        f" model_version blob, written_at timestamp, PRIMARY KEY ((game_id, chunk), block, start)){ttl}",
        "episode_runs": f"CREATE TABLE IF NOT EXISTS {ks}.episode_runs (game_id text, episode_id text,"
        f" t_last bigint, t_first bigint, seq_first bigint, PRIMARY KEY ((game_id, episode_id), t_last)){ttl}",
        "episode_ends": f"CREATE TABLE IF NOT EXISTS {ks}.episode_ends (game_id text, episode_id text, t_end bigint,"
        f" PRIMARY KEY ((game_id, episode_id))){ttl}",
    }


def statements(keyspace: str, ttl_seconds: int) -> dict[str, str]:
    """Every DML statement the adapter runs (all prepared), by name."""
    ks, ttl = keyspace, int(ttl_seconds)
    return {
        "insert_game": f"INSERT INTO {ks}.games (game_id, obs_dim, action_dtype, action_dim, rows_per_partition,"
        " block_steps) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
        "select_game": f"SELECT obs_dim, action_dtype, action_dim, rows_per_partition, block_steps FROM {ks}.games"
        " WHERE game_id = ?",
        "select_next": f"SELECT next_seq, writer FROM {ks}.seq_alloc WHERE game_id = ?",
        "init_next": f"INSERT INTO {ks}.seq_alloc (game_id, next_seq, writer) VALUES (?, ?, ?) IF NOT EXISTS",
        "advance_next": f"UPDATE {ks}.seq_alloc SET next_seq = ?, writer = ? WHERE game_id = ? IF next_seq = ?",
        "select_runs": f"SELECT t_last, t_first, seq_first FROM {ks}.episode_runs WHERE game_id = ? AND episode_id = ?"
        " AND t_last >= ?",
        "insert_run": f"INSERT INTO {ks}.episode_runs (game_id, episode_id, t_last, t_first, seq_first)"
        f" VALUES (?, ?, ?, ?, ?) USING TTL {ttl}",
        "insert_end": f"INSERT INTO {ks}.episode_ends (game_id, episode_id, t_end) VALUES (?, ?, ?) USING TTL {ttl}",
        "select_end": f"SELECT t_end FROM {ks}.episode_ends WHERE game_id = ? AND episode_id = ?",
        "insert_segment": f"INSERT INTO {ks}.segments (game_id, chunk, block, {_SEGMENT_COLUMNS}, written_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {ttl}",
        "select_blocks": f"SELECT {_SEGMENT_COLUMNS} FROM {ks}.segments WHERE game_id = ? AND chunk = ? AND block IN ?",
        "select_block": f"SELECT {_SEGMENT_COLUMNS} FROM {ks}.segments WHERE game_id = ? AND chunk = ? AND block = ?",
        "select_block_range": f"SELECT {_SEGMENT_COLUMNS} FROM {ks}.segments WHERE game_id = ? AND chunk = ?"
        " AND block >= ? AND block <= ?",
        "select_chunk_steps": "SELECT episode_id, t, reward, flags, model_version"
        f" FROM {ks}.segments WHERE game_id = ? AND chunk = ?",
        "first_start": f"SELECT start FROM {ks}.segments WHERE game_id = ? AND chunk = ? AND block >= ? LIMIT 1",
        "delete_chunk": f"DELETE FROM {ks}.segments WHERE game_id = ? AND chunk = ?",
        "delete_blocks_below": f"DELETE FROM {ks}.segments WHERE game_id = ? AND chunk = ? AND block < ?",
        "delete_segment": f"DELETE FROM {ks}.segments WHERE game_id = ? AND chunk = ? AND block = ? AND start = ?",
    }


# Schema probes (not prepared; run at startup only). Partition key of these tables: keyspace_name.
KEYSPACE_EXISTS_CQL = "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s"
KEYSPACE_TABLES_CQL = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s"
KEYSPACES_TABLE_STATUS_CQL = (
    "SELECT table_name, status FROM system_schema_mcs.tables WHERE keyspace_name = %s AND table_name = %s"
)
# Statements that are lightweight transactions: a retry may report "not applied" for its own write.
_LWT = ("insert_game", "init_next", "advance_next")


class LegacyLayoutError(RuntimeError):
    """The keyspace holds experience in a layout this version does not read."""


@dataclass(frozen=True)
class _Game(GameShapes):
    rows_per_partition: int
    block_steps: int

    def chunk_of_block(self, block: int) -> int:
        return block * self.block_steps // self.rows_per_partition


def rows_per_partition_for(shapes: GameShapes, block_steps: int = BLOCK_STEPS) -> int:
    """Steps per partition for a game: ``PARTITION_BYTES`` of its steps, whole blocks, 1..MAX_BLOCKS of them."""
    blocks = PARTITION_BYTES // (block_steps * step_bytes(shapes))
    return block_steps * min(MAX_BLOCKS, max(1, blocks))


def bootstrap_keyspace(settings: CassandraSettings) -> None:
    """Create the keyspace and tables the settings name, if missing (idempotent; ``rlplatform bootstrap``)."""
    CassandraStore(settings).close()


class CassandraStore(ExperienceStore):
    def __init__(
        self,
        settings: CassandraSettings,
        *,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        ttl_seconds: int | None = None,
        rows_per_partition: int | None = None,
    ) -> None:
        """``ttl_seconds`` overrides ``settings.ttl_seconds`` and ``rows_per_partition`` (a multiple of
        ``BLOCK_STEPS``) the size a new game's partitions get (tests use a few seconds and small partitions)."""
        self.settings = settings
        self.keyspace = settings.keyspace
        self.ttl_seconds = int(ttl_seconds if ttl_seconds is not None else settings.ttl_seconds)
        if self.ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1, got {self.ttl_seconds}")
        if rows_per_partition is not None and (rows_per_partition < 1 or rows_per_partition % BLOCK_STEPS):
            raise ValueError(f"rows_per_partition: a positive multiple of {BLOCK_STEPS}, got {rows_per_partition}")
        self.rows_per_partition = rows_per_partition
        self.keyspaces_service = is_keyspaces(settings)
        self._cluster, self._session = _connect(settings, connect_timeout, request_timeout)
        try:
            self.ensure_schema()
            self._stmts: dict[str, PreparedStatement] = {}
            for name, cql in statements(self.keyspace, self.ttl_seconds).items():
                stmt = self._session.prepare(cql)
                stmt.is_idempotent = name not in _LWT
                self._stmts[name] = stmt
        except BaseException:
            self._cluster.shutdown()
            raise
        self._games: dict[str, _Game] = {}
        self._head_hint: dict[str, int] = {}
        self._head_seen: dict[str, tuple[float, int]] = {}
        self._bounds: dict[str, tuple[float, int, int]] = {}  # game -> (read at, lo, hi) for sampling
        self._hint_lock = threading.Lock()

    # -- schema -------------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the keyspace (if allowed) and the tables, if missing; idempotent. ``LegacyLayoutError`` for
        a keyspace written in the layout before segments."""
        ks = self.keyspace
        try:
            self._session.execute(keyspace_cql(self.settings), timeout=_DDL_TIMEOUT_S)
        except DriverException as exc:
            if not self._keyspace_exists():
                raise RuntimeError(
                    f"cassandra: keyspace {ks!r} does not exist and could not be created ({exc!r}); create it"
                    " (e.g. `rlplatform bootstrap` with a role allowed to CREATE KEYSPACE) or grant that permission"
                ) from exc
            log.warning("cassandra: CREATE KEYSPACE %s failed (%s); it exists, continuing", ks, exc)
        if self.keyspaces_service:  # keyspace creation is asynchronous on Keyspaces
            self._wait(self._keyspace_exists, f"keyspace {ks} to exist")
        self._refuse_legacy_layout()
        for table, ddl in schema_cql(ks, self.keyspaces_service).items():
            self._session.execute(ddl, timeout=_DDL_TIMEOUT_S)
            if self.keyspaces_service:  # so is table creation: wait until ACTIVE before first use
                self._wait(lambda t=table: self._keyspaces_table_active(t), f"table {ks}.{table} to be ACTIVE")

    def _refuse_legacy_layout(self) -> None:
        tables = {row.table_name for row in self._session.execute(KEYSPACE_TABLES_CQL, (self.keyspace,))}
        legacy = sorted(tables & set(LEGACY_TABLES))
        if legacy:
            ks = self.keyspace
            drops = " ".join(f"DROP TABLE {ks}.{t};" for t in (*legacy, "games", "seq_alloc") if t in tables)
            raise LegacyLayoutError(
                f"cassandra: keyspace {ks!r} holds experience in the layout of before segments (tables"
                f" {', '.join(legacy)}: one row per step), which this version does not read. Point"
                f" RLP_CASSANDRA_KEYSPACE at a new keyspace, or, once that experience is no longer needed, drop"
                f" its tables ({drops}) and start again"
            )

    def _keyspace_exists(self) -> bool:
        return self._session.execute(KEYSPACE_EXISTS_CQL, (self.keyspace,)).one() is not None

    def _keyspaces_table_active(self, table: str) -> bool:
        row = self._session.execute(KEYSPACES_TABLE_STATUS_CQL, (self.keyspace, table)).one()
        return row is not None and str(row.status).upper() == "ACTIVE"

    @staticmethod
    def _wait(condition, what: str, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"cassandra: gave up after {timeout_s:.0f}s waiting for {what}")
            time.sleep(1.0)

    # -- port ---------------------------------------------------------------------------------------

    def write(self, game_id: str, batch: TransitionBatch) -> int:
        if len(batch) == 0:
            return 0
        game = self._game(game_id, batch)
        obs, next_obs, action = game.arrays(game_id, batch)
        episodes = [str(e) for e in batch.episode_id.tolist()]
        ts = batch.t.astype(np.int64).tolist()

        # 1. Which steps are recorded already: one single-partition read per episode of the batch.
        recorded = self._recorded_seqs(game_id, episodes, ts)
        new_by_episode: dict[str, list[int]] = {}  # batch rows of steps seen for the first time, per episode
        repair: list[tuple[int, int]] = []  # (row, seq) of redelivered steps whose segment may be missing
        seen: set[tuple[str, int]] = set()
        head = self._head_hint.get(game_id, 0)
        for i, key in enumerate(zip(episodes, ts, strict=True)):
            if key in seen:
                continue
            seen.add(key)
            seq = recorded.get(key)
            if seq is None:
                new_by_episode.setdefault(key[0], []).append(i)
            elif seq >= head:
                repair.append((i, seq))

        # A redelivered step whose segment is there keeps it (the first content stays, as in every adapter); one
        # whose segment is missing (a writer died between recording the runs and writing the segments) is repaired.
        if repair:
            pool = self._pool(game, game_id, [s for _, s in repair])
            held = pool.index(np.array([s for _, s in repair], dtype=np.int64)) >= 0
            repair = [r for r, h in zip(repair, held.tolist(), strict=True) if not h]

        # 2. Reserve seqs for the new steps (each episode's consecutively), 3. record their runs, 4. write segments.
        placed = repair
        new = [i for rows in new_by_episode.values() for i in rows]
        if new:
            first = self._reserve(game_id, len(new))
            placed = placed + [(i, first + k) for k, i in enumerate(new)]
            self._batched("insert_run", _runs(game_id, episodes, ts, new, first))
            self._batched("insert_end", _ends(game_id, episodes, ts, batch, new))
        if placed:
            placed.sort(key=lambda p: p[1])
            rows = np.array([i for i, _ in placed], dtype=np.int64)
            seqs = np.array([s for _, s in placed], dtype=np.int64)
            max_steps = max(1, SEGMENT_BYTES // step_bytes(game))
            now = datetime.now(UTC)
            segments = []
            for run in split_runs(rows, seqs, batch.episode_id[rows], game.block_steps, max_steps):
                block = run.start // game.block_steps
                values = encode(run, batch, obs, next_obs, action)
                segments.append((game_id, game.chunk_of_block(block), block, run.start, *values, now))
            self._batched("insert_segment", segments)
        self._bounds.pop(game_id, None)
        return len(new)

    def _sample(
        self, game_id: str, n: int, rng: np.random.Generator, window: int | None, follow: int
    ) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            raise LookupError(f"no transitions stored for game {game_id!r}")
        drawn = np.empty(0, dtype=np.int64)
        blocks: dict[int, list[tuple]] = {}  # block -> its segments, read once per sample
        lo = hi = 0
        for round_ in range(_SAMPLE_ROUNDS):
            lo, hi = self._sample_bounds(game_id, fresh=round_ > 0)
            if lo > hi:
                raise LookupError(f"no transitions stored for game {game_id!r}")
            if window is not None:
                lo = max(lo, hi - window + 1)
            draws = rng.integers(lo, hi + 1, size=n - len(drawn))
            pool = self._pool(game, game_id, _followed(draws, follow), blocks)
            # A draw can miss: a hole, a step written a moment from now, or one that just expired. Redraw it.
            drawn = np.concatenate([drawn, draws[pool.index(draws) >= 0]])
            if len(drawn) == n:
                return pool.take(pool.index(_followed(drawn, follow).reshape(-1)))
        if not len(drawn):
            raise LookupError(f"{game_id}: no step readable in seq [{lo}, {hi}] (writes in flight, holes or expiry)")
        # Most of [lo, hi] is missing right now: typically one large batch whose seqs are reserved and whose
        # segments are being written (a backlog drained at start). Fill up among the steps found rather than fail.
        log.info("%s: %d of %d draws missed in seq [%d, %d]; drawn among the %d steps found", game_id,
                 n - len(drawn), n, lo, hi, len(drawn))  # fmt: skip
        drawn = np.concatenate([drawn, drawn[rng.integers(0, len(drawn), size=n - len(drawn))]])
        return pool.take(pool.index(_followed(drawn, follow).reshape(-1)))

    def _stored(self, game_id: str, batch: TransitionBatch) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            return batch[:0]
        episodes, ts = [str(e) for e in batch.episode_id.tolist()], batch.t.astype(np.int64).tolist()
        seqs = sorted(set(self._recorded_seqs(game_id, episodes, ts).values()))
        return self._pool(game, game_id, seqs).held(seqs)[1]

    def _episode_ends(self, game_id: str, episode_ids: list[str]) -> dict[str, int]:
        """One single-partition read per episode, all in flight together."""
        results = self._concurrent("select_end", [(game_id, e) for e in episode_ids])
        return {e: int(row.t_end) for e, rows in zip(episode_ids, results, strict=True) for row in rows}

    def _episode_steps(self, game_id: str) -> EpisodeSteps:
        game = self._known_game(game_id)
        if game is None:
            return episode_steps_of([])
        rpp = game.rows_per_partition
        hi = self._next_seq(game_id) - 1
        lo = self._head(game, game_id, hi)
        if lo > hi:
            return episode_steps_of([])
        pages = self._concurrent("select_chunk_steps", [(game_id, c) for c in range(lo // rpp, hi // rpp + 1)])
        return episode_steps([row for page in pages for row in page])

    def seq_bounds(self, game_id: str) -> tuple[int, int]:
        game = self._known_game(game_id)
        if game is None:
            return 0, -1
        hi = self._next_seq(game_id) - 1
        return (self._head(game, game_id, hi), hi) if hi >= 0 else (0, -1)

    def read_seqs(self, game_id: str, first: int, last: int) -> tuple[np.ndarray, TransitionBatch]:
        """One range read of blocks per partition the seqs span, paged by the driver."""
        game = self._known_game(game_id)
        if game is None:
            raise LookupError(f"no transitions stored for game {game_id!r}")
        bs, blocks_per_chunk = game.block_steps, game.rows_per_partition // game.block_steps
        first_block, last_block = first // bs, last // bs
        ranges = []  # (game_id, chunk, its first block, its last block) within [first_block, last_block]
        for chunk in range(game.chunk_of_block(first_block), game.chunk_of_block(last_block) + 1):
            lo, hi = chunk * blocks_per_chunk, (chunk + 1) * blocks_per_chunk - 1
            ranges.append((game_id, chunk, max(first_block, lo), min(last_block, hi)))
        pool = Pool(game, [tuple(row) for rows in self._concurrent("select_block_range", ranges) for row in rows])
        return pool.held(np.arange(first, last + 1, dtype=np.int64))

    def written(self, game_id: str) -> int:
        """Seqs handed out so far: the steps written, plus those of writes in flight and the holes (above)."""
        return 0 if self._known_game(game_id) is None else self._next_seq(game_id)

    def retain(self, game_id: str, max_rows: int) -> int:
        """Delete the oldest steps beyond ``max_rows`` (TTL is the primary retention; this caps size too).

        Whole partitions below the cut get a partition delete, whole blocks below it in the boundary partition
        one clustering range delete, and the segment the cut splits is rewritten with its kept steps only:
        O(partitions) tombstones, not one per step.
        """
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        game = self._known_game(game_id)
        if game is None:
            return 0
        hi = self._next_seq(game_id) - 1
        rpp, bs = game.rows_per_partition, game.block_steps
        lo = self._head(game, game_id, hi)
        cut = hi - max_rows  # the newest seq to drop
        if hi < 0 or cut < lo:
            return 0
        keep = cut + 1
        self._concurrent("delete_chunk", [(game_id, c) for c in range(lo // rpp, keep // rpp)])
        if keep % rpp >= bs:
            self._concurrent("delete_blocks_below", [(game_id, keep // rpp, keep // bs)])
        if keep % bs:
            self._split_block(game, game_id, keep)
        with self._hint_lock:  # we deleted them: everything below keep is gone for sure
            self._head_hint[game_id] = max(self._head_hint.get(game_id, 0), keep)
            self._head_seen.pop(game_id, None)
        self._bounds.pop(game_id, None)
        return keep - lo

    @classmethod
    def from_settings(cls, settings: Settings) -> CassandraStore:
        return cls(settings.cassandra)

    @classmethod
    def endpoint(cls, settings: Settings) -> str:
        return f"{settings.cassandra.contact_points} port {settings.cassandra.port}"

    @classmethod
    def unavailable_errors(cls) -> tuple[type[BaseException], ...]:
        return (CassandraUnavailable, NoHostAvailable, OperationTimedOut, Unavailable)

    def close(self) -> None:
        self._cluster.shutdown()

    # -- internals ----------------------------------------------------------------------------------

    def _concurrent(self, name: str, params: list[tuple]) -> list:
        """Run a prepared statement once per parameter tuple, CONCURRENCY in flight; results in order."""
        if not params:
            return []
        results = execute_concurrent_with_args(
            self._session, self._stmts[name], params, concurrency=CONCURRENCY, raise_on_first_error=True
        )
        return [result for _, result in results]

    def _batched(self, name: str, params: list[tuple]) -> None:
        """Run a prepared write once per parameter tuple, as unlogged batches of one partition each (the first
        two values are the partition key of every table written this way), CONCURRENCY requests in flight. A
        row whose values alone exceed ``BATCH_BYTES`` goes as a statement of its own."""
        by_partition: dict[tuple, list[tuple]] = {}
        for row in params:
            by_partition.setdefault(row[:2], []).append(row)
        statement, requests = self._stmts[name], []
        for rows in by_partition.values():
            batch, count, size = None, 0, 0  # a batch never spans two partitions
            for row in rows:
                row_bytes = sum(len(v) for v in row if isinstance(v, bytes | str))
                if row_bytes > BATCH_BYTES:
                    requests.append((statement, row))
                    continue
                if batch is None or count == BATCH_STATEMENTS or size + row_bytes > BATCH_BYTES:
                    batch, count, size = BatchStatement(batch_type=BatchType.UNLOGGED), 0, 0
                    requests.append((batch, None))
                batch.add(statement, row)
                count, size = count + 1, size + row_bytes
        execute_concurrent(self._session, requests, concurrency=CONCURRENCY, raise_on_first_error=True)

    def _recorded_seqs(self, game_id: str, episodes: list[str], ts: list[int]) -> dict[tuple[str, int], int]:
        """``(episode_id, t) -> seq`` of the given steps that are recorded already: per episode, one read of
        its runs that end at or after its lowest step here."""
        lowest: dict[str, int] = {}
        highest: dict[str, int] = {}
        for e, t in zip(episodes, ts, strict=True):
            lowest[e] = min(lowest.get(e, t), t)
            highest[e] = max(highest.get(e, t), t)
        results = self._concurrent("select_runs", [(game_id, e, lo) for e, lo in lowest.items()])
        found: dict[tuple[str, int], int] = {}
        for e, runs in zip(lowest, results, strict=True):
            for run in runs:  # only the part of a run inside this batch's steps of the episode
                for t in range(max(run.t_first, lowest[e]), min(run.t_last, highest[e]) + 1):
                    found[(e, t)] = run.seq_first + t - run.t_first
        return found

    def _pool(self, game: _Game, game_id: str, seqs, blocks: dict[int, list[tuple]] | None = None) -> Pool:
        """The segments of the blocks that hold ``seqs``, read by primary key (per partition, ``block IN``
        lists of at most IN_LIMIT); ``blocks`` caches what was read before and gains what is read now."""
        blocks = {} if blocks is None else blocks
        wanted = sorted({int(s) // game.block_steps for s in np.asarray(seqs).reshape(-1).tolist()} - set(blocks))
        by_chunk: dict[int, list[int]] = {}
        for b in wanted:
            by_chunk.setdefault(game.chunk_of_block(b), []).append(b)
            blocks[b] = []
        params = [
            (game_id, chunk, keys[i : i + IN_LIMIT])
            for chunk, keys in by_chunk.items()
            for i in range(0, len(keys), IN_LIMIT)
        ]
        for rows in self._concurrent("select_blocks", params):
            for row in rows:
                blocks[row.start // game.block_steps].append(tuple(row))
        return Pool(game, [segment for segments in blocks.values() for segment in segments])

    def _split_block(self, game: _Game, game_id: str, keep: int) -> None:
        """Drop the steps below seq ``keep`` from its block: segments wholly below go, the one ``keep`` splits
        is written again from ``keep`` on (before its old row goes, so no reader sees a gap)."""
        block = keep // game.block_steps
        chunk = game.chunk_of_block(block)
        for row in self._session.execute(self._stmts["select_block"], (game_id, chunk, block)):
            if row.start >= keep:
                continue
            n = steps_in(row.t)
            if row.start + n > keep:
                k = keep - row.start  # steps to drop from the front
                cols = (row.t, row.obs, row.action, row.reward, row.next_obs, row.flags, row.model_version)
                kept = [col[len(col) // n * k :] for col in cols]
                now = datetime.now(UTC)
                self._session.execute(
                    self._stmts["insert_segment"], (game_id, chunk, block, keep, row.episode_id, *kept, now)
                )
            self._session.execute(self._stmts["delete_segment"], (game_id, chunk, block, row.start))

    def _sample_bounds(self, game_id: str, fresh: bool) -> tuple[int, int]:
        """``(lo, hi)``: the oldest and newest seq to draw from, read at most every ``_BOUNDS_TTL_S`` unless
        ``fresh`` (two requests saved on most samples: a learner samples tens of times a second)."""
        now = time.monotonic()
        read_at, lo, hi = self._bounds.get(game_id, (-_BOUNDS_TTL_S, 0, -1))
        if fresh or now - read_at >= _BOUNDS_TTL_S:
            lo, hi = self.seq_bounds(game_id)
            self._bounds[game_id] = (now, lo, hi)
        return lo, hi

    def _next_seq(self, game_id: str) -> int:
        row = self._session.execute(self._stmts["select_next"], (game_id,)).one()
        return 0 if row is None or row.next_seq is None else row.next_seq

    def _reserve(self, game_id: str, k: int) -> int:
        """Reserve seqs [first, first + k) with a compare-and-set on ``seq_alloc``; returns first."""
        token = uuid.uuid4()
        row = self._session.execute(self._stmts["select_next"], (game_id,)).one()
        current = None if row is None else row.next_seq
        for attempt in range(200):
            if current is None:
                stmt, args, first = self._stmts["init_next"], (game_id, k, token), 0
            else:
                stmt, args, first = self._stmts["advance_next"], (current + k, token, game_id, current), current
            try:
                rs = self._session.execute(stmt, args)
                if rs.was_applied:
                    return first
                current = getattr(rs.one(), "next_seq", None)
            except WriteTimeout:
                # Outcome unknown: a serial read tells whether our CAS is the one that landed.
                probe = self._stmts["select_next"].bind((game_id,))
                probe.consistency_level = ConsistencyLevel.LOCAL_SERIAL
                now = self._session.execute(probe).one()
                if now is not None and now.writer == token and now.next_seq == first + k:
                    return first
                current = None if now is None else now.next_seq
            if attempt >= 2:  # contended: back off a little, with jitter
                time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        raise RuntimeError(f"{game_id}: could not reserve {k} sequence numbers (seq_alloc too contended)")

    def _first_live(self, game_id: str, chunk: int, floor: int, block_steps: int) -> int | None:
        """The first stored seq at or after ``floor`` in partition ``chunk`` (floor is a segment's start)."""
        row = self._session.execute(self._stmts["first_start"], (game_id, chunk, floor // block_steps)).one()
        return None if row is None else max(row.start, floor)

    def _head(self, game: _Game, game_id: str, hi: int) -> int:
        """The oldest live seq (``hi + 1`` when none): TTL expiry and retain() remove the sequence's head.

        Probes the hinted partition, then binary-searches the partitions above it for the first one that
        still holds a row; each probe is one ``LIMIT 1`` read of one partition.
        """
        with self._hint_lock:
            hint = self._head_hint.get(game_id, 0)
        if hint > hi:
            return hint
        rpp, bs = game.rows_per_partition, game.block_steps
        lo_chunk, hi_chunk = hint // rpp, hi // rpp
        head = self._first_live(game_id, lo_chunk, hint, bs)
        if head is None:
            a, b, head = lo_chunk + 1, hi_chunk, hi + 1
            while a <= b:
                mid = (a + b) // 2
                found = self._first_live(game_id, mid, hint, bs)
                if found is None:
                    a = mid + 1
                else:
                    head, b = found, mid - 1
        self._observe_head(game_id, head)
        return head

    def _observe_head(self, game_id: str, head: int) -> None:
        """Advance the hint to a head seen twice, ``_HEAD_SETTLE_S`` apart (so an in-flight write at the
        first look, which made a partition look empty, cannot make us skip its rows forever)."""
        now = time.monotonic()
        with self._hint_lock:
            seen = self._head_seen.get(game_id)
            if seen is None:
                self._head_seen[game_id] = (now, head)
            elif now - seen[0] >= _HEAD_SETTLE_S:
                confirmed = min(seen[1], head)
                self._head_hint[game_id] = max(self._head_hint.get(game_id, 0), confirmed)
                self._head_seen[game_id] = (now, head)

    def _known_game(self, game_id: str) -> _Game | None:
        if game_id not in self._games:
            row = self._session.execute(self._stmts["select_game"], (game_id,)).one()
            if row is None:
                return None
            shapes = (row.obs_dim, np.dtype(row.action_dtype), row.action_dim)
            self._games[game_id] = _Game(*shapes, row.rows_per_partition, row.block_steps)
        return self._games[game_id]

    def _game(self, game_id: str, batch: TransitionBatch) -> _Game:
        """The game's shapes, fixed by its first write (an LWT insert, so concurrent first writers agree)."""
        known = self._known_game(game_id)
        if known is not None:
            return known
        shapes = GameShapes.of(batch)
        rpp = self.rows_per_partition or rows_per_partition_for(shapes)
        self._session.execute(
            self._stmts["insert_game"],
            (game_id, shapes.obs_dim, shapes.action_dtype.str, shapes.action_dim, rpp, BLOCK_STEPS),
        )
        game = self._known_game(game_id)
        if game is None:
            raise RuntimeError(f"{game_id}: game row missing right after its insert")
        return game


def _ends(game_id: str, episodes: list[str], ts: list[int], batch: TransitionBatch, rows: list[int]) -> list[tuple]:
    """``episode_ends`` rows ``(game_id, episode_id, t_end)``: each episode's earliest terminated or truncated step
    among batch rows ``rows`` (the new ones)."""
    done = batch.terminated | batch.truncated
    ends: dict[str, int] = {}
    for i in rows:
        if done[i] and ts[i] < ends.get(episodes[i], ts[i] + 1):
            ends[episodes[i]] = ts[i]
    return [(game_id, e, t) for e, t in ends.items()]


def _runs(game_id: str, episodes: list[str], ts: list[int], rows: list[int], first: int) -> list[tuple]:
    """``episode_runs`` rows ``(game_id, episode_id, t_last, t_first, seq_first)`` for batch rows ``rows``
    stored at seqs ``first, first + 1, ...``: a run ends where the episode changes or a step is skipped."""
    runs: list[tuple] = []
    for k, i in enumerate(rows):
        e, t = episodes[i], ts[i]
        if runs and runs[-1][1] == e and runs[-1][2] == t - 1:
            runs[-1] = (game_id, e, t, runs[-1][3], runs[-1][4])
        else:
            runs.append((game_id, e, t, t, first + k))
    return runs


def _followed(draws: np.ndarray, follow: int) -> np.ndarray:
    """int64[len(draws), 1 + follow]: each draw's seq and the ``follow`` seqs after it."""
    return draws[:, None] + np.arange(follow + 1, dtype=np.int64)


def _contact_points(settings: CassandraSettings) -> list[str]:
    return [h.strip() for h in settings.contact_points.split(",") if h.strip()]


def _connect(settings: CassandraSettings, connect_timeout: float, request_timeout: float) -> tuple[Cluster, Session]:
    hosts = _contact_points(settings)
    if not hosts:
        raise ValueError("RLP_CASSANDRA_CONTACT_POINTS: no host given")
    profile = ExecutionProfile(
        # Token-aware: a single-partition request goes straight to a replica. Without RLP_CASSANDRA_LOCAL_DC the
        # driver takes the contact points' data centre as the local one.
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc or None)),
        # LOCAL_QUORUM reads and writes: read-your-writes, and what Keyspaces requires for writes.
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=request_timeout,
    )
    auth_provider = None
    if settings.sigv4:
        import boto3
        from cassandra_sigv4.auth import SigV4AuthProvider

        auth_provider = SigV4AuthProvider(boto3.Session())
    elif settings.username:
        auth_provider = PlainTextAuthProvider(settings.username, settings.password or "")
    ssl_context = None
    if settings.ssl:
        ssl_context = ssl.create_default_context(cafile=str(settings.ssl_ca) if settings.ssl_ca else None)
        # The chain is verified, the host name is not: the driver connects to peers by IP address
        # (as Amazon's Keyspaces examples do).
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_REQUIRED
    cluster = Cluster(
        contact_points=hosts,
        port=settings.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth_provider,
        ssl_context=ssl_context,
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        # The driver sends a request larger than its 8 KiB buffer in pieces; with Nagle's algorithm on, the
        # second piece waits for the server's delayed ACK (~40 ms per segment write of a chunk).
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    try:
        return cluster, cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise CassandraUnavailable(
            f"cassandra: no host answered at {', '.join(hosts)} port {settings.port}"
            f" (within {connect_timeout:g}s): {exc}"
        ) from exc
    except BaseException:
        cluster.shutdown()
        raise
