"""The page: what the last ``Snapshot`` holds, as Dash components and Plotly charts (nothing drawn by hand).

Every id a test or a reader looks for is made by ``slug``; text from the bucket (dead-letter samples come from
players' clients) is only ever a text child, which the browser shows as text, never as markup."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from plotly.colors import qualitative

from rlplatform.dashboard.collect import RANK_MIN_EPISODES, GameView, Snapshot, VersionView

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
section { border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem 1rem; margin: 1rem 0; }
.error { background: #fde8e8; border: 1px solid #d33; padding: 0.5rem 1rem; border-radius: 6px; }
.problem { color: #a40; }
.muted { color: #777; }
.sample { font-family: monospace; font-size: 0.85em; max-width: 60rem; overflow-wrap: anywhere; }
"""
VERSIONS_SHOWN = 10  # the newest, besides v0 and the release's stable and candidate
PALETTE = qualitative.Plotly  # one colour per version (mean line and its band)
# Reports an ingest job may miss (a slow S3, a long batch) before the page asks whether it still runs.
STALE_REPORTS = 3


def slug(name: str) -> str:
    """A name as an element id (Dash ids may not hold dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def build_app(snapshot: Callable[[], Snapshot], refresh_s: float) -> Dash:
    """The Dash app: the page re-renders whenever the collector has a newer snapshot than the browser shows."""
    app = Dash(__name__, title="rlplatform dashboard", update_title=None)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + CSS + "</style>")
    app.layout = html.Div(
        [
            dcc.Interval(id="tick", interval=int(refresh_s * 1000)),
            dcc.Store(id="shown"),
            html.Div(id="page"),
        ]
    )

    @app.callback(
        Output("page", "children"), Output("shown", "data"), Input("tick", "n_intervals"), State("shown", "data")
    )
    def render(_: int | None, shown: int | None) -> tuple[list, int]:
        snap = snapshot()
        if snap.seq == shown:
            raise PreventUpdate
        return page(snap), snap.seq

    return app


def page(snap: Snapshot) -> list:
    updated = time.strftime("%H:%M:%S", time.localtime(snap.at))
    return [
        html.H1("rlplatform"),
        html.P(
            f"bucket s3://{snap.bucket} · store {snap.store} · updated {updated} (read in {snap.refresh_s:.2f} s)",
            id="updated",
            className="muted",
        ),
        *errors(snap),
        ranking(snap),
        *[game_section(g) for g in snap.games],
        ingest(snap),
        dead_letters(snap),
    ]


def errors(snap: Snapshot) -> list:
    if not snap.errors:
        return []
    return [
        html.Div(
            [html.P(f"{source} unreachable: {why}", id=f"error-{source}") for source, why in snap.errors.items()]
            + [html.P("Showing what was read before; retrying every refresh.", className="muted")],
            id="errors",
            className="error",
        )
    ]


# ------------------------------------------------------------------------------------------------ games


def ranking(snap: Snapshot) -> html.Section:
    if not snap.games:
        return html.Section(
            [
                html.H2("Games"),
                html.P(
                    f"No games: the catalog in s3://{snap.bucket} is empty and no model is published. Declare a game "
                    "with `rlplatform games register`, or start `rlplatform up`.",
                    id="no-games",
                ),
            ]
        )
    head = ["#", "game", "newest played", "its live return", "lift", "algorithm", "trainer", "updates/s"]
    rows = []
    for i, g in enumerate(snap.games, 1):
        newest = None if g.ranked is None else g.ranked[1]
        rows.append(
            html.Tr(
                [
                    html.Td(str(i)),
                    html.Td(html.A(g.game_id, href=f"#game-{slug(g.game_id)}")),
                    html.Td("-" if newest is None else f"v{newest.version}"),
                    html.Td("-" if newest is None else live_text(newest)),
                    html.Td("-" if g.lift is None else f"{g.lift:+.2f} sd"),
                    html.Td(g.algorithm or "-"),
                    html.Td(trainer_state(g)),
                    html.Td(rate(g.updates_per_s)),
                ],
                id=f"rank-{slug(g.game_id)}",
            )
        )
    return html.Section(
        [
            html.H2("Games"),
            html.P(
                f"Ranked by lift: how much better the newest version with {RANK_MIN_EPISODES}+ finished episodes "
                "plays than the oldest such version, in the oldest's standard deviations of return (live play of the "
                "exploring clients, from the store); games with fewer than two such versions last.",
                className="muted",
            ),
            table(head, rows, "ranking"),
        ]
    )


def game_section(g: GameView) -> html.Section:
    s = slug(g.game_id)
    return html.Section(
        [
            html.H2(g.game_id),
            html.P(f"{g.spec} · algorithm {g.algorithm or '-'} · trainer {trainer_state(g)}", className="muted"),
            *[html.P(p, className="problem") for p in g.problems],
            versions_table(g),
            live_chart(g),
            release(g),
        ],
        id=f"game-{s}",
    )


def shown_versions(g: GameView) -> list[VersionView]:
    """v0, the release's versions and the newest ``VERSIONS_SHOWN``: what the table and the chart show."""
    newest = {v.version for v in g.versions[-VERSIONS_SHOWN:]}
    return [v for v in g.versions if v.version == 0 or v.role or v.version in newest]


