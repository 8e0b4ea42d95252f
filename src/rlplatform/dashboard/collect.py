"""What the dashboard shows, read from the bucket and the store (never a stage's own files) into a
``Snapshot`` every refresh.

Cheap to run beside a large store: live returns are counted from the steps stored since the last refresh
(``store.live.GameLive``), dead letters from the objects written since (``read_dead_letters`` with the last report),
and what never changes once written (manifests, release history entries) is read once. Cheap on S3 too: a LIST
costs 12 GETs and lists what rarely changes, so the catalog, a game's versions and the dead letters are listed at
most every ``list_s``, and at once when a GET made anyway says they changed (the trainer's status names a new
version, the release state or the latest pointer moved, ingest's status counts new rejects). A source that fails
(bucket or store unreachable) leaves what was last read in place and puts its error on the page; the next
refresh tries again, so the page recovers by itself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlplatform import registry
from rlplatform.games import GameCatalog, GameSpec
from rlplatform.infra import aws
from rlplatform.ingest.dead_letters import DeadLetterReport, read_dead_letters
from rlplatform.ingest.status import read_ingest_status
from rlplatform.registry.report import read_manifest
from rlplatform.release.state import Change, history_key, peek_release
from rlplatform.settings import DEFAULT_DASHBOARD_LIST_S, Settings
from rlplatform.store import ExperienceStore, open_store, store_endpoint
from rlplatform.store.live import GameLive, SeriesPoint
from rlplatform.train.status import read_status
from rlplatform_client.models import MODEL_PREFIX, ModelError, ModelManifest
from rlplatform_client.releases import ReleaseState

log = logging.getLogger(__name__)

# A version is ranked, and a game is ranked by it, once it played this many finished episodes.
RANK_MIN_EPISODES = 10
HISTORY_SHOWN = 10
DEAD_LETTER_SAMPLES = 3


@dataclass(frozen=True)
class VersionView:
    version: int  # 0: play before any model
    role: str  # "stable", "candidate" or ""
    eval_return: float | None  # the simulator's greedy evaluation at publish, where the game has one
    published_at: str | None
    episodes: int
    mean_return: float
    std_return: float
    mean_length: float
    series: list[SeriesPoint]


@dataclass(frozen=True)
class GameView:
    game_id: str
    spec: str  # observation and action space, in words
    algorithm: str | None
    trainer: dict[str, Any] | None  # the training service's status document
    updates_per_s: float | None
    versions: list[VersionView]
    release: ReleaseState | None
    history: list[Change]  # the newest HISTORY_SHOWN, newest first
    stored: int  # ever stored
    retained: int
    steps_per_s: float | None  # stored per second, over the last refresh
    problems: list[str]  # what is wrong with this game, in words

    @property
    def ranked(self) -> tuple[VersionView, VersionView] | None:
        """(baseline, newest): the oldest and the newest version with ``RANK_MIN_EPISODES`` played, once there are
        two such versions."""
        played = [v for v in self.versions if v.episodes >= RANK_MIN_EPISODES]
        return (played[0], played[-1]) if len(played) >= 2 else None

    @property
    def lift(self) -> float | None:
        """How much better the newest version plays than the oldest, in the oldest's standard deviations."""
        if self.ranked is None:
            return None
        baseline, newest = self.ranked
        return (newest.mean_return - baseline.mean_return) / max(baseline.std_return, 1e-9)


@dataclass(frozen=True)
class Snapshot:
    seq: int  # one more per refresh
    at: float
    bucket: str
    store: str
    games: list[GameView]  # ranked: the best lift first, games without enough play last
    ingest: dict[str, Any] | None  # the ingest job's status document
    dead_letters: DeadLetterReport
    errors: dict[str, str]  # source ("bucket", "store") -> what went wrong on the last refresh
    refresh_s: float  # what the last refresh took


@dataclass
class _Game:
    live: GameLive
    spec: GameSpec | None = None
    manifests: dict[int, ModelManifest | None] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)
    trainer: dict[str, Any] | None = None
    updates_per_s: float | None = None
    release: ReleaseState | None = None
    history: dict[int, Change] = field(default_factory=dict)
    pointer_error: str | None = None
    # What the last listing of the versions saw: the trainer's newest version, the release revision, the pointer.
    seen: tuple = ()
    pointer: str | None = None  # the sha256 the pointer named when its model was last checked ("broken": unreadable)
    stored: int = 0
    retained: int = 0
    stored_at: float | None = None
    steps_per_s: float | None = None


