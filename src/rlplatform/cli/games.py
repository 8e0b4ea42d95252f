"""``rlplatform games``: the game catalog (declared specs in the bucket, and gymnasium ids)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rlplatform.cli.common import one_line_errors
from rlplatform.settings import load_settings

if TYPE_CHECKING:
    from rlplatform.games import GameSpec


def _training_file(what: str) -> typer.models.OptionInfo:
    """``--config``: a training document file (``train.training``)."""
    return typer.Option(
        "--config",
        exists=True,
        dir_okay=False,
        help=f"JSON or YAML with any of algorithm, hyperparameters, publish_every_updates, ...: {what}",
    )


games_app = typer.Typer(no_args_is_help=True, help="The game catalog: declared specs in the bucket, and gymnasium ids.")


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
    gymnasium: Annotated[
        bool, typer.Option("--gymnasium", help="GAME is a gymnasium id: declare the spec gymnasium gives it.")
    ] = False,
    config: Annotated[Path | None, _training_file("stored before the spec: the game's first trainer uses it.")] = None,
) -> None:
    """Declare a game (idempotent); a different spec for a declared id is refused, naming the differences.

    The training service trains every declared game, gymnasium ids included once declared."""
    from rlplatform.games import GameCatalog, GameSpecConflict, GameSpecError, UnknownGameError, game_spec
    from rlplatform.train.algorithms import AlgorithmConfigError

    try:
        if gymnasium:
            if spec_file is not None or any(f is not None for f in (obs_size, actions, action_low, action_high)):
                raise GameSpecError("(options)", "--gymnasium takes its spec from gymnasium: no --spec or flags")
            spec = game_spec(game)
        else:
            spec = _spec_from_options(game, spec_file, obs_size, actions, action_low, action_high, simulator)
        catalog = GameCatalog(load_settings().bucket, wait=False)
        with one_line_errors():
            trains_with, created = None, None
            if catalog.declared(game) is not None:  # another spec is refused before any document is touched
                created = catalog.register(spec)
            if config is not None:  # before a new spec: the service's first trainer of the game reads it
                trains_with = _configure(catalog.bucket, spec, config, retire=None)
            if created is None:
                created = catalog.register(spec)
    except (GameSpecError, GameSpecConflict, UnknownGameError, AlgorithmConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'declared' if created else 'already declared, same spec:'} {game}")
    if trains_with is not None:
        typer.echo(f"{game}: {trains_with}")


@games_app.command("configure")
def games_configure(
    game: Annotated[str, typer.Argument(help="A declared game_id.")],
    config: Annotated[Path | None, _training_file("replaces the game's training document.")] = None,
    retire: Annotated[
        bool | None, typer.Option("--retire/--resume", help="Stop training the game / train it again.")
    ] = None,
) -> None:
    """How the training service trains a declared game (games/GAME/training.json); checked before it is stored."""
    from rlplatform.games import GameCatalog
    from rlplatform.train.algorithms import AlgorithmConfigError

    bucket = load_settings().bucket
    try:
        with one_line_errors():
            spec = GameCatalog(bucket, wait=False).declared(game)
            if spec is None:
                typer.echo(f"error: {game!r} is not declared (rlplatform games register)", err=True)
                raise typer.Exit(1)
            state = _configure(bucket, spec, config, retire)
    except AlgorithmConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{game}: {state}")


def _configure(bucket: str, spec: GameSpec, config: Path | None, retire: bool | None) -> str:
    """Store the game's training document, checked: ``config`` replaces it (keeping the retired flag, which is
    ``retire``'s); says what the game now trains with."""
    from rlplatform.train.trainer import read_config_file
    from rlplatform.train.training import KEYS, read_training, write_training

    doc = read_training(bucket, spec.game_id)
    if config is not None:
        kept = {"retired": doc["retired"]} if "retired" in doc else {}
        doc = kept | read_config_file(config, KEYS)
    if retire is not None:
        doc["retired"] = retire
    cfg = write_training(bucket, spec, doc)
    return "retired: its trainer stops" if doc.get("retired") else f"trains with {cfg.algorithm}"


@games_app.command("list")
def games_list() -> None:
    """Declared games (gymnasium ids work without a declaration and are not listed)."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.games import GameCatalog

    settings = load_settings()
    with one_line_errors():
        specs = GameCatalog(settings.bucket, wait=False).list_declared()
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

    catalog = GameCatalog(load_settings().bucket, wait=False)
    with one_line_errors():
        try:
            spec = catalog.resolve(game)
        except UnknownGameError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        source = "declared" if catalog.declared(game) is not None else "gymnasium"
        shown = {**spec.to_document(), "source": source}
        if source == "declared":
            shown |= _training(catalog.bucket, game)
    typer.echo(json.dumps(shown, indent=2))


def _training(bucket: str, game: str) -> dict:
    """The game's training document and what the training service last said of its trainer."""
    from rlplatform.train.algorithms import AlgorithmConfigError
    from rlplatform.train.status import read_status
    from rlplatform.train.training import read_training

    try:
        training: object = read_training(bucket, game)
    except AlgorithmConfigError as exc:
        training = {"error": str(exc)}
    return {"training": training, "trainer": read_status(bucket, game) or "no training service has run it"}


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
