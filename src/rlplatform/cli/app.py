"""``rlplatform`` command line: the embedded stack and each of its stages as its own command."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from rlplatform.cli.bench import bench_app
from rlplatform.cli.common import (
    AlgorithmOpt,
    ConfigOpt,
    GameOpt,
    LearnersOpt,
    MaxTransitionsOpt,
    StoreName,
    configure_logging,
    one_line_errors,
    until_stopped,
)
from rlplatform.cli.games import games_app
from rlplatform.cli.keys import keys_app
from rlplatform.cli.models import models_app
from rlplatform.settings import (
    DEFAULT_DASHBOARD_LIST_S,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_DASHBOARD_REFRESH_S,
    load_settings,
)
from rlplatform_client.games import DEFAULT_GAME

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RL bots from real play.")
app.add_typer(games_app, name="games")
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")


@app.command()
def up(
    games: Annotated[
        list[str] | None,
        typer.Option(
            "--game",
            help=f"A game to train (repeat for several; default {DEFAULT_GAME}). A gymnasium id is played by simulated "
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
    learners: LearnersOpt = 0,
    canary_share: Annotated[
        float,
        typer.Option(
            "--canary-share",
            min=0.0,
            max=1.0,
            help="Share of each game's clients that plays a new version as the release candidate, judged against "
            "the stable version by live play; 0: every new version is stable at once.",
        ),
    ] = 0.0,
    client_epsilon: Annotated[
        float | None,
        typer.Option(
            "--client-epsilon",
            min=0.0,
            max=1.0,
            help="Every simulated client's exploration rate. Default: a different one per client (0.4 down to "
            "0.4**8), which helps learning but makes a canary's clients play unlike the others.",
        ),
    ] = None,
    max_transitions: MaxTransitionsOpt = None,
    store: Annotated[
        StoreName,
        typer.Option(
            "--store",
            help="sqlite (a file in the run dir) or cassandra (a keyspace of the run's own on the cluster "
            "RLP_CASSANDRA_* names, e.g. `make cassandra`).",
        ),
    ] = StoreName.sqlite,
    dashboard_port: Annotated[
        int,
        typer.Option(
            "--dashboard-port",
            min=0,
            max=65535,
            help="Where the run's dashboard listens on 127.0.0.1 (a free port if taken; 0: any free port).",
        ),
    ] = DEFAULT_DASHBOARD_PORT,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Start no dashboard.")] = False,
) -> None:
    """Start the embedded stack (moto, Spark ingest, an RLlib trainer and N clients per game) and train until
    every game reaches its target return."""
    from rlplatform.stack.launcher import LaunchConfig, run_stack

    games = games or [DEFAULT_GAME]
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
            learners=learners,
            canary_share=canary_share,
            client_epsilon=client_epsilon,
            # as the option says: RLP_MAX_TRANSITIONS_PER_GAME where the option is not given
            max_transitions_per_game=load_settings(max_transitions_per_game=max_transitions).max_transitions_per_game,
            store=store.value,
            dashboard_port=None if no_dashboard else dashboard_port,
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
    from rlplatform.infra import aws

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

    from rlplatform.ingest.dead_letters import read_dead_letters

    settings = load_settings()
    with one_line_errors():
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
    max_transitions: MaxTransitionsOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run the Spark Structured Streaming ingest job until SIGTERM/SIGINT."""
    from rlplatform.ingest import job

    configure_logging(log_level)
    with until_stopped():
        job.run(load_settings(max_transitions_per_game=max_transitions), checkpoint, master=master, metrics=metrics)


@app.command()
def train(
    game: GameOpt = DEFAULT_GAME,
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
    learners: LearnersOpt = 0,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Run the learner on this Ray cluster (host:port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Train from store samples and publish ONNX models until SIGTERM/SIGINT or --max-updates."""
    from rlplatform.registry.keys import KeyringError
    from rlplatform.train.algorithms import AlgorithmConfigError
    from rlplatform.train.trainer import Trainer, trainer_config
    from rlplatform_client.stopping import set_on_signals

    configure_logging(log_level)
    stop = threading.Event()
    set_on_signals(stop)
    loop = {"seed": seed, "learners": learners} | ({"publish_every_updates": publish_every} if publish_every else {})
    overrides = {"learning_starts": learning_starts} if learning_starts else {}
    try:
        cfg = trainer_config(game, config_file=config, algorithm=algorithm, hyperparameters=overrides, **loop)
        with until_stopped():
            trainer = Trainer(load_settings(ray_address=ray_address), cfg, status_path=status_file, stop=stop)
            try:
                trainer.run(stop, max_updates=max_updates)
            finally:
                trainer.close()
    except (AlgorithmConfigError, KeyringError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def trainers(
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="The Ray cluster to run trainers on (host:port). Default: a local Ray."),
    ] = None,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", min=0.5, help="How often the catalog is read for games to train.")
    ] = 5.0,
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", min=0, help="Restarts in a row of a failing trainer.")
    ] = 3,
    cpus: Annotated[
        int | None,
        typer.Option(
            "--cpus",
            min=1,
            help="Logical CPUs of the local Ray (one per trainer, one per learner actor). Default: this machine's "
            "cores. Not with --ray-address: a cluster's nodes declare their own.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """The training service: a trainer (a Ray actor) for every declared game, until SIGTERM/SIGINT."""
    from rlplatform.registry.keys import KeyringError
    from rlplatform.train.service import TrainingService
    from rlplatform_client.stopping import set_on_signals

    settings = load_settings(ray_address=ray_address)
    if cpus is not None and settings.ray_address:
        raise typer.BadParameter(f"the Ray cluster at {settings.ray_address} has its own CPUs", param_hint="--cpus")
    configure_logging(log_level)
    stop = threading.Event()
    set_on_signals(stop)
    service = TrainingService(settings, stop, poll_seconds, max_restarts, local_cpus=cpus)
    try:
        with until_stopped():
            service.run()
    except KeyringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def dashboard(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; any but loopback requires the token.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")
    ] = DEFAULT_DASHBOARD_PORT,
    refresh_seconds: Annotated[
        float, typer.Option("--refresh-seconds", min=1.0, help="How often the bucket and the store are read.")
    ] = DEFAULT_DASHBOARD_REFRESH_S,
    list_seconds: Annotated[
        float,
        typer.Option(
            "--list-seconds",
            min=1.0,
            help="How often at most the catalog, versions and dead letters are listed when no read says they changed.",
        ),
    ] = DEFAULT_DASHBOARD_LIST_S,
    token: Annotated[
        str | None,
        typer.Option("--token", help="What every request must carry off loopback. Default: RLP_DASHBOARD_TOKEN."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """A live web page of games, model versions and their live returns, releases, ingest and dead letters,
    read from the bucket and the store (any profile), until SIGTERM/SIGINT."""
    from rlplatform.dashboard.server import serve
    from rlplatform.infra import aws

    settings = load_settings()
    configure_logging(log_level)
    aws.fail_fast()  # a refresh against an unreachable bucket reports it at once instead of retrying for minutes
    try:
        token = token or (settings.dashboard_token.get_secret_value() if settings.dashboard_token else None)
        serve(settings, host, port, refresh_seconds, list_seconds, token or None, announce=typer.echo)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