class Collector:
    """Reads the bucket and the store the settings name; ``refresh`` makes the next ``Snapshot``."""

    def __init__(
        self,
        settings: Settings,
        store_factory: Callable[[Settings], ExperienceStore] = open_store,
        clock: Callable[[], float] = time.time,
        list_s: float = DEFAULT_DASHBOARD_LIST_S,
    ) -> None:
        self.settings = settings
        self.store_factory = store_factory
        self.clock = clock
        self.list_s = list_s
        self.catalog = GameCatalog(settings.bucket, wait=False, recheck_s=list_s, clock=clock)
        self._store: ExperienceStore | None = None
        self._games: dict[str, _Game] = {}
        self._ingest: dict[str, Any] | None = None
        self._dead = DeadLetterReport()
        self._rejects_seen: tuple = ()
        self._listed_at: dict[str, float] = {}
        self._seq = 0

    def refresh(self) -> Snapshot:
        started = self.clock()
        errors = {}
        for source, read in (("bucket", self._read_bucket), ("store", self._read_store)):
            try:
                read()
            except Exception as exc:  # shown on the page; the next refresh tries again
                errors[source] = describe(exc)
                log.warning("dashboard: %s: %s", source, errors[source])
                if source == "store":
                    self.close()
        self._seq += 1
        now = self.clock()
        return Snapshot(
            seq=self._seq,
            at=now,
            bucket=self.settings.bucket,
            store=f"{self.settings.store} at {store_endpoint(self.settings)}",
            games=rank([self._view(game_id, g) for game_id, g in self._games.items()]),
            ingest=self._ingest,
            # A copy: the next refresh adds to the report while pages may still be drawing this one.
            dead_letters=DeadLetterReport(
                Counter(self._dead.counts), {k: list(v) for k, v in self._dead.samples.items()}, self._dead.objects
            ),
            errors=errors,
            refresh_s=now - started,
        )

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            try:
                store.close()
            except Exception as exc:  # a store that went away may fail to close too
                log.debug("dashboard: closing the store: %s", exc)

    # ------------------------------------------------------------------------------------------- the bucket

    def _read_bucket(self) -> None:
        bucket = self.settings.bucket
        if self._due("games"):
            ids = set(self.catalog.declared_ids()) | _games_with_models(bucket)
            for game_id in ids:
                self._games.setdefault(game_id, _Game(GameLive(game_id)))
            for gone in set(self._games) - ids:  # its declaration and models were deleted
                del self._games[gone]
            self._listed("games")
        for game_id, g in sorted(self._games.items()):
            if g.spec is None:
                g.spec = self.catalog.declared(game_id)
            self._read_trainer(game_id, g)
            self._read_models(game_id, g)
        self._ingest = read_ingest_status(bucket)
        job = self._ingest or {}
        rejects = (job.get("job_id"), sum(job.get("rejected", {}).values()))
        if self._due("dead-letters", changed=rejects != self._rejects_seen):
            self._dead = read_dead_letters(bucket, DEAD_LETTER_SAMPLES, self._dead)
            self._rejects_seen = rejects
            self._listed("dead-letters")

    def _read_models(self, game_id: str, g: _Game) -> None:
        bucket = self.settings.bucket
        g.release = peek_release(bucket, game_id)
        try:
            manifest = registry.latest_manifest(bucket, game_id)
            pointer = None if manifest is None else manifest.sha256
        except ModelError as exc:
            manifest, pointer = None, "broken"
            g.pointer_error = f"the latest pointer is broken: {exc}"
        seen = ((g.trainer or {}).get("version"), None if g.release is None else g.release.revision, pointer)
        listing = f"versions/{game_id}"
        due = self._due(listing, changed=seen != g.seen)
        if due:
            g.versions = registry.published_versions(bucket, game_id)
            for version in g.versions:
                if g.manifests.get(version) is None:  # a manifest never changes once written
                    g.manifests[version] = read_manifest(bucket, game_id, version)
        if pointer != "broken" and (due or pointer != g.pointer):  # the model named: it may have been deleted
            try:
                if manifest is not None:
                    registry.check_model(bucket, manifest)
                g.pointer_error = None
            except ModelError as exc:
                g.pointer_error = f"the latest pointer is broken: {exc}"
        g.pointer = pointer
        if due:
            g.seen = seen
            self._listed(listing)
        if g.release is not None:
            for revision in range(max(1, g.release.revision - HISTORY_SHOWN + 1), g.release.revision + 1):
                if revision not in g.history and (body := aws.object_or_none(bucket, history_key(game_id, revision))):
                    g.history[revision] = Change(**json.loads(body))
            g.history = {r: c for r, c in g.history.items() if r > g.release.revision - HISTORY_SHOWN}

    def _due(self, listing: str, changed: bool = False) -> bool:
        """Whether to make ``listing`` now: it changed, was never made, or was made ``list_s`` ago."""
        at = self._listed_at.get(listing)
        return changed or at is None or self.clock() - at >= self.list_s

    def _listed(self, listing: str) -> None:
        self._listed_at[listing] = self.clock()

    def _read_trainer(self, game_id: str, g: _Game) -> None:
        before, g.trainer = g.trainer, read_status(self.settings.bucket, game_id)
        if before and g.trainer and g.trainer.get("updated_at", 0) > before.get("updated_at", 0):
            dt = g.trainer["updated_at"] - before["updated_at"]
            g.updates_per_s = (g.trainer.get("updates", 0) - before.get("updates", 0)) / dt
        elif g.trainer is None or g.trainer.get("state") != "running":
            g.updates_per_s = None

    # -------------------------------------------------------------------------------------------- the store

    def _read_store(self) -> None:
        if self._store is None:
            self._store = self.store_factory(self.settings)
        now = self.clock()
        for g in self._games.values():
            stored, retained = self._store.written(g.live.game_id), self._store.count(g.live.game_id)
            if g.stored_at is not None and now > g.stored_at:
                g.steps_per_s = (stored - g.stored) / (now - g.stored_at)
            g.stored, g.retained, g.stored_at = stored, retained, now
            g.live.update(self._store, now)

    # ------------------------------------------------------------------------------------------- the views

    def _view(self, game_id: str, g: _Game) -> GameView:
        role = {}
        if g.release is not None:
            role[g.release.stable] = "stable"
            if g.release.candidate is not None:
                role[g.release.candidate] = "candidate"
        versions = []
        for v in sorted({*g.versions, *g.live.versions}):
            live, manifest = g.live.versions.get(v), g.manifests.get(v)
            versions.append(
                VersionView(
                    version=v,
                    role=role.get(v, ""),
                    eval_return=None if manifest is None else manifest.eval_return,
                    published_at=None if manifest is None else manifest.created_at,
                    episodes=0 if live is None else live.episodes,
                    mean_return=math.nan if live is None else live.mean,
                    std_return=math.nan if live is None else live.std,
                    mean_length=math.nan if live is None else live.mean_length,
                    series=[] if live is None else live.points(g.live.at_step),
                )
            )
        problems = []
        if not g.versions:
            problems.append("no model published yet")
        if g.pointer_error:
            problems.append(g.pointer_error)
        if g.trainer is None:
            problems.append("no training service has run this game")
        elif g.trainer.get("error"):
            problems.append(f"trainer {g.trainer.get('state')}: {g.trainer['error']}")
        algorithm = (g.trainer or {}).get("algorithm") or next(
            (m.algorithm for m in reversed(g.manifests.values()) if m is not None), None
        )
        return GameView(
            game_id=game_id,
            spec=describe_spec(g.spec),
            algorithm=algorithm,
            trainer=g.trainer,
            updates_per_s=g.updates_per_s,
            versions=versions,
            release=g.release,
            history=[g.history[r] for r in sorted(g.history, reverse=True)],
            stored=g.stored,
            retained=g.retained,
            steps_per_s=g.steps_per_s,
            problems=problems,
        )


def rank(games: list[GameView]) -> list[GameView]:
    """The games by how much better their newest versions play than their first (``GameView.lift``), best first;
    those without two versions' worth of play after them, by id."""
    return sorted(games, key=lambda g: (g.lift is None, -(g.lift or 0.0), g.game_id))


def describe_spec(spec: GameSpec | None) -> str:
    if spec is None:
        return "not declared in the catalog"
    actions = (
        f"{spec.n_actions} discrete actions"
        if spec.discrete
        else f"{len(spec.action_low)}-dimensional continuous actions"
    )
    simulator = f", simulator {spec.simulator}" if spec.simulator else ""
    return f"{spec.obs_dim} observations, {actions}{simulator}"


def describe(exc: BaseException) -> str:
    """One line for the page: the error's type and message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _games_with_models(bucket: str) -> set[str]:
    pages = (
        aws.s3_client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=f"{MODEL_PREFIX}/", Delimiter="/")
    )
    return {p["Prefix"][len(MODEL_PREFIX) + 1 : -1] for page in pages for p in page.get("CommonPrefixes", [])}
