"""The dashboard's reading (``dashboard.collect``) against moto and a SQLite store, and its token guard."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rlplatform.dashboard.bench import CountingStore, counted_s3_requests
from rlplatform.dashboard.collect import Collector, GameView, Snapshot, VersionView, rank
from rlplatform.dashboard.page import VERSIONS_SHOWN, build_app, ingest, page, shown_versions, versions_table
from rlplatform.dashboard.server import TOKEN_COOKIE, loopback, require_token
from rlplatform.games import GameCatalog, game_spec
from rlplatform.ingest.dead_letters import DeadLetterReport, read_dead_letters
from rlplatform.ingest.status import INGEST_STATUS_KEY
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store.live import MAX_POINTS, SERIES_GROUP, GameLive, VersionLive
from rlplatform.store.sqlite import SqliteStore
from rlplatform.train.status import status_key
from rlplatform_client.models import ModelManifest, latest_key, publish_model
from tests.contract.test_store_contract import episode
from tests.support import SIGNING_KEY, Clock

GAME = "CartPole-v1"
BUCKET = "rlp-models"


class KeptOpen(CountingStore):
    """The test's store, counted; the collector's ``close`` (it closes a store that failed) leaves it open."""

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path):
    with SqliteStore(tmp_path / "s.sqlite") as s:
        yield KeptOpen(s)


def collector(
    tmp_path: Path,
    store: KeptOpen | None = None,
    bucket: str = BUCKET,
    list_s: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> Collector:
    """A collector of the test's bucket and store; listing at every refresh unless ``list_s`` says otherwise."""
    settings = Settings(bucket=bucket, sqlite=SqliteSettings(path=tmp_path / "s.sqlite"))
    factory = (lambda _: store) if store else SqliteStore.from_settings
    return Collector(settings, store_factory=factory, clock=clock, list_s=list_s)


def publish(s3, version: int, eval_return: float | None = None, pointer: bool = True) -> None:
    manifest = ModelManifest.create(
        GAME, version, b"onnx", algorithm="DQN", learner_step=100 * version,
        observation_space={"type": "box", "shape": [4], "dtype": "float32"},
        action_space={"type": "discrete", "n": 2}, eval_return=eval_return,
    )  # fmt: skip
    publish_model(s3, BUCKET, manifest, b"onnx", SIGNING_KEY, pointer=pointer)


def versions(view: GameView) -> dict[int, VersionView]:
    return {v.version: v for v in view.versions}


def test_live_returns_are_counted_once_per_step_and_match_the_store(s3, store, tmp_path: Path) -> None:
    GameCatalog(BUCKET, wait=False).register(game_spec(GAME))
    publish(s3, 1, eval_return=42.0)
    for n in (10, 14):
        store.write(GAME, episode(n, version=0, reward=1.0))
    store.write(GAME, episode(30, version=1, reward=0.5))
    c = collector(tmp_path, store)

    (game,) = c.refresh().games
    shown = versions(game)
    assert game.problems == ["no training service has run this game"]
    assert (shown[0].episodes, shown[0].mean_return, shown[0].std_return) == (2, 12.0, 2.0)
    assert (shown[1].episodes, shown[1].mean_return, shown[1].eval_return) == (1, 15.0, 42.0)
    assert game.stored == game.retained == 54 and store.steps_read == 54

    open_episode = episode(20, version=1, reward=1.0)
    store.write(GAME, open_episode[:12])  # an episode in two chunks, across a refresh
    c.refresh()
    store.write(GAME, open_episode[12:])
    (game,) = c.refresh().games
    assert store.steps_read == 74  # each step read once, whatever the number of refreshes
    live = store.live_returns(GAME)
    for version, view in versions(game).items():
        assert (view.episodes, view.mean_return) == (live[version].episodes, pytest.approx(live[version].mean_return))
        assert view.std_return == pytest.approx(live[version].std_return)
    assert versions(game)[1].series[-1].episodes == 2  # the group still filling is the curve's last point


