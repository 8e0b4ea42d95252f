"""The embedded stack: moto, one Spark ingest job for every game, the training service on a local Ray (a
trainer actor per game) and per game N bot clients, one process each.

``run_stack`` declares each gymnasium game in the bucket's catalog with its training document (what ``--algorithm``,
``--config`` and the other trainer options say), starts everything, shows live progress (each trainer's from the
service's status document in the bucket) and judges each game's newest model until every game reaches its target
return or the time budget ends. A game with a simulator is judged by greedy evaluation of the ONNX bytes a client
would load (sha256-checked); a game without one by the live return its clients played with the newest version
(``LaunchConfig.live_min_episodes`` finished episodes at least). A solved game's clients stop and it is retired in
its training document, so the service stops its trainer and the cores go to the games still learning.

A game that is not a gymnasium id gets no simulated clients: its own clients play it, pointed at the
stack by ``client.env`` in the run dir, and declare it (the service trains it once they have).

A crashed ingest or training service or dashboard is restarted (after a backoff delay, at most ``max_restarts``
times per stage; a dashboard beyond that is left stopped and the run goes on); a crashed trainer is restarted by
the service (as many times); all resume from their checkpoints. A trainer out of restarts or refused for its
document ends the run with its error. Shutdown is ordered so nothing is lost, on every exit path (success, time
budget, Ctrl-C, error, a stage out of restarts): clients stop and flush, ingest drains (restarted if it dies)
until the store holds every transition acknowledged to the simulated clients or the drain timeout passes, then
ingest, the training service and moto stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.live import Live

from rlplatform.games import GameCatalog, UnknownGameError, game_spec
from rlplatform.infra import aws
from rlplatform.infra.names import slug
from rlplatform.registry import keys
from rlplatform.release.state import Change, history, peek_release
from rlplatform.settings import CassandraSettings, Settings, SqliteSettings, settings_env
from rlplatform.stack.progress import GameProgress, LaunchConfig, Progress
from rlplatform.stack.supervisor import StageFailed, Supervisor
from rlplatform.stack.view import progress_table, summary, write_outputs
from rlplatform.store import ExperienceStore, open_reachable, open_store
from rlplatform.store.base import LiveReturns
from rlplatform.store.live import GameLive
from rlplatform.train.evaluate import evaluate
from rlplatform.train.status import read_status
from rlplatform.train.trainer import read_config_file
from rlplatform.train.training import put_training, read_training, write_training
from rlplatform_client.models import ModelError
from rlplatform_client.stopping import set_on_signals
from rlplatform_client.subscriber import ModelSubscriber

console = Console(stderr=True)


def stage(kind: str, game: str) -> str:
    """The supervisor's name of a game's stage, e.g. ``trainer-CartPole-v1`` (also its log file's name)."""
    return f"{kind}-{slug(game, keep='.-')}"


def _listenable(port: int) -> int:
    """``port`` if it is free on 127.0.0.1, else (or for 0) a free one."""
    if port:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    return aws.free_port()


def simulated(game: str) -> bool:
    """Whether the stack can play the game itself: only gymnasium ids come with an environment."""
    try:
        game_spec(game)
    except UnknownGameError:
        return False
    return True


class Stack:
    """The child processes of the embedded stack; ``stop`` is safe to call at any point."""

    def __init__(self, cfg: LaunchConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # The embedded profile whatever RLP_* the shell has: this stack is self-contained. With Cassandra, the
        # cluster is the user's (RLP_CASSANDRA_*), the keyspace this run's own, so runs never mix their rows.
        self.settings = Settings(
            profile="embedded",
            store=cfg.store,
            sqlite=SqliteSettings(path=run_dir / "experience.sqlite"),
            cassandra=CassandraSettings(keyspace=f"up_{slug(run_dir.name)}"[:48]),
            signing_key_file=self.keys_dir / keys.SIGNING_KEY,
            ray_address=None,
            max_transitions_per_game=cfg.max_transitions_per_game,
        )
        keys.init(self.keys_dir)  # the embedded profile signs with a key pair of its own
        self.moto: aws.MotoServer | None = None
        self.dashboard_url: str | None = None
        self.supervisor = Supervisor(self.logs, self.env, cfg.max_restarts, cfg.restart_backoff)

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return self.supervisor.procs

    @property
    def restarts(self) -> dict[str, int]:
        return dict(self.supervisor.restarts)

    def env(self) -> dict[str, str]:
        assert self.moto is not None
        # Stage logs are files: Ray's lines from the trainer actors come without terminal colour codes.
        return settings_env(self.settings, self.moto.env()) | {"RAY_COLOR_PREFIX": "0"}

    def start(self) -> None:
        self.moto = aws.MotoServer.start()
        self.moto.apply_env()  # the launcher itself reads the store count and the registry
        aws.bootstrap(self.settings)
        open_reachable(self.settings).close()  # an unreachable store is one clear error, not stages restarting
        self._write_client_env()
        for game in self.cfg.games:
            self._declare(game)
        python = sys.executable
        spawn = self.supervisor.spawn
        spawn("ingest", [python, "-m", "rlplatform", "ingest", "--checkpoint", str(self.run_dir / "ingest-ckpt")], True)
        spawn("trainers", self._trainers_argv(), restartable=True)
        if self.cfg.dashboard_port is not None:
            port = _listenable(self.cfg.dashboard_port)
            self.dashboard_url = f"http://127.0.0.1:{port}/"
            spawn("dashboard", [python, "-m", "rlplatform", "dashboard", "--port", str(port)], optional=True)
            console.print(f"dashboard: {self.dashboard_url}")
        for game in self.cfg.games:
            self.game_dir(game).mkdir(parents=True, exist_ok=True)
            if self.cfg.clients and simulated(game):
                spawn(stage("clients", game), self._clients_argv(game))
            else:
                console.print(
                    f"{game}: no simulated clients; play it with your own, configured by {self.client_env_file} "
                    "(it is trained once they declare the game)"
                )

    def _declare(self, game: str) -> None:
        """The game's training document and, for a gymnasium id, its declaration: what the service trains. A game
        its clients declare gets its document now, checked by the service once they have."""
        doc = self.training_document()
        if simulated(game):
            write_training(self.settings.bucket, game_spec(game), doc)  # first: a refused document declares nothing
            GameCatalog(self.settings.bucket, wait=False).register(game_spec(game))
        else:
            put_training(self.settings.bucket, game, doc)

    def training_document(self) -> dict:
        """Every game's training document (``train.training``) from the launch options; unset ones are left out,
        so the algorithm's defaults apply."""
        cfg = self.cfg
        trainer = read_config_file(cfg.trainer_config) if cfg.trainer_config is not None else {}
        hyperparameters = trainer.get("hyperparameters", {})
        if cfg.learning_starts is not None:
            hyperparameters = {**hyperparameters, "learning_starts": cfg.learning_starts}
        doc = {
            "algorithm": cfg.algorithm or trainer.get("algorithm"),
            "hyperparameters": hyperparameters or None,
            "publish_every_updates": cfg.publish_every_updates,
            "learners": cfg.learners or None,
            "canary_share": cfg.canary_share or None,
            "seed": cfg.seed,
        }
        return {key: value for key, value in doc.items() if value is not None}

    def _write_client_env(self) -> None:
        """What a game's own clients need to reach this stack, as shell assignments."""
        assert self.moto is not None
        wanted = {**aws.EMULATOR_ENV, "AWS_ENDPOINT_URL": self.moto.endpoint}
        wanted |= {"RLP_STREAM_NAME": self.settings.stream_name, "RLP_BUCKET": self.settings.bucket}
        wanted |= {"RLP_TRUSTED_KEYS": str(self.trusted_keys)}
        self.client_env_file.write_text("".join(f"{key}={value}\n" for key, value in wanted.items()))

    def _trainers_argv(self) -> list[str]:
        """The training service on a local Ray with a logical CPU for every trainer and learner actor (Ray would
        otherwise offer this machine's cores and leave the trainers that do not fit waiting)."""
        cpus = max(os.cpu_count() or 1, len(self.cfg.games) * (1 + self.cfg.learners))
        argv = [sys.executable, "-m", "rlplatform", "trainers", "--poll-seconds", "1", "--cpus", str(cpus)]
        return argv + ["--max-restarts", str(self.cfg.max_restarts)]

    def _clients_argv(self, game: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rlplatform_client",
            "simulate",
            "--game",
            game,
            "--clients",
            str(self.cfg.clients),
            "--stream",
            self.settings.stream_name,
            "--bucket",
            self.settings.bucket,
            "--stats-dir",
            str(self.client_stats_dir(game)),
            "--poll-seconds",
            "1",
            "--seed",
            str(self.cfg.seed),
            "--max-steps-per-second",
            str(self.cfg.client_steps_per_second),
            "--trusted-keys",
            str(self.trusted_keys),
            *(["--epsilon", str(self.cfg.client_epsilon)] if self.cfg.client_epsilon is not None else []),
        ]

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    @property
    def trusted_keys(self) -> Path:
        return self.keys_dir / keys.TRUSTED_KEYS

    @property
    def client_env_file(self) -> Path:
        return self.run_dir / "client.env"

    def game_dir(self, game: str) -> Path:
        return self.run_dir / "games" / slug(game, keep=".-")

    def client_stats_dir(self, game: str) -> Path:
        return self.game_dir(game) / "clients"

    def check_alive(self) -> None:
        """Restart crashed stages that may be restarted; raise ``StageFailed`` otherwise."""
        self.supervisor.check()

    def terminate(self, name: str, timeout_s: float = 90.0) -> int | None:
        return self.supervisor.terminate(name, timeout_s)

    def stop_clients(self) -> None:
        for game in self.cfg.games:
            self.terminate(stage("clients", game))

    def retire(self, game: str) -> None:
        """A solved game: its clients stop (they flush) and its training document says retired, so the service
        stops its trainer; ingest goes on storing its data."""
        self.terminate(stage("clients", game))
        put_training(self.settings.bucket, game, {**read_training(self.settings.bucket, game), "retired": True})

    def stop(self) -> None:
        self.terminate("dashboard")
        self.stop_clients()
        self.terminate("ingest")
        self.terminate("trainers")
        if self.moto is not None:
            self.moto.stop()


def run_stack(cfg: LaunchConfig) -> dict:
    """Run the embedded stack; returns the summary (also written to ``summary.json`` and printed last)."""
    run_dir = (cfg.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = set_on_signals(stop)
    progress = Progress.of(cfg)
    stack = Stack(cfg, run_dir)
    errors: list[str] = []
    drained = False
    try:
        games = ", ".join(cfg.games)
        console.print(f"[bold]rlplatform[/] embedded stack for {games}, {cfg.clients} clients each, run dir {run_dir}")
        stack.start()
        _watch(stack, cfg, progress, stop)
    except Exception as exc:  # noqa: BLE001 - reported in the summary; acknowledged data is still drained
        errors.append(_report(exc))
    try:
        console.print("stopping clients and draining ingest ...")
        _drain(stack, cfg, progress)
        drained = True
        _read_releases(stack, progress)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, then the stack is stopped
        errors.append(_report(exc))
    finally:
        progress.restarts = stack.restarts
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = summary(cfg, progress, run_dir, "; ".join(errors) or None, drained)
    write_outputs(run_dir, result, progress)
    print(json.dumps(result), flush=True)
    return result


def _report(exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"
    console.print(f"[red]error:[/] {error}")
    return error


def _watch(stack: Stack, cfg: LaunchConfig, progress: Progress, stop: threading.Event) -> None:
    """Refresh progress every second and judge each game's new models, until every game is solved."""
    catalog = GameCatalog(stack.settings.bucket)
    trusted = stack.trusted_keys.read_bytes()
    subscribers = {game: ModelSubscriber(stack.settings.bucket, game, trusted_keys=trusted) for game in cfg.games}
    deadline = progress.started + cfg.max_minutes * 60
    live_returns = {game: GameLive(game) for game in cfg.games}  # each stored step read once
    with open_store(stack.settings) as store, Live(progress_table(progress, cfg), console=console) as live:
        last_t = time.monotonic()
        while progress.unsolved() and not stop.is_set() and time.monotonic() < deadline:
            stack.check_alive()
            progress.restarts = stack.restarts
            now = time.monotonic()
            for g in progress.unsolved():
                _observe(stack, store, catalog, g, max(now - last_t, 1e-6), progress.elapsed())
                live_returns[g.game].update(store, now)
                g.live = live_returns[g.game].returns()
                if _judge(g, subscribers[g.game], cfg, progress.elapsed()):
                    console.print(f"[green]{g.game} reached {g.target:g} at {g.solved_at:.0f} s[/]")
                    if progress.unsolved():
                        stack.retire(g.game)
            last_t = now
            live.update(progress_table(progress, cfg))
            stop.wait(1.0)


def _observe(
    stack: Stack,
    store: ExperienceStore,
    catalog: GameCatalog,
    g: GameProgress,
    dt: float,
    elapsed: float,
) -> None:
    if g.spec is None:
        with contextlib.suppress(UnknownGameError):  # a declared game re-reads the bucket every few seconds
            g.spec = catalog.resolve(g.game)
    stored = store.written(g.game)
    g.ingest_rate, g.stored_rows, g.retained_rows = (stored - g.stored_rows) / dt, stored, store.count(g.game)
    _read_trainer(stack, g)
    _read_clients(stack, g, elapsed)


def _judge(g: GameProgress, subscriber: ModelSubscriber, cfg: LaunchConfig, elapsed: float) -> bool:
    """Whether the game reached its target now: greedy evaluation of each new model on the simulator, or
    the newest version's live return over at least ``cfg.live_min_episodes`` finished episodes."""
    if g.spec is None:
        return False
    if g.spec.simulator is not None:
        if not _poll(subscriber):
            return False
        g.model_version = subscriber.version
        score = evaluate(subscriber.act, g.spec.simulator, cfg.eval_episodes, seed=10_000 + subscriber.version)
        g.evals.append(
            {
                "seconds": round(elapsed, 1),
                "env_steps": g.transitions_sent,
                "version": subscriber.version,
                "eval_return": score,
            }
        )
        reached = score >= g.target
    else:
        reached = live_target_reached(g.live, g.target, cfg.live_min_episodes)
    if reached:
        g.solved_at, g.sent_at_solve = elapsed, g.transitions_sent
    return reached


def live_target_reached(live: Mapping[int, LiveReturns], target: float, min_episodes: int) -> bool:
    """The newest trained version (not 0, random play) finished ``min_episodes`` episodes averaging ``target``."""
    newest = max(live, default=0)
    return newest >= 1 and live[newest].episodes >= min_episodes and live[newest].mean_return >= target


def _poll(subscriber: ModelSubscriber) -> bool:
    """A bad model in the registry is the trainer's to replace, not a reason to stop the run."""
    try:
        return subscriber.poll()
    except ModelError as exc:
        console.print(f"[yellow]model not evaluated:[/] {exc}")
        return False


def _drain(stack: Stack, cfg: LaunchConfig, progress: Progress) -> None:
    """Stop the clients (they flush), then wait until the store holds every transition Kinesis acknowledged
    to them, restarting ingest whenever it dies (its restart limit does not apply: draining is the last
    chance to store acknowledged data); ``TimeoutError`` after ``cfg.drain_timeout_s``."""
    stack.stop_clients()
    deadline = time.monotonic() + cfg.drain_timeout_s
    with open_store(stack.settings) as store:
        for g in progress.games.values():
            _read_clients(stack, g, None)  # a retired game's curve ends where it stopped
            while (stored := store.written(g.game)) < g.transitions_sent:
                g.stored_rows = stored
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"drain incomplete: store holds {stored} of {g.transitions_sent} acknowledged "
                        f"{g.game} transitions after {cfg.drain_timeout_s:g} s"
                    )
                stack.supervisor.check(stages=("ingest",), unlimited=True)
                time.sleep(0.2)
            g.stored_rows, g.retained_rows = stored, store.count(g.game)
            g.live = store.live_returns(g.game)  # every acknowledged step counted


def _read_releases(stack: Stack, progress: Progress) -> None:
    """Each game's release state at the end, and its history, for the summary."""
    for g in progress.games.values():
        with contextlib.suppress(ModelError):  # a broken release state is the trainer's and the operator's to see
            g.release = peek_release(stack.settings.bucket, g.game)
        g.release_history = [_entry(c) for c in history(stack.settings.bucket, g.game)]


def _entry(change: Change) -> dict:
    """A history entry as the summary shows it: who moved what, and why."""
    after = change.after
    return {"revision": change.revision, "by": change.by, "action": change.action, "stable": after["stable"],
            "candidate": after["candidate"], "why": change.why}  # fmt: skip


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_trainer(stack: Stack, g: GameProgress) -> None:
    """The service's status of the game's trainer; ``StageFailed`` once the service gave up on it."""
    status = read_status(stack.settings.bucket, g.game)
    if not status:
        return
    if status["state"] in ("failed", "config_error"):
        raise StageFailed(f"{g.game}: trainer {status['state']}: {status['error']}; see {stack.logs / 'trainers.log'}")
    g.updates = status.get("updates", g.updates)
    g.algorithm = status.get("algorithm", g.algorithm)
    g.trainer_restarts = status["restarts"]
    g.judge = status.get("judge")
    with contextlib.suppress(ModelError):  # a broken release state is the trainer's and the operator's to see
        g.release = peek_release(stack.settings.bucket, g.game)
    if g.judged_by == "live play":  # the simulator judge tracks the version it evaluated instead
        g.model_version = status.get("version", g.model_version)


def _read_clients(stack: Stack, g: GameProgress, elapsed: float | None) -> None:
    """Transitions acknowledged to the game's clients and, at ``elapsed`` (None: no point), their mean return."""
    stats = [s for p in sorted(stack.client_stats_dir(g.game).glob("*.json")) if (s := _read_json(p))]
    g.transitions_sent = sum(s["steps_acked"] for s in stats)
    returns = [s["mean_return_last_20"] for s in stats if s.get("mean_return_last_20") is not None]
    if returns and elapsed is not None:
        g.clients_mean_return = sum(returns) / len(returns)
        g.client_curve.append((round(elapsed, 1), g.clients_mean_return))
    g.pickup_s = pickup_latencies(stats)


def pickup_latencies(client_stats: list[dict]) -> dict[int, float]:
    """Per model version: its publish stamp to the first step any client acted with it, in seconds."""
    published: dict[int, float] = {}
    first_step: dict[int, float] = {}
    for stats in client_stats:
        for version, (published_at, acted_at) in stats.get("pickups", {}).items():
            published[int(version)] = published_at
            first_step[int(version)] = min(acted_at, first_step.get(int(version), acted_at))
    return {v: first_step[v] - published[v] for v in sorted(first_step)}