def versions_table(g: GameView) -> html.Div:
    """The shown versions, and how many older ones are left out."""
    versions = shown_versions(g)
    head = ["version", "release", "live return (mean ± sd)", "episodes", "mean length", "simulator eval", "published"]
    rows = [
        html.Tr(
            [
                html.Td(f"v{v.version}" if v.version else "v0 (before any model)"),
                html.Td(v.role or "-"),
                html.Td(live_text(v) if v.episodes else "-"),
                html.Td(str(v.episodes)),
                html.Td("-" if math.isnan(v.mean_length) else f"{v.mean_length:.0f}"),
                html.Td("-" if v.eval_return is None else f"{v.eval_return:.1f}"),
                html.Td(v.published_at or "-"),
            ],
            id=f"version-{slug(g.game_id)}-{v.version}",
        )
        for v in versions
    ]
    hidden = len(g.versions) - len(versions)
    note = [html.P(f"{hidden} older versions not shown (rlplatform models list --game {g.game_id})", className="muted")]
    return html.Div([table(head, rows, f"versions-{slug(g.game_id)}"), *(note if hidden else [])])


def live_chart(g: GameView) -> dcc.Graph | html.P:
    versions = shown_versions(g)
    if not any(v.series for v in versions):
        return html.P("No finished episode stored yet.", id=f"live-{slug(g.game_id)}", className="muted")
    fig = go.Figure()
    for v in versions:
        if not v.series:
            continue
        color = PALETTE[v.version % len(PALETTE)]
        x = [p.at_step for p in v.series]
        mean = [p.mean for p in v.series]
        low = [p.mean - p.std for p in v.series]
        high = [p.mean + p.std for p in v.series]
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1], y=high + low[::-1], fill="toself", fillcolor=color, opacity=0.15, mode="lines",
                line={"width": 0}, showlegend=False, hoverinfo="skip", legendgroup=str(v.version),
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=x, y=mean, mode="lines+markers", name=f"v{v.version}", line={"color": color},
                legendgroup=str(v.version),
            )
        )  # fmt: skip
    fig.update_layout(
        title="Live return by version (mean ± sd per group of episodes)",
        xaxis_title="steps stored for the game",
        yaxis_title="episode return",
        height=320,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        uirevision=g.game_id,  # keep a reader's zoom across refreshes
    )
    return dcc.Graph(figure=fig, id=f"live-{slug(g.game_id)}", config={"displaylogo": False})


