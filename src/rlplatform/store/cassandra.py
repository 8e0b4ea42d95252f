"""Cassandra adapter (compose / aws profiles): Apache Cassandra 4/5, ScyllaDB and Amazon Keyspaces.

Schema (one keyspace, four tables; every query names a full partition key with equality, so none
needs ALLOW FILTERING, a secondary index or a materialized view):

``transitions ((game_id, chunk), seq)``
    The rows. Like the SQLite adapter, each game has a dense sequence ``seq`` (0, 1, 2, ... in write
    order) and row ``seq`` lives in partition ``chunk = seq // rows_per_partition`` (1024 by default),
    so partitions stay bounded and every row has a known address. Uniform sampling therefore draws
    random integers in ``[lo, hi]`` and reads them by primary key (``chunk = ? AND seq IN ?``, at most
    100 keys per read, one read per touched partition): no scan, no token-range walk, whatever the
    size. ``window`` is ``[hi - window + 1, hi]``. Draws that hit a missing ``seq`` (see holes below)
    are redrawn, so the result stays uniform over the rows that exist.
``seq_alloc (game_id)``
    ``next_seq`` = hi + 1. A writer reserves a block of ``k`` seqs with one compare-and-set
    (``UPDATE ... IF next_seq = ?``, a lightweight transaction) per batch, not per row. No counters:
    counters cannot carry a TTL and Keyspaces does not mix them with it.
``transition_keys ((game_id, episode_id), t) -> seq``
    The idempotency key. A write first reads the batch's keys (one single-partition range read per
    episode), reserves seqs only for the new ones, writes their key rows, then the transition rows. Both
    writes go as unlogged batches of one partition's rows each (a chunk is one episode, and its seqs are
    consecutive): one request per ``BATCH_STATEMENTS`` rows (Keyspaces' batch limit) instead of one per row.
    A redelivered key is not counted again; its row is re-upserted at its recorded seq, which repairs
    a write that died between the two phases.
``games (game_id)``
    obs_dim, action dtype/dim and rows_per_partition, fixed by the game's first write (LWT insert).

Retention is TTL: every ``transitions`` and ``transition_keys`` row is written ``USING TTL``
``RLP_CASSANDRA_TTL_SECONDS``, so the cluster drops it that long after it was written, with no delete
traffic from us (TimeWindowCompactionStrategy is the natural compaction for these tables; it is not
set here because Keyspaces rejects compaction options). Because seqs are handed out in write order,
expiry eats the sequence from its head: the oldest live row ``lo`` is found with a binary search over
the partitions (``SELECT seq ... WHERE game_id = ? AND chunk = ? AND seq >= ? LIMIT 1``), log2(#chunks)
single-row reads at most and one read in the steady state (a per-store hint remembers the head once a
second observation, a minute later, has confirmed it). ``count`` is ``hi - lo + 1``.
``retain(game_id, max_rows)`` is also supported (a capacity-bounded buffer on top of TTL): it deletes
whole partitions below the cut and a clustering range in the boundary partition.

Known approximations (documented, not hidden):
  * Holes: seqs reserved but never written (a writer died after reserving; two writers raced on the
    same new key and both reserved a seq), and seqs of a write in flight (reserved, rows not yet written).
    Sampling redraws them, then fills up among the rows it found; ``count`` includes them.
  * Two writers that write the same new key at the same moment both count and store it (the key
    read and the key write are not one transaction; an LWT per row would fix it at ~4x the cost).
  * A key whose row was removed by ``retain`` stays until its TTL: a redelivery of it is ignored.
"""

from __future__ import annotations

import logging
import random
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
from rlplatform.store.base import (
    EpisodeSteps,
    ExperienceStore,
    GameShapes,
    TransitionBatch,
    episode_steps_of,
    followed_seqs,
    t_ranges,
)

log = logging.getLogger(__name__)

