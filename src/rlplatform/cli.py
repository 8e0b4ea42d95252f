"""``rlplatform`` command line: the embedded stack and each of its stages as its own command."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rlplatform import processes
from rlplatform.settings import load_settings

if TYPE_CHECKING:
    from rlplatform.games import GameSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RL bots from real play.")

GameOpt = Annotated[str, typer.Option("--game", help="gymnasium game id, also the game_id on the wire.")]
AlgorithmOpt = Annotated[
    str | None,
    typer.Option("--algorithm", help="DQN or SAC; wins over --config. Default: DQN for discrete actions, SAC for box."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        exists=True,
        dir_okay=False,
        help='Per-game trainer config, JSON or YAML: {"algorithm": "SAC", "hyperparameters": {...}}.',
    ),
]


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def _until_stopped() -> Iterator[None]:
    """SIGTERM/SIGINT while a stage waits for an unreachable service is a clean stop, not a traceback."""
    from rlplatform_client.retry import RetryStopped

    try:
        yield
    except RetryStopped as exc:
        logging.getLogger("rlplatform").warning("%s; exiting", exc)


@app.command()
def up(
    games: Annotated[
        list[str] | None,
        typer.Option(
            "--game",
            help="A game to train (repeat for several; default CartPole-v1). A gymnasium id is played by simulated "
            "clients; any other id by your own clients (run dir's client.env), which declare it.",
        ),
    ] = None,
    clients: Annotated[
        int, typer.Option("--clients", min=0, max=64, help="Simulated bot client processes per gymnasium game.")
    ] = 4,
    target_returns: Annotated[
        list[str] | None,
        typer.Option(
            "--target-return",
            help="VALUE for every game, or GAME=VALUE (repeatable). Default: gymnasium's reward_threshold. Judged "
            "by greedy evaluation where the game has a simulator, else by the newest version's live return.",
        ),
    ] = None,
    max_minutes: Annotated[float, typer.Option("--max-minutes", min=0.1, help="Stop after this many minutes.")] = 15.0,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Default: runs/<timestamp>.")] = None,
    client_steps_per_second: Annotated[
        float, typer.Option("--client-steps-per-second", min=1, help="Step-rate cap per simulated client.")
    ] = 100.0,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", min=1, help="Episodes per greedy evaluation.")] = 20,
    algorithm: AlgorithmOpt = None,
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Start the embedded stack (moto, Spark ingest, an RLlib trainer and N clients per game) and train until
    every game reaches its target return."""
    from rlplatform.launcher import LaunchConfig, run_stack

    games = games or ["CartPole-v1"]
    if len(set(games)) < len(games):
        raise typer.BadParameter(f"a game is given twice: {games}", param_hint="--game")
    targets = _targets(games, target_returns or [])
    for game in games:
        if algorithm or config:
            _check_algorithm(game, algorithm, config)

    summary = run_stack(
        LaunchConfig(
            targets=targets,
            clients=clients,
            max_minutes=max_minutes,
            run_dir=run_dir,
            client_steps_per_second=client_steps_per_second,
            eval_episodes=eval_episodes,
            algorithm=algorithm,
            trainer_config=config.resolve() if config else None,
            seed=seed,
        )
    )
    raise typer.Exit(0 if summary.get("error") is None else 1)


def _targets(games: list[str], given: list[str]) -> dict[str, float]:
    """Each game's target return from ``--target-return`` values (VALUE or GAME=VALUE), else gymnasium's."""
    from rlplatform.games import reward_threshold

    for_all: list[float] = []
    per_game: dict[str, float] = {}
    for item in given:
        game, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not a number or GAME=number", param_hint="--target-return") from None
        if game and game not in games:
            raise typer.BadParameter(f"{game!r} is not one of the games: {games}", param_hint="--target-return")
        if game:
            per_game[game] = number
        else:
            for_all.append(number)
    if len(for_all) > 1:
        raise typer.BadParameter(f"one bare VALUE at most, got {for_all}; use GAME=VALUE", param_hint="--target-return")
    targets = {}
    for game in games:
        target = per_game.get(game, for_all[0] if for_all else reward_threshold(game))
        if target is None:
            raise typer.BadParameter(
                f"{game} has no default (gymnasium sets no reward_threshold for it); pass {game}=VALUE",
                param_hint="--target-return",
            )
        targets[game] = target
    return targets