def release(g: GameView) -> html.Div:
    s = slug(g.game_id)
    if g.release is None:
        return html.Div(html.P("No release state yet: clients play the newest published version."), id=f"release-{s}")
    r = g.release
    candidate = "none" if r.candidate is None else f"v{r.candidate} for {r.share:.0%} of clients"
    judge = (g.trainer or {}).get("judge") or "-"
    head = ["revision", "at", "by", "action", "why"]
    rows = [html.Tr([html.Td(str(c.revision)), html.Td(c.at), html.Td(c.by), html.Td(c.action), html.Td(c.why)])
            for c in g.history]  # fmt: skip
    return html.Div(
        [
            html.H3("Release"),
            html.P(
                f"stable v{r.stable} · candidate {candidate} · {'pinned' if r.pinned else 'not pinned'} · "
                f"judge: {judge}",
                id=f"release-state-{s}",
            ),
            table(head, rows, f"history-{s}"),
        ],
        id=f"release-{s}",
    )


# ----------------------------------------------------------------------------------------- ingest, rejects


def ingest(snap: Snapshot) -> html.Section:
    rows = [
        html.Tr(
            [html.Td(g.game_id), html.Td(f"{g.stored:,}"), html.Td(f"{g.retained:,}"), html.Td(rate(g.steps_per_s))],
            id=f"ingest-{slug(g.game_id)}",
        )
        for g in snap.games
    ]
    job = snap.ingest
    if job is None:
        status = html.P("The ingest job has not reported yet (it writes ingest/status.json).", id="ingest-job")
    else:
        lag = job.get("lag_max_s_since_last")
        age = snap.at - job.get("updated_at", snap.at)
        state = "stopped" if job.get("stopped") else f"reported {age:.0f} s ago"
        if not job.get("stopped") and age > STALE_REPORTS * job.get("every_s", 0):  # a running job reports anyway
            state += f" (it reports every {job.get('every_s', 0):g} s while it runs: is it running?)"
        if job.get("last_batch"):
            state += f"; last batch {snap.at - job['last_batch']['visible_at']:.0f} s ago"
        status = html.P(
            f"job {job.get('job_id', '?')}: {job.get('batches', 0):,} batches, {job.get('records', 0):,} records, "
            f"{job.get('stored', 0):,} rows stored; lag from arrival in the stream to stored, at most "
            f"{'-' if lag is None else f'{lag:.2f} s'} over its last {job.get('every_s', 0):g} s; {state}",
            id="ingest-job",
        )
    return html.Section(
        [html.H2("Ingest"), status, table(["game", "stored", "retained", "stored/s"], rows, "ingest-games")],
        id="ingest",
    )


def dead_letters(snap: Snapshot) -> html.Section:
    report = snap.dead_letters
    if not report.counts:
        return html.Section([html.H2("Dead letters"), html.P("None.", id="no-dead-letters")], id="dead-letters")
    rows = [
        html.Tr(
            [
                html.Td(kind),
                html.Td(str(n), className="count"),
                html.Td([html.Div(str(d.get("error", "")), className="sample") for d in report.samples[kind]]),
            ],
            id=f"dead-{slug(kind)}",
        )
        for kind, n in report.counts.most_common()
    ]
    return html.Section(
        [
            html.H2("Dead letters"),
            html.P(f"{sum(report.counts.values()):,} records in {report.objects:,} objects", className="muted"),
            table(["reason", "records", "samples"], rows, "dead-letter-counts"),
        ],
        id="dead-letters",
    )


# ------------------------------------------------------------------------------------------------ pieces


def table(head: list[str], rows: list, table_id: str) -> html.Table:
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], id=table_id)


def live_text(v: VersionView) -> str:
    return f"{v.mean_return:.1f} ± {v.std_return:.1f} (n={v.episodes})"


def trainer_state(g: GameView) -> str:
    if g.trainer is None:
        return "not running"
    restarts = g.trainer.get("restarts", 0)
    return f"{g.trainer.get('state', '?')}, {g.trainer.get('updates', 0):,} updates" + (
        f", {restarts} restarts" if restarts else ""
    )


def rate(per_s: float | None) -> str:
    return "-" if per_s is None else f"{per_s:,.1f}"
