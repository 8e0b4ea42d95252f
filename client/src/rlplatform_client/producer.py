"""Buffered, batching, retrying Kinesis producer for experience steps.

Why a background thread: a game loop must never wait on the network. ``record`` only appends to an
in-memory chunk; a daemon thread ships sealed chunks with PutRecords. It holds a partly filled call for
up to ``linger_s`` (default 50 ms) so that calls carry many records: per-call costs dominate otherwise.

Delivery guarantee: at-least-once. A record is only counted as acknowledged once Kinesis returned a
sequence number for it; failed entries are re-sent (only those), so a step can be duplicated (e.g. a
timeout after Kinesis accepted the call) but is never silently lost. Consumers de-duplicate on the
contract's idempotency key ``(game_id, episode_id, t)``.

Backpressure policy when ``max_buffered_records`` sealed records are waiting to be sent:

* ``"block"`` (default): ``record`` waits for space. After ``block_timeout_s`` it raises
  ``BufferFullError`` and the step is NOT recorded (the producer's state is unchanged, so the caller
  may retry the same step or give up on it knowingly).
* ``"drop_oldest"``: the oldest queued record is discarded to make room; its steps are counted in
  ``stats["steps_dropped"]`` and a warning is logged. Use it when fresh experience matters more than
  complete experience and the game must never stall.

Records already handed to a PutRecords call are never dropped by either policy.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .contract import (
    MAX_DECOMPRESSED_BYTES,
    MAX_FLOAT32,
    MAX_INDEX,
    MAX_RECORD_BYTES,
    MAX_STEPS_PER_CHUNK,
    NOT_FINITE,
    Chunk,
    ContractError,
    Step,
    encode_chunk,
    encode_record,
)
from .retry import Backoff

log = logging.getLogger(__name__)

MAX_ENTRIES_PER_CALL = 500  # Kinesis PutRecords limit.
MAX_BYTES_PER_CALL = 5 * 1024 * 1024  # Kinesis PutRecords limit, data + partition keys.
BACKPRESSURE_POLICIES = ("block", "drop_oldest")
RETRYABLE_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestLimitExceeded",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "RequestTimeout",
        "KMSThrottlingException",
    }
)
# A JSON float is at most ~24 chars ("-1.2345678901234567e-308"); used to skip exact size checks.
_MAX_FLOAT_CHARS = 26


class BufferFullError(RuntimeError):
    """``record`` waited ``block_timeout_s`` for buffer space under the "block" policy."""


@dataclass(slots=True)
class _Record:
    """One encoded chunk waiting for (or in) a PutRecords call."""

    data: bytes
    partition_key: str
    steps: int
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        # Kinesis counts the partition key against the per-record and per-call limits.
        return len(self.data) + len(self.partition_key.encode())


@dataclass(slots=True)
class _OpenChunk:
    """Steps of one episode not yet sealed into a record."""

    model_version: int
    steps: list[Step] = field(default_factory=list)


class ExperienceProducer:
    """Streams steps to a Kinesis stream as contract chunks. Thread-safe.

    Use as a context manager or call ``close()``: unflushed steps live only in memory.
    """

    def __init__(
        self,
        stream_name: str,
        game_id: str,
        client_id: str,
        *,
        kinesis: Any = None,
        chunk_steps: int = 64,
        max_buffered_records: int = 10_000,
        backpressure: str = "block",
        block_timeout_s: float = 30.0,
        compress: bool = False,
        retry_base_s: float = 0.05,
        retry_cap_s: float = 2.0,
        linger_s: float = 0.05,
    ) -> None:
        if not 1 <= chunk_steps <= MAX_STEPS_PER_CHUNK:
            raise ValueError(f"chunk_steps must be in 1..{MAX_STEPS_PER_CHUNK}, got {chunk_steps}")
        if not 0 <= linger_s <= 10:
            raise ValueError(f"linger_s must be in 0..10 seconds, got {linger_s}")
        if max_buffered_records < 1:
            raise ValueError(f"max_buffered_records must be >= 1, got {max_buffered_records}")
        for name, value, max_len in (("game_id", game_id, 64), ("client_id", client_id, 128)):
            if not isinstance(value, str) or not 1 <= len(value) <= max_len:
                raise ContractError(name, f"must be a string of 1..{max_len} characters, got {value!r}", "bad_length")
        if backpressure not in BACKPRESSURE_POLICIES:
            raise ValueError(f"backpressure must be one of {BACKPRESSURE_POLICIES}, got {backpressure!r}")
        if kinesis is None:
            import boto3  # Lazy: tests and callers that inject a client need no AWS config.

            kinesis = boto3.client("kinesis")  # Endpoint from AWS_ENDPOINT_URL[_KINESIS] if set.
        self.stream_name = stream_name
        self.game_id = game_id
        self.client_id = client_id
        self._kinesis = kinesis
        self._chunk_steps = chunk_steps
        self._max_buffered = max_buffered_records
        self._policy = backpressure
        self._block_timeout_s = block_timeout_s
        self._compress = compress
        # Full jitter spreads the retries of many clients hitting one shard.
        self._retry = Backoff(retry_base_s, retry_cap_s, jitter=True)
        self._linger_s = linger_s
        self._flushing = 0  # flush() calls waiting: they must not wait for a fuller call

        # One condition guards all state below; it is notified on every queue/ack change.
        self._cond = threading.Condition()
        self._open: dict[str, _OpenChunk] = {}
        self._queue: deque[_Record] = deque()
        self._in_flight = 0
        self._stopping = False
        self._closed = False
        self._thread_failed: BaseException | None = None
        self._abort = threading.Event()  # Set when close() gives up: stop retrying and exit.
        self._stats = dict.fromkeys(
            ("steps_recorded", "steps_acked", "records_acked", "entries_retried", "put_calls", "steps_dropped"), 0
        )
        self._stats["call_retries"] = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"kinesis-producer-{client_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    def record(
        self,
        episode_id: str,
        t: int,
        obs: Any,
        action: Any,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
        model_version: int,
    ) -> None:
        """Append one step; seal and enqueue its chunk when full or when the episode ends.

        Raises ``ContractError`` for a step that could never be delivered (NaN, t not increasing,
        too large), and ``BufferFullError`` under "block" backpressure (the step is then not recorded).
        """
        if episode_id not in self._open:  # ids of open chunks were checked when they opened
            _check_episode_id(episode_id)
        step = _make_step(t, obs, action, reward, next_obs, terminated, truncated)
        model_version = _nonneg_int(model_version, "model_version")
        self._check_step_size(episode_id, step)
        with self._cond:
            needed = sum(self._plan(episode_id, step, model_version))
            self._make_room(needed, deadline=time.monotonic() + self._block_timeout_s)
            # Re-plan: while we waited, flush() may have sealed this episode's chunk or close() may have run.
            version_changed, ends_chunk = self._plan(episode_id, step, model_version)
            if version_changed:
                self._seal(episode_id)
            self._open.setdefault(episode_id, _OpenChunk(model_version)).steps.append(step)
            self._stats["steps_recorded"] += 1
            if ends_chunk:
                self._seal(episode_id)

    def record_steps(
        self,
        episode_id: str,
        t: Any,
        obs: Any,
        action: Any,
        reward: Any,
        next_obs: Any,
        terminated: Any,
        truncated: Any,
        model_version: int,
    ) -> None:
        """Append consecutive steps of one episode given as columns, all or nothing.

        Shapes: ``t[n]`` (ints), ``obs[n, obs_dim]``, ``action[n]`` (ints, discrete) or
        ``action[n, action_dim]`` (floats), ``reward[n]``, ``next_obs[n, obs_dim]``, ``terminated[n]`` and
        ``truncated[n]`` (bools). For games that buffer steps (vectorised envs, uploads of recorded play) it
        costs a small fraction of ``record`` per step. The steps are sealed into records at once, split
        every ``chunk_steps`` and after each terminated/truncated step, so calls of at least ``chunk_steps``
        steps give full records. Raises ``ContractError`` (naming the column) or ``BufferFullError``, and then
        records none of the steps.
        """
        if episode_id not in self._open:
            _check_episode_id(episode_id)
        cols = _step_columns(t, obs, action, reward, next_obs, terminated, truncated)
        model_version = _nonneg_int(model_version, "model_version")
        records: list[_Record] = []
        for part in _chunk_slices(cols["terminated"] | cols["truncated"], self._chunk_steps):
            records += self._encode(
                episode_id, part.stop - part.start, self._column_encoder(episode_id, cols, part, model_version)
            )
        if too_big := [r for r in records if r.size > MAX_RECORD_BYTES]:
            raise ContractError(
                "record", f"one step encodes to {too_big[0].size} bytes > {MAX_RECORD_BYTES}", "too_large"
            )
        with self._cond:
            self._check_continues(episode_id, int(cols["t"][0]))
            # +1: the episode's open chunk (steps recorded one by one) is sealed first, to keep t in order.
            self._make_room(len(records) + 1, deadline=time.monotonic() + self._block_timeout_s)
            self._check_continues(episode_id, int(cols["t"][0]))  # the wait released the lock
            self._seal(episode_id)
            self._queue.extend(records)
            self._stats["steps_recorded"] += len(cols["t"])
            self._cond.notify_all()

    def _check_continues(self, episode_id: str, first_t: int) -> None:
        """Raise if the producer is closed or ``first_t`` does not follow the episode's open chunk."""
        if self._closed:
            raise RuntimeError("producer is closed")
        current = self._open.get(episode_id)
        if current is not None and current.steps and first_t <= current.steps[-1].t:
            raise ContractError(
                "t", f"must increase within an episode ({current.steps[-1].t} then {first_t})", "bad_step_index"
            )

    def _column_encoder(
        self, episode_id: str, cols: dict[str, np.ndarray], part: slice, model_version: int
    ) -> Callable[[slice], bytes]:
        """``encode(sub)`` for the steps ``part`` of validated columns; ``sub`` is relative to ``part``."""

        def encode(sub: slice) -> bytes:
            rows = range(part.start, part.stop)[sub]
            c = {k: v[rows.start : rows.stop] for k, v in cols.items()}
            # numpy rows and scalars go to orjson as they are: float32 values are written in shortest form.
            actions = c["action"].tolist() if c["action"].ndim == 1 else list(c["action"])
            steps = [
                {"t": t, "obs": o, "action": a, "reward": r, "next_obs": no, "terminated": te, "truncated": tr}
                for t, o, a, r, no, te, tr in zip(
                    c["t"].tolist(), c["obs"], actions, list(c["reward"]), c["next_obs"],
                    c["terminated"].tolist(), c["truncated"].tolist(), strict=True,
                )
            ]  # fmt: skip
            return encode_record(self.game_id, self.client_id, episode_id, model_version, steps)

        return encode

    def flush(self, timeout: float | None = None) -> bool:
        """Seal all partial chunks and wait until every queued record is acknowledged.

        Returns False if ``timeout`` expired first (nothing is lost: delivery continues).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            for episode_id in list(self._open):
                try:
                    self._make_room(1, deadline)
                except BufferFullError:
                    return False
                self._seal(episode_id)
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._wait_for(lambda: not self._queue and not self._in_flight, deadline)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the sender thread. Returns False if not everything was acknowledged.

        On False the unacknowledged steps are logged as an error: they were never confirmed by Kinesis.
        """
        with self._cond:
            if self._closed:
                return not self._queue and not self._in_flight and not self._open
        ok = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
        if not ok:
            self._abort.set()
            stats = self.stats
            lost = stats["steps_recorded"] - stats["steps_acked"] - stats["steps_dropped"]
            log.error("producer closed with %d steps unacknowledged by Kinesis (last error: %s)", lost, self.last_error)
        self._thread.join(timeout=None if ok else 5.0)
        return ok

    @property
    def stats(self) -> dict[str, int]:
        """Counters (steps_recorded, steps_acked, records_acked, entries_retried, put_calls, steps_dropped, ...)."""
        with self._cond:
            out = dict(self._stats)
            out["records_buffered"] = len(self._queue) + self._in_flight
            out["steps_open"] = sum(len(c.steps) for c in self._open.values())
            return out

    def __enter__(self) -> ExperienceProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ buffering (caller holds _cond)

    def _plan(self, episode_id: str, step: Step, model_version: int) -> tuple[bool, bool]:
        """Validate ``step`` against the episode's open chunk; return (seal old chunk first, seal after)."""
        self._check_continues(episode_id, step.t)
        current = self._open.get(episode_id)
        # A chunk carries one model_version, so a model swap mid-chunk seals the old chunk.
        version_changed = current is not None and current.model_version != model_version
        open_steps = 0 if current is None or version_changed else len(current.steps)
        ends_chunk = step.terminated or step.truncated or open_steps + 1 >= self._chunk_steps
        return version_changed, ends_chunk

    def _make_room(self, n: int, deadline: float | None) -> None:
        """Ensure ``n`` more records fit in the queue, applying the backpressure policy."""
        if n == 0:
            return
        limit = max(self._max_buffered - n, 0)
        if self._policy == "drop_oldest":
            while len(self._queue) > limit:
                dropped = self._queue.popleft()
                self._stats["steps_dropped"] += dropped.steps
                log.warning("buffer full: dropped oldest record (%d steps) of %s", dropped.steps, dropped.partition_key)
            return
        if not self._wait_for(lambda: len(self._queue) <= limit, deadline):
            raise BufferFullError(
                f"{len(self._queue)} records buffered (max {self._max_buffered}) for longer than the timeout; "
                f"Kinesis is not keeping up (last error: {self.last_error})"
            )

    def _seal(self, episode_id: str) -> None:
        """Encode the episode's open chunk into record(s) and enqueue them."""
        open_chunk = self._open.pop(episode_id, None)
        if open_chunk is None or not open_chunk.steps:
            return
        steps = open_chunk.steps

        def encode(part: slice) -> bytes:
            chunk = Chunk(self.game_id, self.client_id, episode_id, open_chunk.model_version, steps[part])
            return encode_chunk(chunk)

        self._queue.extend(self._encode(episode_id, len(steps), encode))
        self._cond.notify_all()

    def _encode(self, episode_id: str, n_steps: int, encode: Callable[[slice], bytes]) -> list[_Record]:
        """Records of steps ``[0, n_steps)``, halving the range until each fits Kinesis' 1 MiB record limit.

        ``encode(part)`` returns the uncompressed JSON of the steps in ``part``.
        """

        def split(lo: int, hi: int) -> list[_Record]:
            raw = encode(slice(lo, hi))
            data = gzip.compress(raw, compresslevel=1) if self._compress else raw
            record = _Record(data, episode_id, hi - lo)
            if (record.size <= MAX_RECORD_BYTES and len(raw) <= MAX_DECOMPRESSED_BYTES) or hi - lo == 1:
                return [record]
            mid = (lo + hi) // 2
            return split(lo, mid) + split(mid, hi)

        return split(0, n_steps)

    def _check_step_size(self, episode_id: str, step: Step) -> None:
        """Reject a single step too big for one record now, rather than failing later in the sender."""
        n_floats = len(step.obs) + len(step.next_obs) + (len(step.action) if isinstance(step.action, list) else 1)
        if n_floats * _MAX_FLOAT_CHARS + 1024 <= MAX_RECORD_BYTES:
            return  # Cheap bound: cannot be too big, skip the exact encode.
        records = self._encode(
            episode_id, 1, lambda _: encode_chunk(Chunk(self.game_id, self.client_id, episode_id, 0, [step]))
        )
        if records[0].size > MAX_RECORD_BYTES:
            raise ContractError(
                "record", f"one step encodes to {records[0].size} bytes > {MAX_RECORD_BYTES}", "too_large"
            )

    def _wait_for(self, predicate: Any, deadline: float | None) -> bool:
        """Wait on the condition for ``predicate`` or ``deadline``; False on timeout or dead sender."""
        while not predicate():
            if self._thread_failed is not None:
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._cond.wait(remaining)
        return True

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                self._send(batch)
        except BaseException as exc:  # Must wake waiters: a dead sender would hang flush() forever.
            log.exception("kinesis producer thread crashed")
            with self._cond:
                self._thread_failed = exc
                self.last_error = repr(exc)
                self._cond.notify_all()

    def _take_batch(self) -> list[_Record] | None:
        """Pop up to 500 records / 5 MiB; None once stopping and drained (or aborted).

        Holds a partial call back for up to ``linger_s`` after its oldest record was queued: one fuller
        PutRecords costs the client and Kinesis far less than many small ones (the KPL's RecordMaxBufferedTime).
        """
        with self._cond:
            while not self._abort.is_set() and (wait := self._linger_left()) != 0:
                self._cond.wait(wait)
            if self._abort.is_set() or not self._queue:
                return None
            batch: list[_Record] = []
            total = 0
            while self._queue and len(batch) < MAX_ENTRIES_PER_CALL:
                size = self._queue[0].size
                if batch and total + size > MAX_BYTES_PER_CALL:
                    break
                batch.append(self._queue.popleft())
                total += size
            self._in_flight += len(batch)
            self._cond.notify_all()  # Space freed for blocked record() callers.
            return batch

    def _linger_left(self) -> float | None:
        """Seconds to wait before the next call (None: until notified); 0 = send now (or exit if drained)."""
        if not self._queue:
            return 0 if self._stopping else None
        if self._stopping or self._flushing or len(self._queue) >= MAX_ENTRIES_PER_CALL:
            return 0
        return max(self._queue[0].queued_at + self._linger_s - time.monotonic(), 0)

    def _send(self, batch: list[_Record]) -> None:
        """Deliver ``batch``, re-sending only failed entries, until all are acked or aborted."""
        pending = batch
        attempt = 0
        while pending:
            if attempt and self._abort.wait(self._retry.delay(attempt)):
                return  # close() gave up; the loss is reported there.
            attempt += 1
            results = self._put(pending)
            if results is None:
                continue  # Whole call failed; retry all of it.
            pending = self._settle(pending, results)

    def _put(self, records: list[_Record]) -> list[dict] | None:
        """One PutRecords call; its per-entry results, or None if the whole call failed (to be retried)."""
        with self._cond:
            self._stats["put_calls"] += 1
        entries = [{"Data": r.data, "PartitionKey": r.partition_key} for r in records]
        try:
            results = self._kinesis.put_records(StreamName=self.stream_name, Records=entries)["Records"]
        except (ClientError, BotoCoreError) as exc:
            retryable = _is_retryable(exc)
            with self._cond:
                self._stats["call_retries"] += 1
                self.last_error = str(exc)
            # Non-retryable errors (missing stream, bad credentials) are still retried so nothing is lost,
            # but logged loudly; flush()/close() time out and report them.
            log.log(logging.DEBUG if retryable else logging.ERROR, "PutRecords failed (retrying): %s", exc)
            return None
        if len(results) != len(records):  # Never seen from Kinesis, but zip() would silently lose entries.
            log.error("PutRecords returned %d results for %d entries; retrying all", len(results), len(records))
            return None
        return results

    def _settle(self, sent: list[_Record], results: list[dict]) -> list[_Record]:
        """Count acked entries; return the ones whose per-entry result carries an ErrorCode."""
        failed = [r for r, res in zip(sent, results, strict=True) if res.get("ErrorCode")]
        acked = [r for r, res in zip(sent, results, strict=True) if not res.get("ErrorCode")]
        with self._cond:
            self._in_flight -= len(acked)
            self._stats["records_acked"] += len(acked)
            self._stats["steps_acked"] += sum(r.steps for r in acked)
            self._stats["entries_retried"] += len(failed)
            if failed:
                first = next(res for res in results if res.get("ErrorCode"))
                self.last_error = f"{first['ErrorCode']}: {first.get('ErrorMessage', '')}"
            self._cond.notify_all()
        return failed


