"""The embedded stack: moto, the Spark ingest job, the RLlib trainer and N bot clients, one process each.

``run_stack`` starts everything, shows live progress, evaluates every newly published model (the
ONNX bytes a client would load, sha256-checked) and stops at the target return or the time budget.
A crashed ingest or trainer is restarted (after a backoff delay, at most ``max_restarts`` times per
stage; both resume from their checkpoints). Shutdown is ordered so nothing is lost, on every exit path
(success, time budget, Ctrl-C, error, a stage out of restarts): clients stop and flush, ingest drains
(restarted if it dies) until the store holds every acknowledged transition or the drain timeout
passes, then ingest, trainer and moto stop.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from rlplatform import aws
from rlplatform.report import live_cell
from rlplatform.settings import Settings
from rlplatform.store import open_store
from rlplatform.store.base import LiveReturns
from rlplatform.supervisor import Supervisor
from rlplatform.train.evaluate import evaluate
from rlplatform_client.models import ModelError
from rlplatform_client.retry import Backoff
from rlplatform_client.stopping import set_on_signals
from rlplatform_client.subscriber import ModelSubscriber

console = Console(stderr=True)


@dataclass(frozen=True)
class LaunchConfig:
    game: str = "CartPole-v1"
    clients: int = 4
    target_return: float = 475.0
    max_minutes: float = 15.0
    run_dir: Path | None = None
    client_steps_per_second: float = 100.0
    eval_episodes: int = 20
    seed: int = 0
    # None: the trainer's own default (TrainerConfig, the algorithm's hyperparameters, its config file).
    algorithm: str | None = None
    trainer_config: Path | None = None
    publish_every_updates: int | None = None
    learning_starts: int | None = None
    drain_timeout_s: float = 120.0
    live_every_s: float = 10.0
    max_restarts: int = 3  # per restartable stage (ingest, trainer); one more crash fails the run
    restart_backoff: Backoff = Backoff(base_s=1.0, cap_s=30.0)


@dataclass
class Progress:
    """What the launcher observed; becomes the summary and the learning curve."""

    started: float = field(default_factory=time.monotonic)
    stored_rows: int = 0
    ingest_rate: float = 0.0
    algorithm: str | None = None
    updates: int = 0
    model_version: int = 0
    clients_mean_return: float | None = None
    transitions_sent: int = 0
    evals: list[dict] = field(default_factory=list)  # {"seconds", "version", "eval_return"}
    client_curve: list[tuple[float, float]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    # Per model version, how the (exploring) clients played it, from the store; refreshed every few seconds.
    live: dict[int, LiveReturns] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Stack:
    """The child processes of the embedded stack; ``stop`` is safe to call at any point."""

    def __init__(self, cfg: LaunchConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # The embedded profile whatever RLP_* the shell has: this stack is self-contained.
        self.settings = Settings(
            profile="embedded",
            store="sqlite",
            sqlite_path=run_dir / "experience.sqlite",
            checkpoint_dir=run_dir / "checkpoints",
            ray_address=None,
        )
        self.moto: aws.MotoServer | None = None
        self.supervisor = Supervisor(self.logs, self.env, cfg.max_restarts, cfg.restart_backoff)

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return self.supervisor.procs

    @property
    def restarts(self) -> dict[str, int]:
        return dict(self.supervisor.restarts)

    def env(self) -> dict[str, str]:
        assert self.moto is not None
        return {
            **self.moto.env(),
            "RLP_PROFILE": "embedded",
            "RLP_STORE": "sqlite",
            "RLP_RAY_ADDRESS": "",
            "RLP_SQLITE_PATH": str(self.settings.sqlite_path),
            "RLP_CHECKPOINT_DIR": str(self.settings.checkpoint_dir),
            "RLP_STREAM_NAME": self.settings.stream_name,
            "RLP_BUCKET": self.settings.bucket,
        }

    def start(self) -> None:
        self.moto = aws.MotoServer.start()
        self.moto.apply_env()  # the launcher itself reads the store count and the registry
        aws.bootstrap(self.settings)
        python = sys.executable
        spawn = self.supervisor.spawn
        spawn("ingest", [python, "-m", "rlplatform", "ingest", "--checkpoint", str(self.run_dir / "ingest-ckpt")], True)
        spawn("trainer", self._trainer_argv(), restartable=True)
        spawn("clients", self._clients_argv())

    def _trainer_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "rlplatform", "train", "--game", self.cfg.game]
        argv += ["--status-file", str(self.trainer_status), "--seed", str(self.cfg.seed)]
        optional = {
            "--algorithm": self.cfg.algorithm,
            "--config": self.cfg.trainer_config,
            "--publish-every": self.cfg.publish_every_updates,
            "--learning-starts": self.cfg.learning_starts,
        }
        return argv + [str(x) for flag, value in optional.items() if value is not None for x in (flag, value)]

    def _clients_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rlplatform_client",
            "simulate",
            "--game",
            self.cfg.game,
            "--clients",
            str(self.cfg.clients),
            "--stream",
            self.settings.stream_name,
            "--bucket",
            self.settings.bucket,
            "--stats-dir",
            str(self.client_stats_dir),
            "--poll-seconds",
            "1",
            "--seed",
            str(self.cfg.seed),
            "--max-steps-per-second",
            str(self.cfg.client_steps_per_second),
        ]

    @property
    def trainer_status(self) -> Path:
        return self.run_dir / "trainer-status.json"

    @property
    def client_stats_dir(self) -> Path:
        return self.run_dir / "clients"

    def check_alive(self) -> None:
        """Restart crashed stages that may be restarted; raise ``StageFailed`` otherwise."""
        self.supervisor.check()

    def terminate(self, name: str, timeout_s: float = 90.0) -> int | None:
        return self.supervisor.terminate(name, timeout_s)

    def stop(self) -> None:
        for name in ("clients", "ingest", "trainer"):
            self.terminate(name)
        if self.moto is not None:
            self.moto.stop()


def run_stack(cfg: LaunchConfig) -> dict:
    """Run the embedded stack; returns the summary (also written to ``summary.json`` and printed last)."""
    run_dir = (cfg.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = set_on_signals(stop)
    progress = Progress()
    stack = Stack(cfg, run_dir)
    solved_at: float | None = None
    errors: list[str] = []
    drained = False
    try:
        console.print(f"[bold]rlplatform[/] embedded stack for {cfg.game}, {cfg.clients} clients, run dir {run_dir}")
        stack.start()
        solved_at = _watch(stack, cfg, progress, stop)
    except Exception as exc:  # noqa: BLE001 - reported in the summary; acknowledged data is still drained
        errors.append(_report(exc))
    try:
        console.print("stopping clients and draining ingest ...")
        _drain(stack, cfg, progress)
        drained = True
    except Exception as exc:  # noqa: BLE001 - reported in the summary, then the stack is stopped
        errors.append(_report(exc))
    finally:
        progress.restarts = stack.restarts
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = _summary(cfg, progress, run_dir, solved_at, "; ".join(errors) or None, drained)
    _write_outputs(run_dir, summary, progress)
    print(json.dumps(summary), flush=True)
    return summary


def _report(exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"
    console.print(f"[red]error:[/] {error}")
    return error


def _watch(stack: Stack, cfg: LaunchConfig, progress: Progress, stop: threading.Event) -> float | None:
    """Refresh progress every second; evaluate each new model; return seconds-to-solve or None."""
    subscriber = ModelSubscriber(stack.settings.bucket, cfg.game)
    deadline = progress.started + cfg.max_minutes * 60
    with (
        open_store(stack.settings) as store,
        Live(_table(progress, cfg), console=console, refresh_per_second=2) as live,
    ):
        last_rows, last_t, live_at = 0, time.monotonic(), 0.0
        while not stop.is_set() and time.monotonic() < deadline:
            stack.check_alive()
            progress.restarts = stack.restarts
            now = time.monotonic()
            progress.stored_rows = store.count(cfg.game)
            progress.ingest_rate = (progress.stored_rows - last_rows) / max(now - last_t, 1e-6)
            last_rows, last_t = progress.stored_rows, now
            _read_trainer(stack, progress)
            _read_clients(stack, progress)
            if now - live_at >= cfg.live_every_s:  # reads every stored step: not every second
                progress.live, live_at = store.live_returns(cfg.game), now
            if _poll(subscriber):
                progress.model_version = subscriber.version
                score = evaluate(subscriber.act, cfg.game, cfg.eval_episodes, seed=10_000 + subscriber.version)
                progress.evals.append(
                    {"seconds": round(progress.elapsed(), 1), "version": subscriber.version, "eval_return": score}
                )
                if score >= cfg.target_return:
                    live.update(_table(progress, cfg))
                    return progress.elapsed()
            live.update(_table(progress, cfg))
            stop.wait(1.0)
    return None


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
    stack.terminate("clients")
    _read_clients(stack, progress)
    deadline = time.monotonic() + cfg.drain_timeout_s
    with open_store(stack.settings) as store:
        while (stored := store.count(cfg.game)) < progress.transitions_sent:
            progress.stored_rows = stored
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"drain incomplete: store holds {stored} of {progress.transitions_sent} acknowledged "
                    f"transitions after {cfg.drain_timeout_s:g} s"
                )
            stack.supervisor.check(stages=("ingest",), unlimited=True)
            time.sleep(0.2)
        progress.stored_rows = stored
        progress.live = store.live_returns(cfg.game)  # every acknowledged step counted


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_trainer(stack: Stack, progress: Progress) -> None:
    status = _read_json(stack.trainer_status)
    if status:
        progress.updates = status["updates"]
        progress.algorithm = status.get("algorithm")


def _read_clients(stack: Stack, progress: Progress) -> None:
    stats = [s for p in sorted(stack.client_stats_dir.glob("*.json")) if (s := _read_json(p))]
    progress.transitions_sent = sum(s["steps_acked"] for s in stats)
    returns = [s["mean_return_last_20"] for s in stats if s.get("mean_return_last_20") is not None]
    if returns:
        progress.clients_mean_return = sum(returns) / len(returns)
        progress.client_curve.append((round(progress.elapsed(), 1), progress.clients_mean_return))


def _table(progress: Progress, cfg: LaunchConfig) -> Table:
    table = Table(title=f"rlplatform up: {cfg.game}", show_header=False)
    last_eval = progress.evals[-1]["eval_return"] if progress.evals else None
    rows = [
        ("elapsed", f"{progress.elapsed():.0f} s of {cfg.max_minutes * 60:.0f} s"),
        ("ingested transitions/s", f"{progress.ingest_rate:,.0f}"),
        ("stored rows", f"{progress.stored_rows:,}"),
        ("transitions sent (acked)", f"{progress.transitions_sent:,}"),
        ("learner updates", f"{progress.updates:,} ({progress.algorithm or '-'})"),
        ("model version", str(progress.model_version)),
        ("stage restarts", _fmt_restarts(progress.restarts, cfg.max_restarts)),
        ("clients' mean return", _fmt(progress.clients_mean_return)),
        ("live return, newest version", _fmt_live(progress.live)),
        (f"greedy eval ({cfg.eval_episodes} ep)", f"{_fmt(last_eval)} (target {cfg.target_return:g})"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _newest_live(live: dict[int, LiveReturns]) -> dict | None:
    """The newest version's live return, for the summary."""
    if not live:
        return None
    newest = live[max(live)]
    return {"version": newest.model_version, "episodes": newest.episodes, "mean_return": round(newest.mean_return, 1)}


