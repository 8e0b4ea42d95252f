"""``rlplatform keys``: the keyring of model signing keys (``registry/keys.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

keys_app = typer.Typer(
    no_args_is_help=True,
    help="Model signing keys: the trainer signs with the keyring's signing.key; games ship its trusted.pem.",
)

DirOpt = Annotated[Path, typer.Option("--dir", help="The keyring directory (signing.key, trusted.pem).")]
DEFAULT_DIR = Path("keys")
T = TypeVar("T")


@keys_app.command("init")
def keys_init(directory: DirOpt = DEFAULT_DIR) -> None:
    """Make a keyring with a first signing key (nothing changes if it has one)."""
    from rlplatform.registry import keys

    kid = _run(lambda: keys.init(directory))
    typer.echo(
        f"signing key {kid}: {directory / keys.SIGNING_KEY} (RLP_SIGNING_KEY_FILE); "
        f"games ship {directory / keys.TRUSTED_KEYS}"
    )


@keys_app.command("rotate")
def keys_rotate(directory: DirOpt = DEFAULT_DIR) -> None:
    """A new signing key; the old one's public key stays trusted until retired."""
    from rlplatform.registry import keys

    kid = _run(lambda: keys.rotate(directory))
    typer.echo(f"signing key {kid}; ship the new {directory / keys.TRUSTED_KEYS} with your next game update")


@keys_app.command("retire")
def keys_retire(
    key: Annotated[str, typer.Argument(help="The key id to stop trusting (`keys list`).")],
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Stop trusting an old public key, once no installed game needs models it signed."""
    from rlplatform.registry import keys

    _run(lambda: keys.retire(directory, key))
    typer.echo(f"retired {key}: {directory / keys.TRUSTED_KEYS} no longer trusts it")


@keys_app.command("list")
def keys_list(directory: DirOpt = DEFAULT_DIR) -> None:
    """The trusted keys, and which one signs."""
    from rlplatform.registry import keys

    for info in _run(lambda: keys.listing(directory)):
        typer.echo(f"{info.key_id}  {'signs new models' if info.signs else 'trusted'}")


@keys_app.command("export")
def keys_export(
    directory: DirOpt = DEFAULT_DIR,
    out: Annotated[Path | None, typer.Option("--out", help="Write the bundle here instead of to stdout.")] = None,
) -> None:
    """The trusted public keys as one PEM bundle: what a game ships and passes to its model subscriber."""
    from rlplatform.registry import keys

    _run(lambda: keys.listing(directory))  # a keyring that does not verify is not exported
    bundle = (directory / keys.TRUSTED_KEYS).read_bytes()
    if out is None:
        typer.echo(bundle.decode(), nl=False)
    else:
        out.write_bytes(bundle)


def _run(action: Callable[[], T]) -> T:
    """``action``'s result; a ``KeyringError`` is printed and exits 1."""
    from rlplatform.registry.keys import KeyringError

    try:
        return action()
    except KeyringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