ROWS_PER_PARTITION = 1024
CONCURRENCY = 64
# Keys per ``seq IN ?`` read (Amazon Keyspaces caps IN lists at 100 values).
IN_LIMIT = 100
# Rows per write request: an unlogged batch of one partition's rows is one mutation, one request. Amazon
# Keyspaces accepts at most 30 statements per batch; Cassandra fails a batch above batch_size_fail_threshold
# (50 KiB by default, counted with each cell's overhead), so a batch also stops before this many bytes of values.
BATCH_STATEMENTS = 30
BATCH_BYTES = 32 * 1024
# Tables, in creation order. Experience tables carry a TTL; the other two are O(games) metadata.
TABLES = ("games", "seq_alloc", "transitions", "transition_keys")
TTL_TABLES = ("transitions", "transition_keys")
_ROW_COLUMNS = "episode_id, t, obs, action, reward, next_obs, terminated, truncated, model_version"
# Redraw rounds for draws that hit missing seqs; then the draws still missing are made among the rows found.
_SAMPLE_ROUNDS = 16
# A head observation is trusted as a search hint once a second one, this much later, confirms it
# (by then every write that was in flight at the first observation has landed or failed).
_HEAD_SETTLE_S = 60.0
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
        " action_dim int, rows_per_partition int)",
        "seq_alloc": f"CREATE TABLE IF NOT EXISTS {ks}.seq_alloc (game_id text PRIMARY KEY, next_seq bigint,"
        " writer uuid)",
        "transitions": f"CREATE TABLE IF NOT EXISTS {ks}.transitions (game_id text, chunk bigint, seq bigint,"
        " episode_id text, t int, obs blob, action blob, reward float, next_obs blob, terminated boolean,"
        f" truncated boolean, model_version bigint, written_at timestamp, PRIMARY KEY ((game_id, chunk), seq)){ttl}",
        "transition_keys": f"CREATE TABLE IF NOT EXISTS {ks}.transition_keys (game_id text, episode_id text, t int,"
        f" seq bigint, PRIMARY KEY ((game_id, episode_id), t)){ttl}",
    }


def statements(keyspace: str, ttl_seconds: int) -> dict[str, str]:
    """Every DML statement the adapter runs (all prepared), by name."""
    ks, ttl = keyspace, int(ttl_seconds)
    return {
        "insert_game": f"INSERT INTO {ks}.games (game_id, obs_dim, action_dtype, action_dim, rows_per_partition)"
        " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
        "select_game": f"SELECT obs_dim, action_dtype, action_dim, rows_per_partition FROM {ks}.games"
        " WHERE game_id = ?",
        "select_next": f"SELECT next_seq, writer FROM {ks}.seq_alloc WHERE game_id = ?",
        "init_next": f"INSERT INTO {ks}.seq_alloc (game_id, next_seq, writer) VALUES (?, ?, ?) IF NOT EXISTS",
        "advance_next": f"UPDATE {ks}.seq_alloc SET next_seq = ?, writer = ? WHERE game_id = ? IF next_seq = ?",
        "select_keys": f"SELECT t, seq FROM {ks}.transition_keys WHERE game_id = ? AND episode_id = ? AND t >= ?"
        " AND t <= ?",
        "insert_key": f"INSERT INTO {ks}.transition_keys (game_id, episode_id, t, seq) VALUES (?, ?, ?, ?)"
        f" USING TTL {ttl}",
        "insert_row": f"INSERT INTO {ks}.transitions (game_id, chunk, seq, {_ROW_COLUMNS}, written_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL {ttl}",
        "select_rows": f"SELECT seq, {_ROW_COLUMNS} FROM {ks}.transitions WHERE game_id = ? AND chunk = ? AND seq IN ?",
        "select_chunk_steps": "SELECT episode_id, t, reward, terminated, truncated, model_version"
        f" FROM {ks}.transitions WHERE game_id = ? AND chunk = ?",
        "first_seq": f"SELECT seq FROM {ks}.transitions WHERE game_id = ? AND chunk = ? AND seq >= ? LIMIT 1",
        "delete_chunk": f"DELETE FROM {ks}.transitions WHERE game_id = ? AND chunk = ?",
        "delete_head": f"DELETE FROM {ks}.transitions WHERE game_id = ? AND chunk = ? AND seq <= ?",
    }


