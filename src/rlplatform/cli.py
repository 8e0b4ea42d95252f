"""``rlplatform`` command line: the embedded stack and each of its stages as its own command."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from rlplatform.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RL bots from real play.")

GameOpt = Annotated[str, typer.Option("--game", help="gymnasium game id, also the game_id on the wire.")]


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
    game: GameOpt = "CartPole-v1",
    clients: Annotated[int, typer.Option("--clients", min=1, max=64, help="Simulated bot client processes.")] = 4,
    target_return: Annotated[
        float, typer.Option("--target-return", help="Stop once the latest model's greedy mean return reaches this.")
    ] = 475.0,
    max_minutes: Annotated[float, typer.Option("--max-minutes", min=0.1, help="Stop after this many minutes.")] = 15.0,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Default: runs/<timestamp>.")] = None,
    client_steps_per_second: Annotated[
        float, typer.Option("--client-steps-per-second", min=1, help="Step-rate cap per simulated client.")
    ] = 100.0,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", min=1, help="Episodes per greedy evaluation.")] = 20,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Start the embedded stack (moto, Spark ingest, RLlib trainer, N clients) and train until solved."""
    from rlplatform.launcher import LaunchConfig, run_stack

    summary = run_stack(
        LaunchConfig(
            game=game,
            clients=clients,
            target_return=target_return,
            max_minutes=max_minutes,
            run_dir=run_dir,
            client_steps_per_second=client_steps_per_second,
            eval_episodes=eval_episodes,
            seed=seed,
        )
    )
    raise typer.Exit(0 if summary.get("error") is None else 1)


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

        bootstrap_keyspace(settings)
        typer.echo(f"keyspace {settings.cassandra_keyspace} is ready")


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
    status_file: Annotated[Path | None, typer.Option("--status-file", help="Write progress JSON here.")] = None,
    max_updates: Annotated[int | None, typer.Option("--max-updates", min=1)] = None,
    publish_every: Annotated[int, typer.Option("--publish-every", min=1, help="Learner updates per model.")] = 1000,
    learning_starts: Annotated[int, typer.Option("--learning-starts", min=1)] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Run the learner on this Ray cluster (host:port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Train from store samples and publish ONNX models until SIGTERM/SIGINT or --max-updates."""
    from rlplatform.train.trainer import Trainer, TrainerConfig
    from rlplatform_client.stopping import set_on_signals

    _logging(log_level)
    stop = threading.Event()
    set_on_signals(stop)
    cfg = TrainerConfig(game_id=game, publish_every_updates=publish_every, learning_starts=learning_starts, seed=seed)
    with _until_stopped():
        trainer = Trainer(load_settings(ray_address=ray_address), cfg, status_path=status_file, stop=stop)
        trainer.run(stop, max_updates=max_updates)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print numbers (one JSON line last).")
app.add_typer(bench_app, name="bench")


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
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-<timestamp>.")] = None,
) -> None:
    """End-to-end ingest throughput and latency (producer -> moto Kinesis -> Spark -> SQLite)."""
    import json
    import time

    from rlplatform.bench import IngestBenchConfig, run_ingest_bench

    work = work_dir or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
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
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app()