def _check_algorithm(game: str, algorithm: str | None, config: Path | None) -> None:
    """Refuse a bad --algorithm or --config before any process starts, not in the trainer's log. A game that
    its clients will declare is only checked for a known algorithm name: its spec is not known yet."""
    from rlplatform.games import UnknownGameError, game_spec
    from rlplatform.train.algorithms import AlgorithmConfigError, algorithm_class, known_algorithm
    from rlplatform.train.trainer import trainer_config

    try:
        cfg = trainer_config(game, config_file=config, algorithm=algorithm)
        try:
            spec = game_spec(game)
        except UnknownGameError:
            if cfg.algorithm is not None:
                known_algorithm(cfg.algorithm)
            return
        algorithm_class(spec, cfg.algorithm)(spec, cfg.hyperparameters)
    except AlgorithmConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def bootstrap(
    profile: Annotated[
        str | None, typer.Option("--profile", help="embedded, compose or aws (default: RLP_PROFILE).")
    ] = None,
) -> None:
    """Create the Kinesis stream, the S3 bucket and (Cassandra store) the keyspace; idempotent."""
    from rlplatform import aws

    settings = load_settings(profile=profile)
    if settings.profile == "aws" and (overrides := aws.endpoint_overrides()):
        raise typer.BadParameter(
            f"profile aws talks to real AWS, but endpoint overrides are set: {', '.join(sorted(overrides))}; "
            "unset them",
            param_hint="--profile",
        )
    aws.bootstrap(settings)
    typer.echo(f"stream {settings.stream_name} and bucket {settings.bucket} are ready")
    if settings.store == "cassandra":
        from rlplatform.store.cassandra import bootstrap_keyspace

        bootstrap_keyspace(settings.cassandra)
        typer.echo(f"keyspace {settings.cassandra.keyspace} is ready")


@app.command()
def dlq(
    samples: Annotated[int, typer.Option("--samples", min=0, help="Dead letters shown per reason.")] = 3,
) -> None:
    """Dead-lettered records: counts by reason, with samples (error, shard, sequence number)."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.dead_letters import read_dead_letters

    settings = load_settings()
    report = read_dead_letters(settings.bucket, samples)
    console = Console()
    if not report.counts:
        console.print(f"no dead letters in s3://{settings.bucket}/")
        return
    counts = Table(title=f"dead letters in s3://{settings.bucket}/ ({report.objects} objects)")
    for column in ("reason", "records", "sample errors"):
        counts.add_column(column)
    for kind, n in report.counts.most_common():
        errors = "\n".join(
            f"{d['error']} (shard {d['shard_id']}, seq {d['sequence_number']})" if "shard_id" in d else d["error"]
            for d in report.samples[kind]
        )
        counts.add_row(kind, str(n), errors)
    console.print(counts)


@app.command()
def ingest(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Spark checkpoint directory (offsets).")],
    master: Annotated[str, typer.Option("--master", help="Spark master URL.")] = "local[2]",
    metrics: Annotated[
        Path | None, typer.Option("--metrics", help="Append per-batch counts and latencies (JSON lines) here.")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the Spark Structured Streaming ingest job until SIGTERM/SIGINT."""
    from rlplatform.ingest import job

    _logging(log_level)
    with _until_stopped():
        job.run(load_settings(), checkpoint, master=master, metrics=metrics)


