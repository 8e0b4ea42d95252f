"""``rlplatform models``: a game's published versions, and its release (which version its clients play)."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from rlplatform.cli.common import GameOpt, one_line_errors
from rlplatform.settings import load_settings

if TYPE_CHECKING:
    from rlplatform_client.releases import ReleaseState

models_app = typer.Typer(
    no_args_is_help=True, help="A game's published versions and its release: which version its clients play."
)
WhyOpt = Annotated[str, typer.Option("--why", help="Recorded in the release history.")]


@models_app.command("list")
def models_list(game: GameOpt) -> None:
    """Published versions with how the clients that ran them played (live return from the store) and which of them
    the release serves."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.registry.report import LIVE_NOTE, live_cell, version_reports
    from rlplatform.release.state import peek_release
    from rlplatform.store import open_reachable

    settings = load_settings()
    with one_line_errors(), open_reachable(settings) as store:
        reports = version_reports(settings.bucket, game, store)
        state = peek_release(settings.bucket, game)
    table = Table(title=f"{game}: models in s3://{settings.bucket}/", caption=LIVE_NOTE)
    for column in ("version", "algorithm", "published at", "learner step", "live return", "simulator eval", "release"):
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
        table.add_row(str(r.version), *cells, live_cell(r.live), evaluation, _role(state, r.version))
    Console().print(table)


@models_app.command("show")
def models_show(game: GameOpt) -> None:
    """The release state (stable, candidate and its share, pinned) and every change to it."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.release.state import history, peek_release

    bucket = load_settings().bucket
    with one_line_errors():
        state, changes = peek_release(bucket, game), history(bucket, game)
    if state is None:
        typer.echo(f"{game}: no release state in s3://{bucket}/ (nothing published yet)")
        return
    candidate = "none" if state.candidate is None else f"v{state.candidate} for {state.share:.0%} of clients"
    pinned = ", pinned (no automatic promotion)" if state.pinned else ""
    typer.echo(f"{game}: stable v{state.stable}, candidate {candidate}{pinned} (revision {state.revision})")
    table = Table(title="release history")
    for column in ("revision", "at", "by", "action", "stable", "candidate", "why"):
        table.add_column(column)
    for c in changes:
        after = c.after
        moved = f"v{after['candidate']} ({after['share']:.0%})" if after["candidate"] else "-"
        table.add_row(str(c.revision), c.at[:19], c.by, c.action, f"v{after['stable']}", moved, c.why)
    Console().print(table)


@models_app.command("promote")
def models_promote(game: GameOpt, why: WhyOpt = "promoted by hand") -> None:
    """The candidate becomes the stable version for every client, now."""
    from rlplatform.release.state import promote

    _change(game, promote, "promote", why)


@models_app.command("rollback")
def models_rollback(
    game: GameOpt,
    to: Annotated[
        int | None, typer.Option("--to", help="A published version older than stable. Default: the one before it.")
    ] = None,
    why: WhyOpt = "rolled back by hand",
) -> None:
    """Stable goes back to an older published version (and a candidate is withdrawn); clients follow it."""
    from rlplatform.registry import published_versions
    from rlplatform.release.state import rollback

    published = published_versions(load_settings().bucket, game)

    def move(state: ReleaseState | None) -> ReleaseState:
        before = max((v for v in published if state is not None and v < state.stable), default=0)
        return rollback(state, before if to is None else to, published)

    _change(game, move, "rollback", why)


@models_app.command("pin")
def models_pin(game: GameOpt, why: WhyOpt = "pinned by hand") -> None:
    """No automatic promotion until unpinned (new versions still become candidates)."""
    from rlplatform.release.state import pin

    _change(game, pin, "pin", why)


@models_app.command("unpin")
def models_unpin(game: GameOpt, why: WhyOpt = "unpinned by hand") -> None:
    """Automatic promotion again."""
    from rlplatform.release.state import unpin

    _change(game, unpin, "unpin", why)


def _change(game: str, move: Callable[[ReleaseState | None], ReleaseState], action: str, why: str) -> None:
    """Apply ``move`` as the operator; a move that is not possible is one line and changes nothing (exit 1)."""
    from rlplatform.registry.keys import KeyringError, signing_keys
    from rlplatform.release.state import ReleaseConflict, ReleaseRefused, change
    from rlplatform_client.models import ModelError

    settings = load_settings()
    try:
        with one_line_errors():
            keys = signing_keys(settings)
            state = change(settings.bucket, game, keys, move, by=f"operator ({getpass.getuser()})", action=action,
                           why=why)  # fmt: skip
    except (ReleaseRefused, ReleaseConflict, ModelError, KeyringError) as exc:
        typer.echo(f"error: {game}: {exc}", err=True)
        raise typer.Exit(1) from None
    candidate = "" if state.candidate is None else f", candidate v{state.candidate} ({state.share:.0%})"
    typer.echo(f"{game}: {action}: stable v{state.stable}{candidate}{' (pinned)' if state.pinned else ''}")


def _role(state: ReleaseState | None, version: int) -> str:
    if state is None:
        return "-"
    if version == state.stable:
        return "stable" + (" (pinned)" if state.pinned else "")
    if version == state.candidate:
        return f"candidate ({state.share:.0%})"
    return ""