def _fmt_live(live: dict[int, LiveReturns]) -> str:
    if not live:
        return "-"
    newest = max(live)
    return f"v{newest}: {live_cell(live[newest])}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_restarts(restarts: dict[str, int], limit: int) -> str:
    return ", ".join(f"{name} {n}/{limit}" for name, n in restarts.items()) or "-"


def _summary(
    cfg: LaunchConfig, progress: Progress, run_dir: Path, solved_at: float | None, error: str | None, drained: bool
) -> dict:
    return {
        "solved": solved_at is not None and error is None,
        "seconds_to_solve": None if solved_at is None else round(solved_at, 1),
        "final_eval_return": progress.evals[-1]["eval_return"] if progress.evals else None,
        "transitions_sent": progress.transitions_sent,
        "transitions_stored": progress.stored_rows,
        "model_versions": progress.model_version,
        "learner_updates": progress.updates,
        "live_return": _newest_live(progress.live),
        "algorithm": progress.algorithm,
        "restarts": progress.restarts,
        "drained": drained,
        "game": cfg.game,
        "clients": cfg.clients,
        "target_return": cfg.target_return,
        "seconds_total": round(progress.elapsed(), 1),
        "run_dir": str(run_dir),
        "error": error,
    }


def _write_outputs(run_dir: Path, summary: dict, progress: Progress) -> None:
    (run_dir / "summary.json").write_text(json.dumps({**summary, "evals": progress.evals}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if progress.evals:
        ax.plot(
            [e["seconds"] for e in progress.evals],
            [e["eval_return"] for e in progress.evals],
            "o-",
            label="greedy eval of published model",
        )
    if progress.client_curve:
        ax.plot(*zip(*progress.client_curve, strict=True), label="clients' mean return (exploring)", alpha=0.7)
    # Each version's live return from the store, at the time the launcher first saw that version.
    seen = [
        (e["seconds"], progress.live[e["version"]].mean_return) for e in progress.evals if e["version"] in progress.live
    ]
    if seen:
        ax.plot(*zip(*seen, strict=True), "s", label="live return per version (store, exploring)")
    ax.axhline(summary["target_return"], color="grey", linestyle="--", label="target")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("episode return")
    ax.set_title(f"{summary['game']}: learning curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=100)
    plt.close(fig)
