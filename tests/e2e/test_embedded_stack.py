"""The real embedded stack end to end: moto, Spark ingest, SQLite, RLlib trainer, client processes.

No stage is mocked. Data is checked at every hop: what clients had acknowledged by Kinesis, what is
in the stream, what the store holds, what the registry published and what the clients loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from rlplatform.infra import processes
from rlplatform.settings import Settings
from rlplatform.stack.launcher import LaunchConfig, Progress, Stack, _drain, _read_clients, stage
from rlplatform.store.cassandra import CassandraStore
from rlplatform_client.models import ManifestDocument, latest_key, sha256_hex
from rlplatform_client.signing import load_trusted_keys
from tests.support import client_stats, processes_mentioning, stream_transitions, wait_for

pytestmark = pytest.mark.e2e
GAME = "CartPole-v1"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    cfg = LaunchConfig(
        targets={GAME: 475.0}, clients=2, client_steps_per_second=200, publish_every_updates=100, learning_starts=300
    )
    s = Stack(cfg, tmp_path / "run")
    try:
        s.start()
        yield s
    finally:
        s.stop()  # also undoes Stack.start pointing this process's AWS SDK at its moto server
    for name, proc in s.procs.items():
        assert proc.poll() is not None, f"{name} still running after stop"
        assert not processes.session_members(proc.pid), f"{name} left processes behind"
    assert s.moto is not None and s.moto.process.poll() is not None


def stored_transitions(path: Path) -> dict[tuple[str, int], tuple]:
    with sqlite3.connect(path) as conn:
        (table,) = conn.execute("SELECT table_name FROM games WHERE game_id = ?", (GAME,)).fetchone()
        rows = conn.execute(
            f"SELECT episode_id, t, obs, action, reward, next_obs, terminated, truncated FROM {table}"
        ).fetchall()
    out = {}
    for ep, t, obs, action, reward, next_obs, term, trunc in rows:
        out[(ep, t)] = (
            np.frombuffer(obs, np.float32).tolist(),
            int(np.frombuffer(action, np.int64)[0]),
            reward,
            np.frombuffer(next_obs, np.float32).tolist(),
            bool(term),
            bool(trunc),
        )
    return out


def test_data_crosses_every_stage(stack: Stack) -> None:
    # Train until a model is published and every client has loaded one after checking its sha256.
    wait_for(
        lambda: (stats := client_stats(stack.client_stats_dir(GAME))) and all(s["verified_loads"] >= 1 for s in stats),
        300,
        "every client to load a published model",
        stack.check_alive,
    )
    stack.terminate(stage("clients", GAME))
    progress = Progress.of(stack.cfg)
    _drain(stack, stack.cfg, progress)

    stats = client_stats(stack.client_stats_dir(GAME))
    assert all(s["done"] and s["flushed"] for s in stats), stats
    sent = sum(s["steps_acked"] for s in stats)
    in_stream = stream_transitions(stack.settings.stream_name)
    stored = stored_transitions(stack.settings.sqlite.path)
    assert sent == len(in_stream) == len(stored) > 0
    assert stored.keys() == in_stream.keys()
    for key, (obs, action, reward, next_obs, term, trunc) in in_stream.items():
        s_obs, s_action, s_reward, s_next_obs, s_term, s_trunc = stored[key]
        np.testing.assert_array_equal(s_obs, np.float32(obs))
        np.testing.assert_array_equal(s_next_obs, np.float32(next_obs))
        assert (s_action, s_reward, s_term, s_trunc) == (action, reward, term, trunc)
    # Truncation stays apart from termination through the pipeline.
    assert any(v[5] for v in stored.values()) or all(not v[5] for v in in_stream.values())

    pointer = boto3.client("s3").get_object(Bucket=stack.settings.bucket, Key=latest_key(GAME))["Body"].read()
    document = ManifestDocument.from_json(pointer)
    manifest = document.manifest
    # Signed with the key pair the run made for itself, which its clients trust.
    assert document.envelope.verify(load_trusted_keys(stack.trusted_keys.read_bytes()))
    model = boto3.client("s3").get_object(Bucket=stack.settings.bucket, Key=manifest.onnx_key)["Body"].read()
    assert manifest.version >= 1 and manifest.sha256 == sha256_hex(model)
    assert manifest.algorithm == "DQN" and manifest.action_space == {"type": "discrete", "n": 2}
    assert all(1 <= s["model_version"] <= manifest.version for s in stats)
    # Every client acted with the model it loaded, after that model was published.
    for s in stats:
        published_at, acted_at = s["pickups"][str(s["model_version"])]
        assert published_at <= acted_at
    cartpole = progress.games[GAME]
    _read_clients(stack, cartpole, progress.elapsed())
    assert cartpole.transitions_sent == cartpole.stored_rows == sent
    assert cartpole.pickup_s and all(seconds >= 0 for seconds in cartpole.pickup_s.values())


def test_make_up_learns_cartpole_end_to_end() -> None:
    """The README's first command, verbatim: ``make up`` (installed already, so it only runs the stack) trains
    CartPole to a greedy return of 475 through every stage, and the summary reconciles what clients sent."""
    root = Path(__file__).resolve().parents[2]
    # As typed in a shell: not a sub-make of `make test` (which would add its own lines and flags).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "up"], cwd=root, env=env, capture_output=True, text=True, timeout=17 * 60)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    summary = json.loads(lines[-1])
    try:
        assert summary["solved"] is True and summary["error"] is None and summary["drained"] is True, summary
        cartpole = summary["games"][GAME]
        assert cartpole["final_eval_return"] >= cartpole["target_return"] == 475
        assert cartpole["transitions_sent"] == cartpole["transitions_stored"] > 0
    finally:
        run_dir = Path(summary["run_dir"])
        if run_dir.is_relative_to(root / "runs"):
            shutil.rmtree(run_dir, ignore_errors=True)


def test_up_trains_two_games_at_once_and_reconciles_each(tmp_path: Path) -> None:
    """`rlplatform up` as a user runs it, with two games on a tiny budget: one ingest job serves both, each
    game gets its own trainer and clients, each game's summary reconciles on its own, and each game's store stays
    within its retention bound while clients send more."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "rlplatform", "up", "--game", GAME, "--game", "Pendulum-v1", "--clients", "1"]
    argv += ["--target-return", "1000", "--target-return", "Pendulum-v1=0", "--max-minutes", "1.5"]
    argv += ["--run-dir", str(run_dir), "--client-steps-per-second", "200", "--max-transitions-per-game", "2000"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["error"] is None and summary["drained"] is True and summary["solved"] is False
    assert summary["run_dir"] == str(run_dir)
    assert set(summary["games"]) == {GAME, "Pendulum-v1"}
    for game, target, algorithm in ((GAME, 1000, "DQN"), ("Pendulum-v1", 0, "SAC")):
        result = summary["games"][game]
        assert result["transitions_sent"] == result["transitions_stored"] > 0, game
        assert result["transitions_retained"] == min(result["transitions_stored"], 2000), game
        assert (result["target_return"], result["judged_by"], result["solved"]) == (target, "simulator", False)
        assert result["algorithm"] == algorithm and result["seconds_to_solve"] is None
        # No canary share: each version the trainer published became stable at once, as its history says.
        release = result["release"]
        assert release is not None or result["model_versions"] == 0, result  # a model evaluated was released
        if release is None:
            continue
        assert release["stable"] >= result["model_versions"] and release["candidate"] is None, release
        assert [(h["by"], h["action"], h["stable"]) for h in release["history"]] == [
            ("trainer", "publish", v) for v in range(1, release["stable"] + 1)
        ], release["history"]
    assert summary["transitions_sent"] == sum(g["transitions_sent"] for g in summary["games"].values())
    assert summary["restarts"] == {
        "ingest": 0,
        "trainers": 0,
        "dashboard": 0,
        f"trainer-{GAME}": 0,
        "trainer-Pendulum-v1": 0,
    }
    assert json.loads((run_dir / "summary.json").read_text())["games"] == summary["games"]
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    with sqlite3.connect(run_dir / "experience.sqlite") as conn:  # the bound holds in the file itself
        tables = conn.execute("SELECT table_name FROM games").fetchall()
        assert len(tables) == 2 and all(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] <= 2000 for (t,) in tables
        )