@app.command()
def train(
    game: GameOpt = "CartPole-v1",
    algorithm: AlgorithmOpt = None,
    config: ConfigOpt = None,
    status_file: Annotated[Path | None, typer.Option("--status-file", help="Write progress JSON here.")] = None,
    max_updates: Annotated[int | None, typer.Option("--max-updates", min=1)] = None,
    publish_every: Annotated[
        int | None,
        typer.Option(
            "--publish-every", min=1, help="Learner updates per model. Default: the algorithm's (DQN 1000, SAC 500)."
        ),
    ] = None,
    learning_starts: Annotated[
        int | None,
        typer.Option("--learning-starts", min=1, help="Stored transitions before the first update (a hyperparameter)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Run the learner on this Ray cluster (host:port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Train from store samples and publish ONNX models until SIGTERM/SIGINT or --max-updates."""
    from rlplatform.train.algorithms import AlgorithmConfigError
    from rlplatform.train.trainer import Trainer, trainer_config
    from rlplatform_client.stopping import set_on_signals

    _logging(log_level)
    stop = threading.Event()
    set_on_signals(stop)
    loop = {"seed": seed} | ({"publish_every_updates": publish_every} if publish_every else {})
    overrides = {"learning_starts": learning_starts} if learning_starts else {}
    try:
        cfg = trainer_config(game, config_file=config, algorithm=algorithm, hyperparameters=overrides, **loop)
        with _until_stopped():
            trainer = Trainer(load_settings(ray_address=ray_address), cfg, status_path=status_file, stop=stop)
            try:
                trainer.run(stop, max_updates=max_updates)
            finally:
                trainer.close()
    except AlgorithmConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def models(game: GameOpt = "CartPole-v1") -> None:
    """Published versions of a game with how the clients that ran them played (live return from the store)."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.report import LIVE_NOTE, live_cell, version_reports
    from rlplatform.store import open_store

    settings = load_settings()
    with open_store(settings) as store:
        reports = version_reports(settings.bucket, game, store)
    table = Table(title=f"{game}: models in s3://{settings.bucket}/", caption=LIVE_NOTE)
    for column in ("version", "algorithm", "published at", "learner step", "live return", "simulator eval"):
        table.add_column(column)
    for r in reports:
        m = r.manifest
        if r.version == 0:
            cells = ("random play", "-", "-")
        elif m is None:
            cells = ("?", "manifest unreadable", "-")
        else:
            cells = (m.algorithm, m.created_at[:19], str(m.learner_step))
        evaluation = "-" if m is None or m.eval_return is None else f"{m.eval_return:.1f}"
        table.add_row(str(r.version), *cells, live_cell(r.live), evaluation)
    Console().print(table)


games_app = typer.Typer(no_args_is_help=True, help="The game catalog: declared specs in the bucket, and gymnasium ids.")
app.add_typer(games_app, name="games")


@games_app.command("register")
def games_register(
    game: Annotated[str, typer.Argument(help="The game_id clients put in their chunks.")],
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="A spec JSON document (README: Bring your own game).")
    ] = None,
    obs_size: Annotated[int | None, typer.Option("--obs-size", min=1, help="Observation vector length.")] = None,
    actions: Annotated[int | None, typer.Option("--actions", min=1, help="Discrete actions 0..N-1.")] = None,
    action_low: Annotated[str | None, typer.Option("--action-low", help="Box lower bounds, comma-separated.")] = None,
    action_high: Annotated[str | None, typer.Option("--action-high", help="Box upper bounds, comma-separated.")] = None,
    simulator: Annotated[str | None, typer.Option("--simulator", help="A gymnasium id simulating it.")] = None,
) -> None:
    """Declare a game (idempotent); a different spec for a declared id is refused, naming the differences."""
    from rlplatform.games import GameCatalog, GameSpecConflict, GameSpecError

    try:
        spec = _spec_from_options(game, spec_file, obs_size, actions, action_low, action_high, simulator)
        created = GameCatalog(load_settings().bucket).register(spec)
    except (GameSpecError, GameSpecConflict) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'declared' if created else 'already declared, same spec:'} {game}")


@games_app.command("list")
def games_list() -> None:
    """Declared games (gymnasium ids work without a declaration and are not listed)."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.games import GameCatalog

    settings = load_settings()
    specs = GameCatalog(settings.bucket).list_declared()
    if not specs:
        typer.echo(f"no games declared in s3://{settings.bucket}/ (gymnasium ids need no declaration)")
        return
    table = Table(title=f"games declared in s3://{settings.bucket}/")
    for column in ("game_id", "observation", "actions", "simulator"):
        table.add_column(column)
    for spec in specs:
        obs, action = spec.manifest_spaces()
        table.add_row(spec.game_id, f"float32[{spec.obs_dim}]", json.dumps(action), spec.simulator or "-")
    Console().print(table)


@games_app.command("show")
def games_show(game: Annotated[str, typer.Argument(help="A declared game_id or a gymnasium id.")]) -> None:
    """The spec document a game resolves to (declared in the bucket, else derived from gymnasium)."""
    from rlplatform.games import GameCatalog, UnknownGameError

    catalog = GameCatalog(load_settings().bucket)
    try:
        spec = catalog.resolve(game)
    except UnknownGameError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    source = "declared" if catalog.declared(game) is not None else "gymnasium"
    typer.echo(json.dumps({**spec.to_document(), "source": source}, indent=2))


def _spec_from_options(
    game: str,
    spec_file: Path | None,
    obs_size: int | None,
    actions: int | None,
    action_low: str | None,
    action_high: str | None,
    simulator: str | None,
) -> GameSpec:
    """A GameSpec from a spec file or from the flags (exactly one of the two)."""
    from rlplatform.games import GameSpec, GameSpecError

    flags = (obs_size, actions, action_low, action_high, simulator)
    if spec_file is not None:
        if any(f is not None for f in flags):
            raise GameSpecError("(options)", "give --spec FILE or the flags, not both")
        try:
            doc = json.loads(spec_file.read_text())
        except (OSError, ValueError) as exc:
            raise GameSpecError("(document)", f"cannot read {spec_file}: {exc}") from None
        if isinstance(doc, dict) and doc.setdefault("game_id", game) != game:
            raise GameSpecError("game_id", f"the file declares {doc['game_id']!r}, the command {game!r}")
        return GameSpec.from_document(doc)
    if obs_size is None or (actions is None) == (action_low is None or action_high is None):
        raise GameSpecError("(options)", "give --obs-size and either --actions N or --action-low/--action-high")
    if actions is not None:
        action = {"type": "discrete", "n": actions}
    else:
        action = {"type": "box", "low": _numbers(action_low, "low"), "high": _numbers(action_high, "high")}
    observation = {"type": "box", "shape": [obs_size], "dtype": "float32"}
    doc = {"game_id": game, "observation_space": observation, "action_space": action, "simulator": simulator}
    return GameSpec.from_document(doc)


def _numbers(text: str, name: str) -> list[float]:
    from rlplatform.games import GameSpecError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise GameSpecError(f"action_space.{name}", f"must be comma-separated numbers, got {text!r}") from None


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print numbers (one JSON line last).")
app.add_typer(bench_app, name="bench")


@bench_app.command("learn")
def bench_learn(
    game: Annotated[str, typer.Option("--game", help="CartPole-v1 (DQN, target 475) or Pendulum-v1 (SAC, -250).")],
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per side, run alternating.")] = 3,
    max_minutes: Annotated[float, typer.Option("--max-minutes", min=0.1, help="Time budget per run.")] = 15.0,
    clients: Annotated[int, typer.Option("--clients", min=1, max=64, help="Pipeline clients.")] = 4,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-learn-<timestamp>.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Seconds and env steps to the target: RLlib alone (tuned example, pipeline hyperparameters) vs the pipeline."""
    import time

    from rlplatform.bench_learn import (
        BenchLearnError,
        LearnBenchConfig,
        check_options,
        run_learn_bench,
    )

    _logging(log_level)
    try:
        check_options(game, seeds)
    except BenchLearnError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[1], param_hint=str(exc).split(":")[0]) from None
    processes.interrupt_on_sigterm()
    work = (work_dir or Path("runs") / time.strftime("bench-learn-%Y%m%d-%H%M%S")).resolve()
    cfg = LearnBenchConfig(game=game, seeds=seeds, max_minutes=max_minutes, work_dir=work, clients=clients)
    print(json.dumps(run_learn_bench(cfg)), flush=True)


@bench_app.command("updates")
def bench_updates(
    game: Annotated[str, typer.Option("--game", help="A game with a simulator to play.")] = "CartPole-v1",
    updates: Annotated[int, typer.Option("--updates", help="Measured updates per side per round.")] = 300,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds, alternating the sides.")] = 3,
    steps: Annotated[int, typer.Option("--steps", help="Transitions of random play both sides sample from.")] = 20_000,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-updates-<time>.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "WARNING",
) -> None:
    """Learner updates/s fed from the experience store vs from RLlib's in-memory replay buffer."""
    import time

    from rlplatform.bench_updates import BenchUpdatesError, UpdatesBenchConfig, check_options, run_updates_bench

    _logging(log_level)
    try:
        check_options(game, updates, rounds, steps)
    except BenchUpdatesError as exc:
        option, _, reason = str(exc).partition(": ")
        raise typer.BadParameter(reason, param_hint=option) from None
    work = work_dir or Path("runs") / time.strftime("bench-updates-%Y%m%d-%H%M%S")
    cfg = UpdatesBenchConfig(game=game, work_dir=work, updates=updates, rounds=rounds, steps=steps)
    print(json.dumps(run_updates_bench(cfg)), flush=True)


@bench_app.command("ingest")
def bench_ingest(
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="How long producers push.")] = 30.0,
    producers: Annotated[int, typer.Option("--producers", min=1, max=32, help="Producer processes.")] = 2,
    shards: Annotated[int, typer.Option("--shards", min=1, max=64)] = 4,
    chunk_steps: Annotated[int, typer.Option("--chunk-steps", min=1, max=1024, help="Steps per record.")] = 256,
    compress: Annotated[bool, typer.Option("--compress/--no-compress", help="gzip records in producers.")] = True,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Offered steps/s over all producers; 0 = as fast as they can.")
    ] = 60_000,
    crash_restart: Annotated[
        bool, typer.Option("--crash-restart", help="kill -9 the ingest job mid-stream, restart it, reconcile.")
    ] = False,
    reshard_to: Annotated[
        int | None, typer.Option("--reshard-to", min=1, help="Raise the shard count to this mid-stream.")
    ] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            metavar="KINESIS+STORE",
            help="Target, repeatable (run one after the other). KINESIS: 'moto' (embedded, started here) or a"
            " running emulator's endpoint, e.g. http://127.0.0.1:4566 (LocalStack); STORE: 'sqlite' (a fresh file)"
            " or 'cassandra' (the RLP_CASSANDRA_* cluster, in a fresh keyspace bench_<hex>, dropped at the end)."
            " Each run uses a fresh stream bench-<hex> with --shards shards, deleted at the end. Several targets"
            " print a JSON object keyed by target. --reshard-to is refused unless every KINESIS is moto."
            " Default: moto+sqlite.",
        ),
    ] = None,
    master: Annotated[
        str,
        typer.Option(
            "--master",
            help="The ingest job's Spark master: local[2], or a standalone master spark://HOST:PORT (its executors"
            " then get this machine's AWS endpoint from the job; their CPU is counted when they run here).",
        ),
    ] = "local[2]",
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-<timestamp>.")] = None,
) -> None:
    """End-to-end ingest throughput and latency (producer -> Kinesis -> Spark -> store).

    An unreachable endpoint or Cassandra, or a refused option, exits with code 2 and a one-line error."""
    import time

    from rlplatform.bench import (
        BenchTargetError,
        IngestBenchConfig,
        Target,
        check_options,
        parse_target,
        run_ingest_bench,
    )

    try:
        targets = tuple(parse_target(t) for t in against) if against else (Target(),)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--against "), param_hint="--against") from None
    try:
        check_options(targets, reshard_to)
    except BenchTargetError as exc:
        typer.echo(f"bench ingest: {exc}", err=True)
        raise typer.Exit(2) from None

    processes.interrupt_on_sigterm()
    work = work_dir or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    try:
        result = run_ingest_bench(
            IngestBenchConfig(
                work_dir=work.resolve(),
                seconds=seconds,
                producers=producers,
                shards=shards,
                chunk_steps=chunk_steps,
                compress=compress,
                rate=rate or None,
                crash_restart=crash_restart,
                reshard_to=reshard_to,
                targets=targets,
                master=master,
            )
        )
    except BenchTargetError as exc:
        typer.echo(f"bench ingest: {exc}", err=True)
        raise typer.Exit(2) from None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app()
