"""What ``rlplatform up`` shows and leaves behind: the live table, the summary and the learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.table import Table

from rlplatform.registry.report import live_cell
from rlplatform.stack.progress import GameProgress, LaunchConfig, Progress
from rlplatform.store.base import LiveReturns

# ---------------------------------------------------------------------------------------------------- live table


def progress_table(progress: Progress, cfg: LaunchConfig) -> Table:
    """One column per game, under the rows the whole stack shares."""
    games = list(progress.games.values())
    table = Table(title="rlplatform up", show_header=len(games) > 1)
    table.add_column("")
    for g in games:
        table.add_column(g.game)
    blank = [""] * (len(games) - 1)
    table.add_row("elapsed", f"{progress.elapsed():.0f} s of {cfg.max_minutes * 60:.0f} s", *blank)
    table.add_row("stage restarts", _fmt_restarts(progress.all_restarts(), cfg.max_restarts), *blank)
    rows = [
        ("ingested transitions/s", lambda g: f"{g.ingest_rate:,.0f}"),
        ("stored transitions", lambda g: f"{g.stored_rows:,}"),
        (f"retained (at most {cfg.max_transitions_per_game:,})", lambda g: f"{g.retained_rows:,}"),
        ("transitions sent (acked)", lambda g: f"{g.transitions_sent:,}"),
        ("learner updates", lambda g: f"{g.updates:,} ({g.algorithm or '-'})"),
        ("model version", lambda g: str(g.model_version)),
        ("release: stable, candidate (share)", _release_cell),
        ("judge", lambda g: g.judge or "-"),
        ("clients' mean return", lambda g: _fmt(g.clients_mean_return)),
        ("live return, newest version", lambda g: _fmt_live(g.live)),
        (f"judged by ({cfg.eval_episodes} greedy episodes, or live play)", _judge_cell),
    ]
    for label, cell in rows:
        table.add_row(label, *[cell(g) for g in games])
    return table


def _release_cell(g: GameProgress) -> str:
    r = g.release
    if r is None:
        return "-"
    candidate = "" if r.candidate is None else f", v{r.candidate} ({r.share:.0%})"
    return f"v{r.stable}{candidate}{' pinned' if r.pinned else ''}"


def _judge_cell(g: GameProgress) -> str:
    if g.solved_at is not None:
        return f"reached {g.target:g} at {g.solved_at:.0f} s"
    if g.judged_by == "live play":
        return f"live return of the newest version (target {g.target:g})"
    last = g.evals[-1]["eval_return"] if g.evals else None
    return f"greedy eval {_fmt(last)} (target {g.target:g})"


def _fmt_live(live: dict[int, LiveReturns]) -> str:
    if not live:
        return "-"
    newest = max(live)
    return f"v{newest}: {live_cell(live[newest])}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_restarts(restarts: dict[str, int], limit: int) -> str:
    return ", ".join(f"{name} {n}/{limit}" for name, n in restarts.items()) or "-"


# ------------------------------------------------------------------------------------------------------ summary


def summary(cfg: LaunchConfig, progress: Progress, run_dir: Path, error: str | None, drained: bool) -> dict:
    """The run's result: the stack's totals and, under ``games``, each game's own."""
    games = {g.game: _game_summary(g) for g in progress.games.values()}
    return {
        "solved": error is None and all(s["solved"] for s in games.values()),
        "games": games,
        "transitions_sent": sum(g.transitions_sent for g in progress.games.values()),
        "transitions_stored": sum(g.stored_rows for g in progress.games.values()),
        "restarts": progress.all_restarts(),
        "drained": drained,
        "clients": cfg.clients,
        "seconds_total": round(progress.elapsed(), 1),
        "run_dir": str(run_dir),
        "error": error,
    }


def _game_summary(g: GameProgress) -> dict:
    return {
        "solved": g.solved_at is not None,
        "judged_by": g.judged_by,
        "target_return": g.target,
        "seconds_to_solve": None if g.solved_at is None else round(g.solved_at, 1),
        "env_steps_to_solve": g.sent_at_solve,
        "final_eval_return": g.evals[-1]["eval_return"] if g.evals else None,
        "live_return": _newest_live(g.live),
        "model_pickup_s": _pickup(g.pickup_s),
        "transitions_sent": g.transitions_sent,
        "transitions_stored": g.stored_rows,
        "transitions_retained": g.retained_rows,
        "model_versions": g.model_version,
        "learner_updates": g.updates,
        "algorithm": g.algorithm,
        "release": _release(g),
    }


def _release(g: GameProgress) -> dict | None:
    """The release state at the end and every change to it (who moved what, and why)."""
    r = g.release
    if r is None:
        return None
    state = {"stable": r.stable, "candidate": r.candidate, "share": r.share, "pinned": r.pinned}
    return {**state, "judge": g.judge, "history": g.release_history}


def _pickup(pickup_s: dict[int, float]) -> dict | None:
    """p50/p99 over model versions of publish -> first step acted with it (the clients' poll is most of it)."""
    if not pickup_s:
        return None
    seconds = np.fromiter(pickup_s.values(), dtype=np.float64)
    p50, p99 = np.percentile(seconds, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "versions": len(seconds)}


def _newest_live(live: dict[int, LiveReturns]) -> dict | None:
    if not live:
        return None
    newest = live[max(live)]
    return {"version": newest.model_version, "episodes": newest.episodes, "mean_return": round(newest.mean_return, 1)}


# -------------------------------------------------------------------------------------------- learning curves


def write_outputs(run_dir: Path, result: dict, progress: Progress) -> None:
    """``summary.json`` (with every evaluation) and ``learning_curve.png`` (one panel per game)."""
    evals = {g.game: g.evals for g in progress.games.values()}
    (run_dir / "summary.json").write_text(json.dumps({**result, "evals": evals}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(progress.games.values())
    fig, axes = plt.subplots(len(games), 1, figsize=(8, 4.5 * len(games)), squeeze=False)
    for ax, g in zip(axes[:, 0], games, strict=True):
        _plot_game(ax, g)
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=100)
    plt.close(fig)


def _plot_game(ax, g: GameProgress) -> None:  # noqa: ANN001 - a matplotlib Axes
    if g.evals:
        seconds, returns = [e["seconds"] for e in g.evals], [e["eval_return"] for e in g.evals]
        ax.plot(seconds, returns, "o-", label="greedy eval of published model")
    if g.client_curve:
        ax.plot(*zip(*g.client_curve, strict=True), label="clients' mean return (exploring)", alpha=0.7)
    # Each version's live return from the store: at its first evaluation, or in version order for live play.
    first_seen = {e["version"]: e["seconds"] for e in g.evals}
    seen = sorted((first_seen[v], live.mean_return) for v, live in g.live.items() if v in first_seen)
    if seen:
        ax.plot(*zip(*seen, strict=True), "s", label="live return per version (store, exploring)")
    elif g.live:
        ax.plot(sorted(g.live), [g.live[v].mean_return for v in sorted(g.live)], "s-", label="live return per version")
        ax.set_xlabel("model version")
    ax.axhline(g.target, color="grey", linestyle="--", label="target")
    if not ax.get_xlabel():
        ax.set_xlabel("seconds since start")
    ax.set_ylabel("episode return")
    ax.set_title(f"{g.game}: learning curve")
    ax.legend(loc="lower right")
