"""``rlplatform-client`` command line. AWS endpoints/credentials come from the standard AWS env vars."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated

import typer

from .contract import DEFAULT_BUCKET, DEFAULT_STREAM_NAME
from .games import DEFAULT_GAME
from .signing import load_trusted_keys

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rlplatform game-client tools.")


@app.callback()
def _main() -> None:
    """rlplatform game-client tools."""  # A callback keeps `simulate` a sub-command even while it is the only one.


@app.command()
def simulate(
    stream: Annotated[
        str, typer.Option("--stream", envvar="RLP_STREAM_NAME", help="Kinesis stream receiving experience.")
    ] = DEFAULT_STREAM_NAME,
    bucket: Annotated[
        str, typer.Option("--bucket", envvar="RLP_BUCKET", help="S3 bucket holding the model registry.")
    ] = DEFAULT_BUCKET,
    game: Annotated[str, typer.Option("--game", help="gymnasium environment id (also the game_id).")] = DEFAULT_GAME,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of bot client processes.")] = 1,
    seconds: Annotated[float | None, typer.Option("--seconds", min=0, help="Stop after this many seconds.")] = None,
    episodes_per_client: Annotated[
        int | None, typer.Option("--episodes-per-client", min=1, help="Stop each client after this many episodes.")
    ] = None,
    stats_dir: Annotated[Path | None, typer.Option("--stats-dir", help="Write {client_id}.json stats here.")] = None,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", min=0.0, help="Model poll interval.")] = 2.0,
    chunk_steps: Annotated[int, typer.Option("--chunk-steps", min=1, max=1024, help="Steps per Kinesis record.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Base seed; client i uses (seed, i).")] = 0,
    flush_timeout: Annotated[
        float, typer.Option("--flush-timeout", min=0.0, help="Max seconds each client spends flushing at exit.")
    ] = 60.0,
    max_steps_per_second: Annotated[
        float | None, typer.Option("--max-steps-per-second", min=0.0, help="Per-client step-rate cap.")
    ] = None,
    trusted_keys: Annotated[
        Path | None,
        typer.Option(
            "--trusted-keys",
            envvar="RLP_TRUSTED_KEYS",
            help="PEM bundle of the public keys published models must be signed by (`rlplatform keys export`).",
        ),
    ] = None,
    accept_unsigned: Annotated[
        bool, typer.Option("--accept-unsigned", help="Development only: load models whose signature is not verified.")
    ] = False,
    epsilon: Annotated[
        float | None,
        typer.Option(
            "--epsilon",
            min=0.0,
            max=1.0,
            help="Every client's exploration rate (epsilon-greedy, or the noise scale). Default: a different one per "
            "client, 0.4 down to 0.4**8 (Ape-X), which makes clients play unalike.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Run N bot clients (separate processes) that play, stream experience and follow the newest model.

    Runs until --seconds / --episodes-per-client is reached or SIGTERM/SIGINT; every client then
    flushes everything it recorded. Exit code 0 iff every client flushed and exited cleanly.
    """
    from .simulate import MissingDependencyError, SimConfig, run_simulation

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s parent %(levelname)s %(name)s: %(message)s")
    cfg = SimConfig(
        game=game,
        clients=clients,
        stream=stream,
        bucket=bucket,
        seconds=seconds,
        episodes_per_client=episodes_per_client,
        stats_dir=str(stats_dir) if stats_dir else None,
        poll_seconds=poll_seconds,
        chunk_steps=chunk_steps,
        seed=seed,
        flush_timeout_s=flush_timeout,
        log_level=log_level.upper(),
        max_steps_per_second=max_steps_per_second,
        accept_unsigned=accept_unsigned,
        epsilon=epsilon,
    )
    if trusted_keys is not None:
        try:
            cfg = dataclasses.replace(cfg, trusted_keys=trusted_keys.read_text())
            load_trusted_keys(cfg.trusted_keys)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: --trusted-keys {trusted_keys}: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        code = run_simulation(cfg)
    except (MissingDependencyError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