def test_up_runs_the_whole_loop_on_cassandra(cassandra_settings: Settings, tmp_path: Path) -> None:
    """`rlplatform up --store cassandra` against a running node: every stage uses it, in a keyspace of the
    run's own, and the run reconciles; a node that does not answer is one clear error."""
    cassandra = cassandra_settings.cassandra
    env = {**os.environ, "RLP_CASSANDRA_CONTACT_POINTS": cassandra.contact_points}
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "rlplatform", "up", "--store", "cassandra", "--clients", "1", "--run-dir"]
    argv += [str(run_dir), "--target-return", "1000", "--max-minutes", "1", "--client-steps-per-second", "200"]
    proc = subprocess.run(argv, env={**env, "RLP_CASSANDRA_PORT": str(cassandra.port)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["error"] is None and summary["drained"] is True, summary
    result = summary["games"][GAME]
    assert result["transitions_sent"] == result["transitions_stored"] > 0 and result["learner_updates"] > 0
    own = cassandra.model_copy(update={"keyspace": "up_run"})
    with CassandraStore(own) as store:
        assert store.count(GAME) == result["transitions_retained"] == result["transitions_sent"]

    argv[argv.index(str(run_dir))] = str(tmp_path / "unreachable")
    proc = subprocess.run(argv, env={**env, "RLP_CASSANDRA_PORT": "1"}, capture_output=True, text=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and "make cassandra" in summary["error"], summary


def test_ctrl_c_stops_the_stack_cleanly_and_reconciles(tmp_path: Path) -> None:
    """SIGINT to the foreground process group, as a terminal's Ctrl-C sends it."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlplatform", "up", "--clients", "2", "--max-minutes", "10", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        clients = run_dir / "games" / GAME / "clients"
        wait_for(lambda: any(s["steps_acked"] for s in client_stats(clients)), 300, "the stack to run")
        os.killpg(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["error"] is None and summary["solved"] is False
    assert summary["transitions_sent"] == summary["transitions_stored"] > 0
    assert not processes_mentioning(str(run_dir)), "processes outlived the launcher"