def _is_retryable(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return code in RETRYABLE_ERROR_CODES or status >= 500
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def _check_episode_id(episode_id: Any) -> None:
    """The consumer rejects non-UUID episode ids, so refuse them here instead of shipping doomed records."""
    try:
        uuid.UUID(episode_id)
    except (TypeError, ValueError, AttributeError):
        raise ContractError("episode_id", f"not a UUID: {episode_id!r}", "bad_episode_id") from None


def _make_step(t: Any, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any) -> Step:
    """Normalise numpy/python inputs to a contract Step, validating what the consumer would reject."""
    t = _nonneg_int(t, "t")
    reward = float(reward)
    if not -MAX_FLOAT32 <= reward <= MAX_FLOAT32:
        raise ContractError("reward", NOT_FINITE, "non_finite")
    return Step(
        t=t,
        obs=_float_list(obs, "obs"),
        action=_action(action),
        reward=reward,
        next_obs=_float_list(next_obs, "next_obs"),
        terminated=bool(terminated),
        truncated=bool(truncated),
    )


def _nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_INDEX:
        kind = "bad_model_version" if name == "model_version" else "bad_step_index"
        raise ContractError(name, f"must be an int in 0..{MAX_INDEX}, got {value!r}", kind)
    return int(value)


def _float_list(values: Any, name: str) -> list[float]:
    if type(values) is list and all(type(x) is float for x in values):
        floats = list(values)  # plain list, the common case: no numpy round trip; a copy, as callers reuse buffers
    else:
        floats = np.asarray(values, dtype=np.float64).ravel().tolist()
    # max() of a list with NaN depends on order, so finiteness is checked first.
    if not all(map(math.isfinite, floats)) or max(map(abs, floats), default=0.0) > MAX_FLOAT32:
        raise ContractError(name, NOT_FINITE, "non_finite")
    return floats


def _action(action: Any) -> int | list[float]:
    """Discrete actions (python/numpy ints, 0-d int arrays) become int; everything else a float list."""
    if type(action) is int:
        return action
    arr = np.asarray(action)
    if arr.dtype == np.bool_:
        raise ContractError("action", "must be an int (discrete) or numbers (continuous), got bool", "wrong_type")
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    return _float_list(arr, "action")


def _step_columns(
    t: Any, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any
) -> dict[str, np.ndarray]:
    """Validated numpy columns of ``n`` steps; ContractError names the first column the consumer would reject."""
    t = np.asarray(t)
    if t.ndim != 1 or not len(t) or t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise ContractError(
            "t", f"must be a non-empty 1-D array of ints, got shape {t.shape} of {t.dtype}", "wrong_type"
        )
    n = len(t)
    if t[0] < 0 or t[-1] > MAX_INDEX or (np.diff(t) <= 0).any():
        raise ContractError("t", f"must increase strictly within 0..{MAX_INDEX}", "bad_step_index")
    cols = {"t": t.astype(np.int64, copy=False)}
    for name, value in (("obs", obs), ("next_obs", next_obs)):
        cols[name] = _float_column(value, name, n, ndim=2)
    action = np.asarray(action)
    if action.dtype != np.bool_ and np.issubdtype(action.dtype, np.integer) and action.shape == (n,):
        cols["action"] = action.astype(np.int64, copy=False)
    else:
        cols["action"] = _float_column(action, "action", n, ndim=2)
    cols["reward"] = _float_column(reward, "reward", n, ndim=1)
    for name, value in (("terminated", terminated), ("truncated", truncated)):
        flags = np.asarray(value)
        if flags.shape != (n,) or flags.dtype != np.bool_:
            raise ContractError(name, f"must be {n} bools, got shape {flags.shape} of {flags.dtype}", "wrong_type")
        cols[name] = flags
    return cols


def _float_column(value: Any, name: str, n: int, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ContractError(name, f"must be numbers, got {arr.dtype}", "wrong_type")
    if arr.ndim != ndim or len(arr) != n or (ndim == 2 and arr.shape[1] == 0):
        expected = f"({n},)" if ndim == 1 else f"({n}, k>=1)"
        raise ContractError(name, f"must have shape {expected}, got {arr.shape}", "bad_length")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not (np.abs(arr) <= MAX_FLOAT32).all():  # False for NaN too
        raise ContractError(name, NOT_FINITE, "non_finite")
    return arr


def _chunk_slices(ends: np.ndarray, chunk_steps: int) -> list[slice]:
    """Consecutive slices of ``len(ends)`` steps, each at most ``chunk_steps`` long and closed by an end step."""
    slices, start = [], 0
    for end in [*(np.flatnonzero(ends) + 1).tolist(), len(ends)]:
        while start < end:
            stop = min(start + chunk_steps, end)
            slices.append(slice(start, stop))
            start = stop
    return slices
