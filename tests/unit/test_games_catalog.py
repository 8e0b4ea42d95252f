"""The game catalog: declared specs in the bucket, validated, immutable, found by ingest without a restart."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.games import GameCatalog, GameSpec, GameSpecConflict, GameSpecError, UnknownGameError
from rlplatform.ingest.job import _catalog, process_records
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client import declare_game
from rlplatform_client.contract import Chunk, Step, encode_chunk
from rlplatform_client.retry import RetryStopped
from tests.support import Clock

BUCKET = "rlp-models"
RACER = {
    "game_id": "Racer-v1",
    "observation_space": {"type": "box", "shape": [3], "dtype": "float32"},
    "action_space": {"type": "box", "low": [-1, 0], "high": [1, None]},
}


def test_a_declared_spec_round_trips_and_declaring_it_again_is_a_no_op(s3) -> None:
    spec = GameSpec.from_document(RACER)
    assert spec.obs_dim == 3 and not spec.discrete and spec.action_high == (1.0, float("inf"))
    assert declare_game(BUCKET, spec, s3=s3) is True
    assert declare_game(BUCKET, GameSpec.from_document(json.loads(json.dumps(RACER))), s3=s3) is False
    assert GameCatalog(BUCKET, s3).resolve("Racer-v1") == spec
    assert GameSpec.from_document(spec.to_document()) == spec  # unbounded highs travel as null


def test_a_different_spec_for_a_declared_id_is_refused_naming_the_difference(s3) -> None:
    declare_game(BUCKET, GameSpec.from_document(RACER), s3=s3)
    other = {**RACER, "observation_space": {"type": "box", "shape": [4]}}
    with pytest.raises(GameSpecConflict) as info:
        declare_game(BUCKET, GameSpec.from_document(other), s3=s3)
    assert info.value.differences == [
        "observation_space: {'type': 'box', 'shape': [3], 'dtype': 'float32'} != "
        "{'type': 'box', 'shape': [4], 'dtype': 'float32'}"
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"observation_space": {"type": "box", "shape": [0]}}, "observation_space.shape"),
        ({"observation_space": {"type": "box", "shape": [3], "dtype": "float64"}}, "observation_space.dtype"),
        ({"action_space": {"type": "multi"}}, "action_space.type"),
        ({"action_space": {"type": "discrete", "n": 0}}, "action_space.n"),
        ({"action_space": {"type": "box", "low": [1], "high": [0]}}, "action_space.low[0]"),
        ({"action_space": {"type": "box", "low": [0, 0], "high": [1]}}, "action_space"),
        ({"action_space": {"type": "box", "low": ["a"], "high": [1]}}, "action_space.low[0]"),
        ({"game_id": "a/b"}, "game_id"),
        ({"v": 2}, "v"),
    ],
)
def test_a_bad_spec_names_its_field(change: dict, field: str) -> None:
    with pytest.raises(GameSpecError) as info:
        GameSpec.from_document({**RACER, **change})
    assert info.value.field == field and str(info.value).startswith(f"spec.{field}:")


def test_an_undeclared_id_is_re_read_after_the_interval_not_per_lookup(s3) -> None:
    clock = Clock()
    catalog = GameCatalog(BUCKET, s3, recheck_s=2.0, clock=clock)
    with pytest.raises(UnknownGameError):
        catalog.resolve("Racer-v1")
    declare_game(BUCKET, GameSpec.from_document(RACER), s3=s3)  # another process declares it
    clock.now = 1.0
    assert catalog.declared("Racer-v1") is None  # remembered as undeclared for recheck_s
    clock.now = 2.5
    assert catalog.resolve("Racer-v1").obs_dim == 3


def test_junk_ids_cost_the_bucket_one_listing_per_interval_and_no_memory(s3) -> None:
    """A client cycling 2,000 undeclared ids at 175 records/s for a minute: catalog requests stay at one LIST per
    ``recheck_s`` whatever the ids, nothing is remembered per id, and a gymnasium id is resolved once."""
    clock = Clock()
    catalog = GameCatalog(BUCKET, s3, recheck_s=2.0, clock=clock)
    assert catalog.resolve("CartPole-v1").obs_dim == 4
    after_gym = catalog.requests
    declare_game(BUCKET, GameSpec.from_document(RACER), s3=s3)
    seconds, rate = 60.0, 175
    for i in range(int(seconds * rate)):
        clock.now = i / rate
        with pytest.raises(UnknownGameError):
            catalog.resolve(f"junk-{i % 2000}")
        catalog.resolve("CartPole-v1")
    assert catalog.requests - after_gym <= seconds / catalog.recheck_s + 1
    assert catalog.resolve("Racer-v1").obs_dim == 3  # found by a listing, then read once
    assert len(catalog._declared) + len(catalog._gym) == 2 and catalog.declared_ids() == {"Racer-v1"}


class DeclaresOnSecondWait(threading.Event):
    """A stop event whose second wait is when "another process" declares the game; never set by itself."""

    def __init__(self, s3) -> None:
        super().__init__()
        self.s3, self.waits = s3, 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        if self.waits == 2:
            declare_game(BUCKET, GameSpec.from_document(RACER), s3=self.s3)
        return self.is_set()


def test_a_trainer_waits_for_its_game_to_be_declared_and_says_so(s3, caplog) -> None:
    stop = DeclaresOnSecondWait(s3)
    catalog = GameCatalog(BUCKET, s3, recheck_s=0.0)
    with caplog.at_level(logging.WARNING):
        spec = catalog.wait_for("Racer-v1", stop, logging.getLogger("test"), log_every_s=3600)
    assert spec.obs_dim == 3 and stop.waits == 2
    assert [r.getMessage() for r in caplog.records] == [
        "game_id: 'Racer-v1' is neither declared in s3://rlp-models/games/ nor a usable gymnasium id;"
        " waiting for its declaration (rlplatform games register, or declare_game)"
    ]


def test_waiting_for_a_declaration_ends_when_stopped(s3) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(RetryStopped, match="'Racer-v1' to be declared"):
        GameCatalog(BUCKET, s3, recheck_s=0.0).wait_for("Racer-v1", stop, logging.getLogger("test"))


def test_gymnasium_ids_need_no_declaration(s3) -> None:
    spec = GameCatalog(BUCKET, s3).resolve("Pendulum-v1")
    assert spec.obs_dim == 3 and spec.action_low == (-2.0,) and spec.simulator == "Pendulum-v1"


def racer_record(n: int) -> bytes:
    steps = [Step(t, [0.1, 0.2, 0.3], [0.5, 2.0], 1.0, [0.2, 0.3, 0.4], False, t == n - 1) for t in range(n)]
    return encode_chunk(Chunk("Racer-v1", "c", str(uuid.uuid4()), 0, steps))


def test_ingest_stores_a_declared_game_that_gymnasium_does_not_know(s3, tmp_path: Path) -> None:
    _catalog.cache_clear()
    records = [("shard-0", "1", racer_record(4))]
    with SqliteStore(tmp_path / "s.sqlite") as store:
        result, dead = process_records(records, store, bucket=BUCKET)
        assert result.stored == 0 and [d["kind"] for d in dead] == ["unknown_game"]
        declare_game(BUCKET, GameSpec.from_document(RACER), s3=s3)
        _catalog(BUCKET)._listed_at = None  # as if the recheck interval had passed
        result, dead = process_records([("shard-0", "2", racer_record(4))], store, bucket=BUCKET)
        assert result.stored == 4 and dead == []
        rows = store.sample("Racer-v1", 8, np.random.default_rng(0))
        assert rows.obs.shape == (8, 3) and rows.action.shape == (8, 2)
    _catalog.cache_clear()


def test_cli_registers_lists_and_shows_games(s3, tmp_path: Path) -> None:
    runner = CliRunner()
    spec_file = tmp_path / "racer.json"
    spec_file.write_text(json.dumps(RACER))
    out = runner.invoke(app, ["games", "register", "Racer-v1", "--spec", str(spec_file)])
    assert out.exit_code == 0 and "declared Racer-v1" in out.output, out.output
    out = runner.invoke(app, ["games", "register", "Grid-v0", "--obs-size", "9", "--actions", "4"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["games", "register", "Grid-v0", "--obs-size", "9", "--actions", "5"])
    assert out.exit_code == 1 and "action_space" in out.output and "'n': 4" in out.output
    out = runner.invoke(app, ["games", "list"], terminal_width=200)
    assert out.exit_code == 0 and "Grid-v0" in out.output and "Racer-v1" in out.output
    out = runner.invoke(app, ["games", "show", "CartPole-v1"])
    assert out.exit_code == 0 and json.loads(out.output)["source"] == "gymnasium"
    out = runner.invoke(app, ["games", "show", "Nope-v0"])
    assert out.exit_code == 1 and "neither declared" in out.output
