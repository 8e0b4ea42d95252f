"""``rlplatform dashboard`` in a real browser (headless Chromium through Selenium).

First against the embedded stack ``up`` runs, with two games: the page shows both, their versions and the live
returns their clients played, follows a newly published version and a poison record's dead letter. Then on its
own, against a bucket and a store it reaches through forwarders a test can cut: an empty catalog, a game without
models, a broken pointer and an unreachable bucket and store each show on the page, and the page recovers by
itself when they come back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from rlplatform import registry
from rlplatform.games import GameCatalog, game_spec
from rlplatform.infra import aws, processes
from rlplatform.settings import Settings, settings_env
from rlplatform.stack.launcher import LaunchConfig, Stack
from rlplatform.store import open_store
from rlplatform_client.models import latest_key
from tests import browser
from tests.support import port_open, running, started_stack, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
CARTPOLE, PENDULUM = "CartPole-v1", "Pendulum-v1"


def text_of(driver, element_id: str) -> str | None:
    """The element's text as the browser shows it, or None while the page has no such element."""
    try:
        return driver.find_element(By.ID, element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def shown_versions(driver, game: str) -> dict[int, str]:
    """The rows of the game's versions table, by version."""
    try:
        rows = driver.find_elements(By.CSS_SELECTOR, f"#versions-{game.replace('.', '_')} tbody tr")
        return {int(row.get_attribute("id").rsplit("-", 1)[1]): row.text for row in rows}
    except StaleElementReferenceException:
        return {}


def episodes_in(row: str) -> int:
    """The ``n=`` of a versions-table row's live return (0 when none is shown)."""
    match = re.search(r"\(n=(\d+)\)", row)
    return int(match.group(1)) if match else 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    cfg = LaunchConfig(
        targets={CARTPOLE: 1000.0, PENDULUM: 0.0},
        clients=1,
        client_steps_per_second=200,
        publish_every_updates=100,
        learning_starts=300,
        dashboard_port=0,
    )
    with started_stack(cfg, tmp_path / "run") as s:
        yield s


def test_the_page_follows_two_games_new_versions_and_dead_letters(stack: Stack) -> None:
    bucket = stack.settings.bucket
    port = urlsplit(stack.dashboard_url).port
    wait_for(lambda: port_open(port), 60, "the dashboard to listen", stack.check_alive)
    with browser.chromium() as driver:
        driver.get(stack.dashboard_url)
        # Both games, each with a published version and live returns of the play before any model (v0).
        wait_for(
            lambda: all(1 in (v := shown_versions(driver, g)) and episodes_in(v.get(0, "")) > 0 for g in (CARTPOLE,
                        PENDULUM)),
            300, "both games with a published version and live returns on the page", stack.check_alive,
        )  # fmt: skip
        ranking = text_of(driver, "ranking") or ""
        assert CARTPOLE in ranking and PENDULUM in ranking
        assert "simulator CartPole-v1" in (text_of(driver, "game-CartPole-v1") or "")
        assert text_of(driver, "no-dead-letters") == "None."
        # Ingest's own report: rows stored and a lag from arrival in the stream to the store.
        wait_for(lambda: re.search(r"at most \d+\.\d+ s", text_of(driver, "ingest-job") or ""), 60, "ingest's lag")

        # What the page shows is what the bucket and the store hold.
        with open_store(stack.settings) as store:
            shown = shown_versions(driver, CARTPOLE)
            live = store.live_returns(CARTPOLE)
        assert set(shown) - {0} <= set(registry.published_versions(bucket, CARTPOLE))
        # Its release: every version the trainer published became stable (no canary share), as the history says.
        assert re.match(r"stable v\d+ · candidate none", text_of(driver, "release-state-CartPole-v1") or "")
        assert re.search(r"trainer publish v\d+ published", text_of(driver, "history-CartPole-v1") or "")
        for version, row in shown.items():  # counted up to a refresh ago: never more than the store holds now
            assert episodes_in(row) <= (live[version].episodes if version in live else 0), (version, row)

        # The trainer publishes a newer version: the page shows it without a reload.
        newest = max(shown)
        wait_for(
            lambda: max(shown_versions(driver, CARTPOLE), default=0) > newest,
            180, "a newer CartPole version on the page", stack.check_alive,
        )  # fmt: skip
        assert max(shown_versions(driver, CARTPOLE)) in registry.published_versions(bucket, CARTPOLE)

        # A poison record: its dead letter shows under its reason, counted once.
        boto3.client("kinesis").put_record(StreamName=stack.settings.stream_name, Data=b"\xff poison", PartitionKey="p")
        wait_for(lambda: text_of(driver, "dead-not_json") is not None, 120, "the dead letter on the page")
        row = driver.find_element(By.ID, "dead-not_json")
        assert row.find_element(By.CLASS_NAME, "count").text == "1"
        assert text_of(driver, "no-dead-letters") is None
        path = browser.screenshot(driver, "dashboard-two-games")
    assert path.stat().st_size > 0


# ------------------------------------------------------------------------------------- bad states, recovery


@pytest.fixture
def dashboard_env(cassandra_settings: Settings) -> Iterator[tuple[dict[str, str], TcpProxy, TcpProxy, str]]:
    """A moto server and the session's Cassandra, each behind a forwarder the test can cut: the dashboard's
    environment, the two forwarders and the bucket."""
    moto = aws.MotoServer.start()
    s3_proxy = TcpProxy(int(moto.endpoint.rsplit(":", 1)[1]))
    cassandra = cassandra_settings.cassandra
    store_proxy = TcpProxy(cassandra.port)
    try:
        moto.apply_env()
        settings = cassandra_settings.model_copy(
            update={"cassandra": cassandra.model_copy(update={"port": store_proxy.port, "keyspace": "dashboard"})}
        )
        aws.bootstrap(settings)
        env = settings_env(settings, moto.env()) | {"AWS_ENDPOINT_URL": s3_proxy.endpoint}
        yield env, s3_proxy, store_proxy, settings.bucket
    finally:
        s3_proxy.cut()
        store_proxy.cut()
        moto.restore_env()
        moto.stop()


@pytest.fixture
def dashboard(dashboard_env, tmp_path: Path) -> Iterator[str]:
    """The address of ``rlplatform dashboard`` running against ``dashboard_env``, refreshing and listing every
    second."""
    env, _, _, _ = dashboard_env
    port = aws.free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    argv = [sys.executable, "-m", "rlplatform", "dashboard", "--port", str(port), "--refresh-seconds", "1"]
    argv += ["--list-seconds", "1"]  # a game declared: seen within a second
    proc = processes.spawn(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 60, "the dashboard to listen", running({"dashboard": proc}))
        yield f"http://127.0.0.1:{port}/"
        assert proc.poll() is None, "the dashboard exited"
    finally:
        processes.stop(proc, 30)
        log.close()


def test_bad_states_show_on_the_page_and_the_page_recovers(dashboard_env, dashboard) -> None:
    _, s3_proxy, store_proxy, bucket = dashboard_env
    with browser.chromium() as driver:
        driver.get(dashboard)
        wait_for(lambda: text_of(driver, "no-games"), 60, "the empty catalog's message")

        GameCatalog(bucket, wait=False).register(game_spec(CARTPOLE))
        wait_for(
            lambda: "no model published yet" in (text_of(driver, "game-CartPole-v1") or ""), 60, "a game without models"
        )
        s3 = boto3.client("s3")
        s3.put_object(Bucket=bucket, Key=latest_key(CARTPOLE), Body=b"{not a manifest")
        wait_for(
            lambda: "latest pointer is broken" in (text_of(driver, "game-CartPole-v1") or ""), 60, "the broken pointer"
        )
        assert text_of(driver, "errors") is None

        s3_proxy.cut()
        store_proxy.cut()
        wait_for(lambda: text_of(driver, "error-bucket") and text_of(driver, "error-store"), 90, "both sources' errors")
        assert "bucket unreachable" in text_of(driver, "error-bucket")
        assert "store unreachable" in text_of(driver, "error-store")
        # What was read before stays on the page meanwhile.
        assert "latest pointer is broken" in (text_of(driver, "game-CartPole-v1") or "")
        browser.screenshot(driver, "dashboard-unreachable")

        s3_proxy.restore()
        store_proxy.restore()
        wait_for(lambda: text_of(driver, "errors") is None, 120, "the page to recover")
        s3.put_object(Bucket=bucket, Key=latest_key(CARTPOLE), Body=b"")
        s3.delete_object(Bucket=bucket, Key=latest_key(CARTPOLE))
        wait_for(
            lambda: "latest pointer" not in (text_of(driver, "game-CartPole-v1") or "x"), 60, "fresh reads after it"
        )