# Schema probes (not prepared; run at startup only). Partition key of both tables: keyspace_name.
KEYSPACE_EXISTS_CQL = "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s"
KEYSPACES_TABLE_STATUS_CQL = (
    "SELECT table_name, status FROM system_schema_mcs.tables WHERE keyspace_name = %s AND table_name = %s"
)
# Statements that are lightweight transactions: a retry may report "not applied" for its own write.
_LWT = ("insert_game", "init_next", "advance_next")


@dataclass(frozen=True)
class _Game(GameShapes):
    rows_per_partition: int


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
        rows_per_partition: int = ROWS_PER_PARTITION,
    ) -> None:
        """``ttl_seconds`` overrides ``settings.ttl_seconds`` (tests use a few seconds)."""
        self.settings = settings
        self.keyspace = settings.keyspace
        self.ttl_seconds = int(ttl_seconds if ttl_seconds is not None else settings.ttl_seconds)
        if self.ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1, got {self.ttl_seconds}")
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
        self._hint_lock = threading.Lock()

    # -- schema -------------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the keyspace (if allowed) and the tables, if missing; idempotent."""
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
        for table, ddl in schema_cql(ks, self.keyspaces_service).items():
            self._session.execute(ddl, timeout=_DDL_TIMEOUT_S)
            if self.keyspaces_service:  # so is table creation: wait until ACTIVE before first use
                self._wait(lambda t=table: self._keyspaces_table_active(t), f"table {ks}.{table} to be ACTIVE")

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
        ts = [int(t) for t in batch.t.tolist()]

        # 1. Which keys exist already: one single-partition range read per episode of the batch.
        existing = self._seqs_of_keys(game_id, batch)

        new: list[int] = []  # batch indices of keys seen for the first time (first occurrence wins)
        repair: list[tuple[int, int]] = []  # (index, seq) of redelivered keys, re-upserted in place
        seen: set[tuple[str, int]] = set()
        head = self._head_hint.get(game_id, 0)
        for i, key in enumerate(zip(episodes, ts, strict=True)):
            if key in seen:
                continue
            seen.add(key)
            if key in existing:
                if existing[key] >= head:
                    repair.append((i, existing[key]))
            else:
                new.append(i)

        # A redelivered key whose row is there keeps it (the first content stays, as in every adapter); one
        # whose row is missing (a writer died between recording the key and writing the row) is repaired.
        if repair:
            present = self._fetch(game_id, game.rows_per_partition, [s for _, s in repair])
            repair = [(i, s) for i, s in repair if s not in present]

        # 2. Reserve seqs for the new keys, 3. record the keys, 4. write the rows (new + repaired).
        placed = list(repair)
        if new:
            first = self._reserve(game_id, len(new))
            placed += [(i, first + k) for k, i in enumerate(new)]
            self._batched("insert_key", [(game_id, episodes[i], ts[i], first + k) for k, i in enumerate(new)])
        if placed:
            now = datetime.now(UTC)
            reward = batch.reward.astype(np.float32).tolist()
            terminated = batch.terminated.astype(bool).tolist()
            truncated = batch.truncated.astype(bool).tolist()
            model_version = batch.model_version.astype(np.int64).tolist()
            rpp = game.rows_per_partition
            self._batched(
                "insert_row",
                [
                    (game_id, s // rpp, s, episodes[i], ts[i], obs[i].tobytes(), action[i].tobytes(), reward[i])
                    + (next_obs[i].tobytes(), terminated[i], truncated[i], model_version[i], now)
                    for i, s in placed
                ],
            )
        return len(new)

    def _sample(
        self, game_id: str, n: int, rng: np.random.Generator, window: int | None, follow: int
    ) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            raise LookupError(f"no transitions stored for game {game_id!r}")
        drawn: list[int] = []
        found: dict[int, tuple] = {}
        lo = hi = 0
        for _ in range(_SAMPLE_ROUNDS):
            hi = self._next_seq(game_id) - 1
            lo = self._head(game_id, hi, game.rows_per_partition)
            if lo > hi:
                raise LookupError(f"no transitions stored for game {game_id!r}")
            if window is not None:
                lo = max(lo, hi - window + 1)
            draws = rng.integers(lo, hi + 1, size=n - len(drawn))
            found.update(self._fetch(game_id, game.rows_per_partition, followed_seqs(draws, follow)))
            # A draw can miss: a hole, a row written a moment from now, or one that just expired. Redraw it.
            drawn += [s for s in draws.tolist() if s in found]
            if len(drawn) == n:
                return game.to_batch(game.with_followers(drawn, found, follow))
        if not drawn:
            raise LookupError(f"{game_id}: no row readable in seq [{lo}, {hi}] (writes in flight, holes or expiry)")
        # Most of [lo, hi] is missing right now: typically one large batch whose seqs are reserved and whose
        # rows are being written (a backlog drained at start). Fill up among the rows found rather than fail.
        log.info("%s: %d of %d draws missed in seq [%d, %d]; drawn among the %d rows found", game_id,
                 n - len(drawn), n, lo, hi, len(drawn))  # fmt: skip
        drawn += [drawn[i] for i in rng.integers(0, len(drawn), size=n - len(drawn)).tolist()]
        return game.to_batch(game.with_followers(drawn, found, follow))

    def _stored(self, game_id: str, batch: TransitionBatch) -> TransitionBatch:
        game = self._known_game(game_id)
        if game is None:
            return batch[:0]
        seqs = sorted(set(self._seqs_of_keys(game_id, batch).values()))
        return game.to_batch(list(self._fetch(game_id, game.rows_per_partition, seqs).values()))

    def _episode_steps(self, game_id: str) -> EpisodeSteps:
        game = self._known_game(game_id)
        if game is None:
            return episode_steps_of([])
        rpp = game.rows_per_partition
        hi = self._next_seq(game_id) - 1
        lo = self._head(game_id, hi, rpp)
        if lo > hi:
            return episode_steps_of([])
        pages = self._concurrent("select_chunk_steps", [(game_id, c) for c in range(lo // rpp, hi // rpp + 1)])
        rows = [(r.episode_id, r.t, r.reward, r.terminated or r.truncated, r.model_version) for p in pages for r in p]
        return episode_steps_of(rows)

    def _seqs_of_keys(self, game_id: str, batch: TransitionBatch) -> dict[tuple[str, int], int]:
        """``(episode_id, t) -> seq`` of the batch's keys that are recorded already."""
        ranges = t_ranges(batch)
        found: dict[tuple[str, int], int] = {}
        results = self._concurrent("select_keys", [(game_id, e, lo, hi) for e, (lo, hi) in ranges.items()])
        for e, rows in zip(ranges, results, strict=True):
            found.update(((e, row.t), row.seq) for row in rows)
        return found

    def count(self, game_id: str) -> int:
        game = self._known_game(game_id)
        if game is None:
            return 0
        nxt = self._next_seq(game_id)
        if nxt == 0:
            return 0
        return max(0, nxt - self._head(game_id, nxt - 1, game.rows_per_partition))

    def written(self, game_id: str) -> int:
        """Seqs handed out so far: the rows written, plus those of writes in flight and the holes (above)."""
        return 0 if self._known_game(game_id) is None else self._next_seq(game_id)

    def retain(self, game_id: str, max_rows: int) -> int:
        """Delete the oldest rows beyond ``max_rows`` (TTL is the primary retention; this caps size too).

        Whole partitions below the cut get a partition delete, the boundary one a clustering range delete:
        O(partitions) tombstones, not one per row.
        """
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        game = self._known_game(game_id)
        if game is None:
            return 0
        hi = self._next_seq(game_id) - 1
        rpp = game.rows_per_partition
        lo = self._head(game_id, hi, rpp)
        cut = hi - max_rows
        if hi < 0 or cut < lo:
            return 0
        last_full = (cut + 1) // rpp - 1  # partitions whose every seq is <= cut
        self._concurrent("delete_chunk", [(game_id, c) for c in range(lo // rpp, last_full + 1)])
        if (cut + 1) % rpp:
            self._concurrent("delete_head", [(game_id, cut // rpp, cut)])
        with self._hint_lock:  # we deleted them: everything below cut + 1 is gone for sure
            self._head_hint[game_id] = max(self._head_hint.get(game_id, 0), cut + 1)
            self._head_seen.pop(game_id, None)
        return cut - lo + 1

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
        two values are the partition key of both tables written this way), CONCURRENCY requests in flight. A
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

    def _first_live(self, game_id: str, chunk: int, floor: int) -> int | None:
        row = self._session.execute(self._stmts["first_seq"], (game_id, chunk, floor)).one()
        return None if row is None else row.seq

    def _head(self, game_id: str, hi: int, rpp: int) -> int:
        """The oldest live seq (``hi + 1`` when none): TTL expiry and retain() remove the sequence's head.

        Probes the hinted partition, then binary-searches the partitions above it for the first one that
        still holds a row; each probe is one ``LIMIT 1`` read of one partition.
        """
        with self._hint_lock:
            hint = self._head_hint.get(game_id, 0)
        if hint > hi:
            return hint
        lo_chunk, hi_chunk = hint // rpp, hi // rpp
        head = self._first_live(game_id, lo_chunk, hint)
        if head is None:
            a, b, head = lo_chunk + 1, hi_chunk, hi + 1
            while a <= b:
                mid = (a + b) // 2
                found = self._first_live(game_id, mid, hint)
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

    def _fetch(self, game_id: str, rpp: int, seqs: list[int]) -> dict[int, tuple]:
        """Rows by seq, read by primary key: per partition, ``seq IN`` lists of at most IN_LIMIT."""
        by_chunk: dict[int, list[int]] = {}
        for s in seqs:
            by_chunk.setdefault(s // rpp, []).append(s)
        params = [
            (game_id, chunk, keys[i : i + IN_LIMIT])
            for chunk, keys in by_chunk.items()
            for i in range(0, len(keys), IN_LIMIT)
        ]
        found: dict[int, tuple] = {}
        for rows in self._concurrent("select_rows", params):
            for row in rows:
                found[row.seq] = tuple(row)[1:]
        return found

    def _known_game(self, game_id: str) -> _Game | None:
        if game_id not in self._games:
            row = self._session.execute(self._stmts["select_game"], (game_id,)).one()
            if row is None:
                return None
            self._games[game_id] = _Game(
                row.obs_dim, np.dtype(row.action_dtype), row.action_dim, row.rows_per_partition
            )
        return self._games[game_id]

    def _game(self, game_id: str, batch: TransitionBatch) -> _Game:
        """The game's shapes, fixed by its first write (an LWT insert, so concurrent first writers agree)."""
        known = self._known_game(game_id)
        if known is not None:
            return known
        shapes = GameShapes.of(batch)
        self._session.execute(
            self._stmts["insert_game"],
            (game_id, shapes.obs_dim, shapes.action_dtype.str, shapes.action_dim, self.rows_per_partition),
        )
        game = self._known_game(game_id)
        if game is None:
            raise RuntimeError(f"{game_id}: game row missing right after its insert")
        return game


def _contact_points(settings: CassandraSettings) -> list[str]:
    return [h.strip() for h in settings.contact_points.split(",") if h.strip()]


def _connect(settings: CassandraSettings, connect_timeout: float, request_timeout: float) -> tuple[Cluster, Session]:
    hosts = _contact_points(settings)
    if not hosts:
        raise ValueError("RLP_CASSANDRA_CONTACT_POINTS: no host given")
    profile = ExecutionProfile(
        # LOCAL_QUORUM reads and writes: read-your-writes, and what Keyspaces requires for writes.
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=request_timeout,
    )
    if settings.local_dc:
        profile.load_balancing_policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))
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