def test_bad_states_are_named_and_what_was_read_stays(s3, store, tmp_path: Path) -> None:
    c = collector(tmp_path, store)
    snap = c.refresh()
    assert snap.games == [] and snap.errors == {}
    empty = json.dumps(page(snap), default=lambda o: o.to_plotly_json())
    assert "no-games" in empty and "rlplatform games register" in empty  # a command that exists

    GameCatalog(BUCKET, wait=False).register(game_spec(GAME))
    (game,) = c.refresh().games
    assert "no model published yet" in game.problems

    publish(s3, 1)
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=b"{broken")
    (game,) = c.refresh().games
    assert any(p.startswith("the latest pointer is broken") for p in game.problems)

    c.settings = c.settings.model_copy(update={"bucket": "no-such-bucket"})
    c.store_factory = lambda _: (_ for _ in ()).throw(ConnectionRefusedError("store down"))
    c.close()
    snap = c.refresh()
    assert set(snap.errors) == {"bucket", "store"} and "NoSuchBucket" in snap.errors["bucket"]
    assert snap.errors["store"] == "ConnectionRefusedError: store down"
    assert [g.game_id for g in snap.games] == [GAME]  # the last read stays on the page

    c.settings = c.settings.model_copy(update={"bucket": BUCKET})
    c.store_factory = lambda _: store
    assert c.refresh().errors == {}

    for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]:
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    assert c.refresh().games == []  # its declaration and models deleted: it leaves the page


def test_games_rank_by_how_much_better_their_newest_version_plays() -> None:
    def game(game_id: str, returns: dict[int, tuple[float, float, int]]) -> GameView:
        views = [VersionView(v, "", None, None, n, m, s, 1.0, []) for v, (m, s, n) in returns.items()]
        return GameView(game_id, "", None, None, None, views, None, [], 0, 0, None, [])

    better = game("b", {0: (10.0, 5.0, 50), 1: (60.0, 5.0, 10)})  # +10 sd
    worse = game("a", {0: (-1000.0, 100.0, 50), 1: (-900.0, 100.0, 50), 2: (0.0, 1.0, 3)})  # v2 unranked: +1 sd
    unplayed = game("c", {0: (0.0, 1.0, 50), 1: (5.0, 1.0, 9)})  # one version played enough: nothing to compare
    assert [g.game_id for g in rank([unplayed, worse, better])] == ["b", "a", "c"]
    assert worse.lift == pytest.approx(1.0) and unplayed.lift is None


def test_dead_letters_are_read_once_per_object(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="dead-letters/a.jsonl", Body=b'{"kind": "not_json", "error": "x"}')
    report = read_dead_letters(BUCKET)
    s3.put_object(Bucket=BUCKET, Key="dead-letters/b.jsonl", Body=b'{"kind": "not_json"}\n{"kind": "too_large"}')
    report = read_dead_letters(BUCKET, report=report)
    assert report.counts == {"not_json": 2, "too_large": 1} and report.objects == 2
    assert read_dead_letters(BUCKET, report=report).counts == {"not_json": 2, "too_large": 1}


def test_off_loopback_every_request_needs_the_token(s3, tmp_path: Path) -> None:
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost") and not loopback("0.0.0.0")
    snap = collector(tmp_path).refresh()
    app = build_app(lambda: snap, 5.0)
    require_token(app.server, "s3cret")
    client = app.server.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    moved = client.get("/?token=s3cret")
    assert moved.status_code == 302 and "token" not in moved.headers["Location"]
    assert f"{TOKEN_COOKIE}=s3cret" in moved.headers["Set-Cookie"] and "HttpOnly" in moved.headers["Set-Cookie"]
    assert client.get("/_dash-layout").status_code == 200  # the cookie now carries it


def test_a_long_played_version_keeps_a_bounded_curve_with_the_same_statistics() -> None:
    rng = np.random.default_rng(0)
    returns = rng.normal(100.0, 15.0, size=SERIES_GROUP * MAX_POINTS * 3)
    live = VersionLive(1)
    for i, r in enumerate(returns):
        live.add(float(r), 10, at_step=10 * (i + 1))
    points = live.points(at_step=10 * len(returns))
    assert len(points) <= MAX_POINTS and sum(p.episodes for p in points) == len(returns)
    assert [p.at_step for p in points] == sorted(p.at_step for p in points)
    # Each point is still the mean and spread of exactly the episodes it covers.
    start = 0
    for p in points:
        covered = returns[start : start + p.episodes]
        assert p.mean == pytest.approx(covered.mean()) and p.std == pytest.approx(covered.std())
        start += p.episodes
    assert (live.mean, live.std) == (pytest.approx(returns.mean()), pytest.approx(returns.std()))


