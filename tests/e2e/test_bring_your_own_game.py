"""A game gymnasium has never heard of, declared from a spec file, played by SDK clients written only here and
trained through the whole pipeline (moto Kinesis -> Spark ingest -> SQLite -> RLlib trainer -> S3 -> clients).

The platform never builds an environment for it: there is none (the id is in no gymnasium registry), so
the trainer publishes with no simulator evaluation, and the only measure is how the clients played.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlplatform import registry
from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws, processes
from rlplatform.registry.report import version_reports
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.stack.launcher import live_target_reached
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client import ExperienceProducer, ModelError, ModelSubscriber
from tests.support import TRUSTED_KEYS

pytestmark = pytest.mark.e2e

GAME = "Cue-v0"
SPEC = {
    "game_id": GAME,
    "observation_space": {"type": "box", "shape": [2], "dtype": "float32"},
    "action_space": {"type": "discrete", "n": 2},
}
EPISODE_STEPS = 10
# Random play earns 5 of 10 on average; a model that learned the cue earns ~9.5 with 10 % exploration.
MARGIN = 3.0


class CueGame:
    """Each step shows a cue (one-hot of two); the action matching it earns 1. Ten steps, then time is up."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.cue = 0
        self.t = 0

    def observe(self) -> np.ndarray:
        obs = np.zeros(2, dtype=np.float32)
        obs[self.cue] = 1.0
        return obs

    def reset(self) -> np.ndarray:
        self.t, self.cue = 0, int(self.rng.integers(2))
        return self.observe()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        reward = float(action == self.cue)
        self.t, self.cue = self.t + 1, int(self.rng.integers(2))
        return self.observe(), reward, False, self.t == EPISODE_STEPS


def play(producer: ExperienceProducer, models: ModelSubscriber, rng: np.random.Generator, episodes: int) -> None:
    game = CueGame(rng)
    for _ in range(episodes):
        with contextlib.suppress(ModelError):  # keep playing with the model we have
            models.poll()
        episode_id, obs = str(uuid.uuid4()), game.reset()
        for t in range(EPISODE_STEPS):
            explore = not models.has_model or rng.random() < 0.1
            action = int(rng.integers(2)) if explore else int(models.act(obs))
            next_obs, reward, terminated, truncated = game.step(action)
            producer.record(episode_id, t, obs, action, reward, next_obs, terminated, truncated, models.version)
            obs = next_obs


def test_a_game_only_the_clients_know_learns_through_the_pipeline(tmp_path: Path) -> None:
    assert GAME not in gym.registry
    settings = Settings(sqlite=SqliteSettings(path=tmp_path / "s.sqlite"))
    moto = aws.MotoServer.start()
    job, trainer = None, None
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        env = {
            **os.environ,
            "RLP_SQLITE_PATH": str(settings.sqlite.path),
            "RLP_INGEST_TRIGGER_SECONDS": "0.2",
        }
        spec_file = tmp_path / "cue.json"
        spec_file.write_text(json.dumps(SPEC))
        cli = [sys.executable, "-m", "rlplatform"]
        registered = subprocess.run([*cli, "games", "register", GAME, "--spec", str(spec_file)], env=env, timeout=60)
        assert registered.returncode == 0
        job = IngestJob(tmp_path / "ckpt", tmp_path / "metrics.jsonl", env, tmp_path / "ingest.log")
        job.start()
        with (tmp_path / "trainer.log").open("ab") as log:
            trainer = processes.spawn(
                [*cli, "train", "--game", GAME, "--publish-every", "200", "--learning-starts", "300"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        producer = ExperienceProducer(settings.stream_name, GAME, "test-client")
        models = ModelSubscriber(settings.bucket, GAME, trusted_keys=TRUSTED_KEYS)
        rng = np.random.default_rng(0)
        play(producer, models, rng, 100)  # random play: version 0
        deadline = time.monotonic() + 300
        while models.version < 4:
            assert trainer.poll() is None, f"trainer exited; see {tmp_path / 'trainer.log'}"
            job.check_alive()
            assert time.monotonic() < deadline, f"model version {models.version} after 300 s"
            play(producer, models, rng, 10)
        newest = models.version
        play(producer, models, rng, 60)
        producer.close()
        processes.stop(trainer, timeout_s=60)  # no version published after the reports are read
        sent = producer.stats["steps_acked"]
        with SqliteStore(settings.sqlite.path) as store:
            while store.count(GAME) < sent:
                job.check_alive()
                assert time.monotonic() < deadline + 120, f"stored {store.count(GAME)} of {sent}"
                time.sleep(0.2)
            reports = {r.version: r for r in version_reports(settings.bucket, GAME, store)}
        random_play, learned = reports[0].live, reports[newest].live
        print(f"live return: random play {random_play}, v{newest} {learned}")
        assert random_play.episodes >= 100 and learned.episodes >= 50
        assert learned.mean_return >= random_play.mean_return + MARGIN, (random_play, learned)
        # `rlplatform up`'s judge for a game without a simulator (live play) calls it solved at 8 of 10 once
        # version `newest` has played its episodes.
        assert live_target_reached({v: r.live for v, r in reports.items() if r.live and v <= newest}, 8.0, 20)
        # No environment: nothing evaluated a published model on a simulator.
        manifests = [reports[v].manifest for v in registry.published_versions(settings.bucket, GAME)]
        assert manifests and all(m is not None and m.eval_return is None for m in manifests)
    finally:
        if trainer is not None:
            processes.stop(trainer, timeout_s=60)
        if job is not None:
            job.stop()
        moto.stop()
