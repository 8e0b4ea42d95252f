import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from rlplatform_client.contract import MAX_RECORD_BYTES, ContractError, decode_chunk
from rlplatform_client.producer import (
    MAX_BYTES_PER_CALL,
    MAX_ENTRIES_PER_CALL,
    BufferFullError,
    ExperienceProducer,
)

STREAM = "experience"
GAME = "CartPole-v1"


class SpyKinesis:
    """Wraps a real (moto) client: records every PutRecords call, can gate it or inject failures."""

    def __init__(self, real: Any, fault: Callable[[int, list[dict]], Any] | None = None) -> None:
        self.real = real
        self.fault = fault
        self.calls: list[list[dict]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def put_records(self, *, StreamName: str, Records: list[dict]) -> dict:  # noqa: N803 (boto3 names)
        call_no = len(self.calls)
        self.calls.append(list(Records))
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        if self.fault is not None:
            faked = self.fault(call_no, Records)
            if faked is not None:
                return faked(self.real, StreamName, Records)
        return self.real.put_records(StreamName=StreamName, Records=Records)


@pytest.fixture
def kinesis() -> Any:
    with mock_aws():
        client = boto3.client("kinesis", region_name="us-east-1")
        client.create_stream(StreamName=STREAM, ShardCount=2)
        client.get_waiter("stream_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 0, "MaxAttempts": 5})
        yield client


def read_back(client: Any) -> list:
    """All chunks in the stream, decoded (GetRecords on every shard from TRIM_HORIZON)."""
    chunks = []
    for shard in client.list_shards(StreamName=STREAM)["Shards"]:
        it = client.get_shard_iterator(StreamName=STREAM, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        while True:
            out = client.get_records(ShardIterator=it, Limit=10_000)
            chunks += [decode_chunk(r["Data"]) for r in out["Records"]]
            if not out["Records"]:
                break
            it = out["NextShardIterator"]
    return chunks


def step_keys(chunks: list) -> Counter:
    return Counter((c.episode_id, s.t) for c in chunks for s in c.steps)


def make_producer(client: Any, **kwargs: Any) -> ExperienceProducer:
    kwargs.setdefault("retry_base_s", 0.001)
    kwargs.setdefault("retry_cap_s", 0.01)
    return ExperienceProducer(STREAM, GAME, "client-0", kinesis=client, **kwargs)


def play(producer: ExperienceProducer, episode_id: str, steps: range, obs_dim: int = 4, end: bool = False) -> None:
    for t in steps:
        obs = np.full(obs_dim, t, dtype=np.float32)
        last = end and t == steps[-1]
        producer.record(episode_id, t, obs, np.int64(t % 2), 1.0, obs + 1, last, False, 0)


def test_every_step_arrives_exactly_once(kinesis: Any) -> None:
    episodes = [str(uuid.uuid4()) for _ in range(3)]
    with make_producer(kinesis, chunk_steps=16, compress=True) as producer:
        for t in range(50):  # Interleaved episodes, like concurrent games on one client.
            for i, episode_id in enumerate(episodes):
                if t < 30 + 10 * i:
                    done = t == 29 + 10 * i and i < 2  # Third episode is left open: flush must send it.
                    obs = np.array([t, i, 0.5, -0.5], dtype=np.float32)
                    producer.record(episode_id, t, obs, t % 2, 1.0, obs + 1, done, False, model_version=i)
        assert producer.flush(timeout=10)
        stats = producer.stats
    chunks = read_back(kinesis)
    keys = step_keys(chunks)
    expected = {(e, t) for i, e in enumerate(episodes) for t in range(30 + 10 * i)}
    assert set(keys) == expected
    assert set(keys.values()) == {1}
    assert stats["steps_recorded"] == stats["steps_acked"] == len(expected)
    assert stats["records_acked"] == len(chunks)
    assert stats["steps_dropped"] == 0
    for chunk in chunks:
        i = episodes.index(chunk.episode_id)
        assert chunk.model_version == i and chunk.game_id == GAME and chunk.client_id == "client-0"
        assert len(chunk.steps) <= 16
        step = chunk.steps[0]
        assert step.obs == [step.t, i, 0.5, -0.5] and step.next_obs == [step.t + 1, i + 1, 1.5, 0.5]
        assert step.action == step.t % 2
    terminal = [s for c in chunks for s in c.steps if s.terminated]
    assert sorted(s.t for s in terminal) == [29, 39]


def test_model_version_change_seals_chunk(kinesis: Any) -> None:
    episode_id = str(uuid.uuid4())
    with make_producer(kinesis, chunk_steps=64) as producer:
        for t in range(6):
            producer.record(episode_id, t, [0.0], 0, 0.0, [0.0], False, False, model_version=1 if t < 4 else 2)
        assert producer.flush(timeout=10)
    versions = sorted((c.model_version, [s.t for s in c.steps]) for c in read_back(kinesis))
    assert versions == [(1, [0, 1, 2, 3]), (2, [4, 5])]


def test_record_rejects_undeliverable_steps(kinesis: Any) -> None:
    episode_id = str(uuid.uuid4())
    with make_producer(kinesis) as producer:
        with pytest.raises(ContractError, match="obs"):
            producer.record(episode_id, 0, [np.nan], 0, 0.0, [0.0], False, False, 0)
        with pytest.raises(ContractError, match="reward"):
            producer.record(episode_id, 0, [0.0], 0, float("inf"), [0.0], False, False, 0)
        producer.record(episode_id, 5, [0.0], 0, 0.0, [0.0], False, False, 0)
        with pytest.raises(ContractError, match="^t:"):
            producer.record(episode_id, 5, [0.0], 0, 0.0, [0.0], False, False, 0)
        with pytest.raises(ContractError, match="record"):
            big = np.full(100_000, 0.123456789)  # ~2.6 MB of JSON for one step.
            producer.record(episode_id, 6, big, 0, 0.0, big, False, False, 0)
        assert producer.stats["steps_recorded"] == 1


def test_put_records_respects_kinesis_limits(kinesis: Any) -> None:
    spy = SpyKinesis(kinesis)
    spy.gate.clear()  # Hold the first call so the queue fills and batches hit the limits.
    episode_id = str(uuid.uuid4())
    with make_producer(spy, chunk_steps=1) as producer:
        play(producer, episode_id, range(0, 1), obs_dim=4)
        assert spy.entered.wait(10)
        play(producer, episode_id, range(1, 1201), obs_dim=4)  # 1200 tiny records: > 500 per call.
        play(producer, episode_id, range(1201, 1301), obs_dim=6000)  # 100 records of ~85 KB: > 5 MiB.
        spy.gate.set()
        assert producer.flush(timeout=30)
        stats = producer.stats
    sizes = [sum(len(e["Data"]) + len(e["PartitionKey"].encode()) for e in call) for call in spy.calls]
    counts = [len(call) for call in spy.calls]
    assert max(counts) == MAX_ENTRIES_PER_CALL
    assert max(sizes) <= MAX_BYTES_PER_CALL
    assert sum(sizes) > MAX_BYTES_PER_CALL  # The byte limit was actually exercised.
    assert sum(counts) == 1301 == stats["records_acked"]
    assert stats["put_calls"] == len(spy.calls)
    keys = step_keys(read_back(kinesis))
    assert len(keys) == 1301 and set(keys.values()) == {1}


def _fail_entries(target_call: int, indices: set[int]) -> Callable:
    """Call ``target_call``: entries at ``indices`` fail with a per-entry throttling ErrorCode, the rest succeed."""

    def fake(real: Any, stream: str, records: list[dict]) -> dict:
        ok = [r for i, r in enumerate(records) if i not in indices]
        real_results = iter(real.put_records(StreamName=stream, Records=ok)["Records"])
        results = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"}
            if i in indices
            else next(real_results)
            for i in range(len(records))
        ]
        return {"FailedRecordCount": len(indices), "Records": results}

    return lambda call_no, _records: fake if call_no == target_call else None


def test_partial_failure_resends_only_failed_entries(kinesis: Any) -> None:
    failed = {1, 3, 4, 8}
    # Call 0 carries episode 0's record and is held until the other nine are queued, so call 1 carries
    # exactly those nine; some of them fail per entry, and call 2 must re-send exactly the failed ones.
    spy = SpyKinesis(kinesis, fault=_fail_entries(1, failed))
    spy.gate.clear()
    episodes = [str(uuid.uuid4()) for _ in range(10)]
    with make_producer(spy, chunk_steps=4) as producer:
        for n, episode_id in enumerate(episodes):
            play(producer, episode_id, range(4))  # Exactly one record per episode.
            if n == 0:
                assert spy.entered.wait(10)
        spy.gate.set()
        assert producer.flush(timeout=10)
        stats = producer.stats
    assert [len(call) for call in spy.calls] == [1, 9, len(failed)]
    batch, retry = spy.calls[1], spy.calls[2]
    assert [e["Data"] for e in retry] == [batch[i]["Data"] for i in sorted(failed)]
    assert [e["PartitionKey"] for e in retry] == [batch[i]["PartitionKey"] for i in sorted(failed)]
    assert stats["entries_retried"] == len(failed)
    assert stats["put_calls"] == 3
    keys = step_keys(read_back(kinesis))
    assert len(keys) == 40 and set(keys.values()) == {1}


@pytest.mark.parametrize(
    ("code", "status"),
    [("ProvisionedThroughputExceededException", 400), ("ThrottlingException", 400), ("InternalFailure", 500)],
)
def test_throttled_call_is_retried_whole(kinesis: Any, code: str, status: int) -> None:
    def throttle(real: Any, stream: str, records: list[dict]) -> dict:
        error = {"Error": {"Code": code, "Message": "slow down"}, "ResponseMetadata": {"HTTPStatusCode": status}}
        raise ClientError(error, "PutRecords")

    spy = SpyKinesis(kinesis, fault=lambda call_no, _r: throttle if call_no < 2 else None)
    episode_id = str(uuid.uuid4())
    with make_producer(spy, chunk_steps=8) as producer:
        play(producer, episode_id, range(8), end=True)
        assert producer.flush(timeout=10)
        stats = producer.stats
    assert len(spy.calls) == 3 and spy.calls[0] == spy.calls[1] == spy.calls[2]
    assert stats["put_calls"] == 3 and stats["call_retries"] == 2 and stats["steps_acked"] == 8
    assert step_keys(read_back(kinesis)) == Counter({(episode_id, t): 1 for t in range(8)})


def _held_producer(kinesis: Any, **kwargs: Any) -> tuple[SpyKinesis, ExperienceProducer, str]:
    """A producer whose first PutRecords (carrying step 0) is in flight and held at the gate."""
    spy = SpyKinesis(kinesis)
    spy.gate.clear()
    producer = make_producer(spy, chunk_steps=1, **kwargs)
    episode_id = str(uuid.uuid4())
    play(producer, episode_id, range(1))
    assert spy.entered.wait(10)
    return spy, producer, episode_id


def test_drop_oldest_drops_queued_records_and_counts_steps(kinesis: Any) -> None:
    spy, producer, episode_id = _held_producer(kinesis, max_buffered_records=3, backpressure="drop_oldest")
    play(producer, episode_id, range(1, 6))  # Queue holds 3: steps 1 and 2 are dropped, never blocks.
    assert producer.stats["steps_dropped"] == 2
    spy.gate.set()
    assert producer.close(timeout=10)
    stats = producer.stats
    assert set(step_keys(read_back(kinesis))) == {(episode_id, t) for t in (0, 3, 4, 5)}
    assert stats["steps_recorded"] == 6 and stats["steps_acked"] == 4


def test_block_raises_buffer_full_after_timeout_without_recording(kinesis: Any) -> None:
    spy, producer, episode_id = _held_producer(kinesis, max_buffered_records=2, block_timeout_s=0.2)
    play(producer, episode_id, range(1, 3))
    started = time.monotonic()
    with pytest.raises(BufferFullError):
        play(producer, episode_id, range(3, 4))
    assert time.monotonic() - started >= 0.2
    assert producer.stats["steps_recorded"] == 3  # The refused step was not recorded...
    spy.gate.set()
    play(producer, episode_id, range(3, 4))  # ...so the caller can retry it once there is room.
    assert producer.close(timeout=10)
    assert step_keys(read_back(kinesis)) == Counter({(episode_id, t): 1 for t in range(4)})


def test_block_waits_for_room(kinesis: Any) -> None:
    spy, producer, episode_id = _held_producer(kinesis, max_buffered_records=2, block_timeout_s=30)
    play(producer, episode_id, range(1, 3))
    finished = threading.Event()
    errors: list[BaseException] = []

    def blocked_record() -> None:
        try:
            play(producer, episode_id, range(3, 4))
        except BaseException as exc:  # Surface in the main thread.
            errors.append(exc)
        finished.set()

    thread = threading.Thread(target=blocked_record)
    thread.start()
    assert not finished.wait(0.2), "record() should block while the buffer is full"
    spy.gate.set()
    assert finished.wait(10)
    thread.join()
    assert not errors
    assert producer.close(timeout=10)
    assert step_keys(read_back(kinesis)) == Counter({(episode_id, t): 1 for t in range(4)})


def test_close_is_idempotent_and_rejects_new_steps(kinesis: Any) -> None:
    producer = make_producer(kinesis)
    play(producer, str(uuid.uuid4()), range(3))
    assert producer.close(timeout=10)
    assert producer.close(timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        play(producer, str(uuid.uuid4()), range(1))
    assert producer.stats["steps_acked"] == 3


def test_oversized_chunk_is_split_into_records_under_1mib(kinesis: Any) -> None:
    spy = SpyKinesis(kinesis)
    episode_id = str(uuid.uuid4())
    obs = np.full(3000, 0.123456789)  # ~70 KB of JSON per step; 32 steps ~ 2.2 MB > 1 MiB.
    with make_producer(spy, chunk_steps=32) as producer:
        for t in range(32):
            producer.record(episode_id, t, obs, 0, 1.0, obs, False, False, 0)
        assert producer.flush(timeout=10)
    entries = [e for call in spy.calls for e in call]
    assert len(entries) > 2
    assert all(len(e["Data"]) + len(e["PartitionKey"]) <= MAX_RECORD_BYTES for e in entries)
    assert step_keys(read_back(kinesis)) == Counter({(episode_id, t): 1 for t in range(32)})


def test_record_rejects_ids_the_consumer_would_reject(kinesis: Any) -> None:
    with pytest.raises(ContractError, match="game_id"):
        ExperienceProducer(STREAM, "", "client-0", kinesis=kinesis)
    with make_producer(kinesis) as producer, pytest.raises(ContractError, match="episode_id"):
        producer.record("episode-1", 0, [0.0], 0, 0.0, [0.0], False, False, 0)


def test_record_copies_observation_lists_the_caller_reuses() -> None:
    """Games often mutate one observation buffer in place; recorded steps must not change with it."""

    class Capture:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def put_records(self, StreamName, Records):  # noqa: N803 - boto3's argument names
            self.data.extend(r["Data"] for r in Records)
            return {"Records": [{"SequenceNumber": str(i), "ShardId": "s"} for i in range(len(Records))]}

    from rlplatform_client.contract import decode_chunk

    kinesis = Capture()
    producer = ExperienceProducer("s", "CartPole-v1", "c", kinesis=kinesis, chunk_steps=8)
    episode = str(uuid.uuid4())
    buffer = [0.0, 0.0, 0.0, 0.0]
    for t in range(3):
        buffer[0] = float(t)
        producer.record(episode, t, buffer, 0, 1.0, buffer, False, False, 0)
    assert producer.close(timeout=10)
    (chunk,) = [decode_chunk(d) for d in kinesis.data]
    assert [s.obs[0] for s in chunk.steps] == [0.0, 1.0, 2.0]


def columns(n: int, start: int = 0, end: bool = False) -> dict[str, np.ndarray]:
    """``n`` steps of one CartPole-shaped episode as record_steps columns; float32 values with long decimals."""
    rng = np.random.default_rng(n + start)
    obs = rng.uniform(-1, 1, (n + 1, 4)).astype(np.float32)
    return {
        "t": np.arange(start, start + n),
        "obs": obs[:-1],
        "action": rng.integers(0, 2, n),
        "reward": rng.uniform(-1, 1, n).astype(np.float32),
        "next_obs": obs[1:],
        "terminated": np.arange(n) == n - 1 if end else np.zeros(n, dtype=bool),
        "truncated": np.zeros(n, dtype=bool),
    }


def test_record_steps_splits_at_chunk_size_and_episode_end_and_keeps_float32_exact(kinesis: Any) -> None:
    episode_id = str(uuid.uuid4())
    cols = columns(70, end=True)
    cols["terminated"][29] = True  # an end inside the call closes a record there too
    with make_producer(kinesis, chunk_steps=16, compress=True) as producer:
        producer.record_steps(episode_id, **cols, model_version=3)
        assert producer.flush(timeout=10)
        stats = producer.stats
    chunks = sorted(read_back(kinesis), key=lambda c: c.steps[0].t)
    assert [[s.t for s in c.steps][::len(c.steps) - 1 or 1] for c in chunks] == [
        [0, 15], [16, 29], [30, 45], [46, 61], [62, 69]
    ]  # fmt: skip
    assert stats["steps_recorded"] == stats["steps_acked"] == 70
    steps = [s for c in chunks for s in c.steps]
    assert all(c.model_version == 3 for c in chunks)
    np.testing.assert_array_equal(np.array([s.obs for s in steps], dtype=np.float32), cols["obs"])
    np.testing.assert_array_equal(np.array([s.next_obs for s in steps], dtype=np.float32), cols["next_obs"])
    np.testing.assert_array_equal(np.array([s.reward for s in steps], dtype=np.float32), cols["reward"])
    assert [s.action for s in steps] == cols["action"].tolist()
    assert [s.t for s in steps if s.terminated] == [29, 69]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("t", np.array([0, 2, 1]), "t: must increase"),
        ("t", np.array([-1, 0, 1]), "t: must increase strictly within 0"),
        ("obs", np.array([[0.0, 0.0, 0.0, np.inf]] * 3), "obs: must be finite"),
        ("next_obs", np.full((3, 4), 1e39), "next_obs: must be finite and within float32"),
        ("reward", np.array([0.0, np.nan, 0.0]), "reward: must be finite"),
        ("obs", np.zeros((2, 4)), r"obs: must have shape \(3, k>=1\)"),
        ("action", np.array([True, False, True]), "action: must be numbers"),
        ("terminated", np.array([0, 0, 1]), "terminated: must be 3 bools"),
    ],
)
def test_record_steps_rejects_a_bad_column_and_records_nothing(
    kinesis: Any, column: str, value: np.ndarray, message: str
) -> None:
    cols = columns(3)
    cols[column] = value
    with make_producer(kinesis) as producer:
        with pytest.raises(ContractError, match=message):
            producer.record_steps(str(uuid.uuid4()), **cols, model_version=0)
        assert producer.stats["steps_recorded"] == 0
    assert read_back(kinesis) == []


def test_record_steps_continues_an_episode_recorded_step_by_step_in_order(kinesis: Any) -> None:
    episode_id = str(uuid.uuid4())
    with make_producer(kinesis, chunk_steps=64) as producer:
        play(producer, episode_id, range(5))
        with pytest.raises(ContractError, match=r"must increase within an episode \(4 then 4\)"):
            producer.record_steps(episode_id, **columns(3, start=4), model_version=0)
        producer.record_steps(episode_id, **columns(3, start=5, end=True), model_version=0)
        assert producer.flush(timeout=10)
    chunks = read_back(kinesis)  # one shard per episode: records come back in the order they were put
    assert [[s.t for s in c.steps] for c in chunks] == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_sender_fills_calls_during_linger_and_flush_does_not_wait_for_it(kinesis: Any) -> None:
    spy = SpyKinesis(kinesis)
    with make_producer(spy, chunk_steps=8, linger_s=10.0) as producer:
        for _ in range(5):
            producer.record_steps(str(uuid.uuid4()), **columns(20, end=True), model_version=0)
        assert producer.flush(timeout=5), "flush must send at once, not after the 10 s linger"
    assert [len(call) for call in spy.calls] == [15]  # 5 episodes x 3 records, in one PutRecords call
    assert len(step_keys(read_back(kinesis))) == 100