def test_game_live_counts_what_the_store_counts_reading_each_step_once(store) -> None:
    """``up`` judges a game without a simulator by these: the same episodes as ``store.live_returns``."""
    live = GameLive(GAME)
    for batch in (episode(10, version=0, reward=1.0), episode(7, version=2, reward=0.5, ended="truncated")):
        store.write(GAME, batch)
    live.update(store, now=0.0)
    store.write(GAME, episode(5, version=2, reward=9.0, start_t=3))  # steps 0..2 missing: not whole
    store.write(GAME, episode(30, version=2, reward=1.5))
    assert live.update(store, now=1.0) == 35 and live.update(store, now=2.0) == 0
    expected = store.live_returns(GAME)
    assert live.returns().keys() == expected.keys() == {0, 2}
    for version, got in live.returns().items():
        want = expected[version]
        assert (got.episodes, got.mean_length) == (want.episodes, want.mean_length)
        assert (got.mean_return, got.std_return) == (pytest.approx(want.mean_return), pytest.approx(want.std_return))


def test_the_page_shows_v0_the_release_and_the_newest_versions() -> None:
    versions = [VersionView(v, {1: "stable", 3: "candidate"}.get(v, ""), None, None, 0, 0.0, 0.0, 0.0, [])
                for v in range(40)]  # fmt: skip
    game = GameView(GAME, "", None, None, None, versions, None, [], 0, 0, None, [])
    expected = [0, 1, 3, *range(40 - VERSIONS_SHOWN, 40)]
    assert [v.version for v in shown_versions(game)] == expected
    rendered = json.dumps(versions_table(game), default=lambda o: o.to_plotly_json())
    assert f"{40 - len(expected)} older versions not shown" in rendered


@pytest.mark.parametrize(
    ("reported_s_ago", "stopped", "says"),
    [
        (5, False, "reported 5 s ago; last batch 40 s ago"),  # idle: its heartbeat keeps the report fresh
        (31, False, "reported 31 s ago (it reports every 10 s while it runs: is it running?); last batch 40 s ago"),
        (31, True, "stopped; last batch 40 s ago"),
    ],
)
def test_the_ingest_panel_tells_an_idle_job_from_one_that_stopped_reporting(
    reported_s_ago: float, stopped: bool, says: str
) -> None:
    now = 10_000.0
    job = {"job_id": "j", "updated_at": now - reported_s_ago, "every_s": 10.0, "stopped": stopped,
           "last_batch": {"visible_at": now - 40}}  # fmt: skip
    snap = Snapshot(1, now, BUCKET, "sqlite", [], job, DeadLetterReport(), {}, 0.0)
    rendered = json.dumps(ingest(snap), default=lambda o: o.to_plotly_json())
    assert says in rendered


def test_listings_wait_for_their_period_unless_a_read_says_they_changed(s3, store, tmp_path: Path) -> None:
    """A LIST costs 12 GETs: an idle refresh makes none; a new version or new rejects are listed at once."""
    clock = Clock(1_000.0)
    GameCatalog(BUCKET, wait=False).register(game_spec(GAME))
    publish(s3, 1)
    c = collector(tmp_path, store, list_s=60.0, clock=clock)
    with counted_s3_requests() as requests:
        c.refresh()
        assert requests["ListObjectsV2"] == 4  # catalog, games with models, the game's versions, dead letters
        requests.clear()
        clock.now += 5
        c.refresh()
        # The game's release state, trainer status and pointer, and ingest's status: all GETs.
        assert dict(requests) == {"GetObject": 4}

        publish(s3, 2, pointer=False)  # a version the release has not moved to: only the trainer's status says so
        s3.put_object(Bucket=BUCKET, Key=status_key(GAME), Body=json.dumps({"state": "running", "version": 2}))
        clock.now += 5
        requests.clear()
        (game,) = c.refresh().games
        assert 2 in versions(game) and requests["ListObjectsV2"] == 1

        s3.put_object(Bucket=BUCKET, Key="dead-letters/x.jsonl", Body=b"")
        job = {"job_id": "j", "rejected": {"not_json": 1}}
        s3.put_object(Bucket=BUCKET, Key=INGEST_STATUS_KEY, Body=json.dumps(job))
        clock.now += 5
        requests.clear()
        c.refresh()
        assert requests["ListObjectsV2"] == 1  # ingest counted a reject: the dead letters are listed

        clock.now += 60
        requests.clear()
        c.refresh()
        assert requests["ListObjectsV2"] == 4  # the period passed: everything is listed again
