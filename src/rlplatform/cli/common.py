"""What the command modules share: option types, logging set-up, a clean stop while a stage waits."""

from __future__ import annotations

import contextlib
import enum
import logging
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from rlplatform.settings import Settings

MaxTransitionsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-transitions-per-game",
        min=1_000,
        help="Retention: transitions kept per game, the oldest dropped (default: RLP_MAX_TRANSITIONS_PER_GAME).",
    ),
]
# The store adapters RLP_STORE accepts, as a command-line choice.
StoreName = enum.Enum("StoreName", {name: name for name in typing.get_args(Settings.model_fields["store"].annotation)})
GameOpt = Annotated[str, typer.Option("--game", help="gymnasium game id, also the game_id on the wire.")]
AlgorithmOpt = Annotated[
    str | None,
    typer.Option("--algorithm", help="DQN or SAC; wins over --config. Default: DQN for discrete actions, SAC for box."),
]
LearnersOpt = Annotated[
    int,
    typer.Option(
        "--learners",
        min=0,
        max=64,
        help="Data-parallel learner actors, one CPU each, sharing every train batch (Ray); 0: in the trainer.",
    ),
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


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # at INFO, a line for every client made


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """An operator command whose bucket or store is down, or refuses it, ends in one line naming which and
    where (exit 1), within seconds: no traceback, no waiting as a stage would."""
    from botocore.exceptions import BotoCoreError, ClientError

    from rlplatform.infra import aws
    from rlplatform.store import StoreUnreachable

    aws.fail_fast()
    try:
        yield
    except StoreUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (BotoCoreError, ClientError) as exc:
        typer.echo(f"error: S3 at {aws.s3_client().meta.endpoint_url}: {exc}", err=True)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def until_stopped() -> Iterator[None]:
    """SIGTERM/SIGINT while a stage waits for an unreachable service is a clean stop, not a traceback."""
    from rlplatform_client.retry import RetryStopped

    try:
        yield
    except RetryStopped as exc:
        logging.getLogger("rlplatform").warning("%s; exiting", exc)
