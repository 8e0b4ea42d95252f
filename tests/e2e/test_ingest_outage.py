"""Kinesis unreachable for 30 s mid-stream: the ingest job waits, says so in its log, and catches up."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rlplatform.bench.ingest import IngestJob
from rlplatform.infra import aws
from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store.sqlite import SqliteStore
from tests.e2e.test_ingest_dead_letters import good_record, put
from tests.support import wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
OUTAGE_S = 30.0


def test_ingest_waits_out_an_unreachable_endpoint_and_loses_nothing(tmp_path: Path) -> None:
    settings = Settings(sqlite=SqliteSettings(path=tmp_path / "s.sqlite"))
    moto = aws.MotoServer.start()
    job, proxy = None, None
    try:
        moto.apply_env()
        aws.bootstrap(settings)
        proxy = TcpProxy(moto.port)
        # The job reaches AWS only through the proxy; the test itself talks to moto directly.
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": proxy.endpoint,
            "RLP_SQLITE_PATH": str(settings.sqlite.path),
            "RLP_INGEST_TRIGGER_SECONDS": "0.2",
        }
        log = tmp_path / "ingest.log"
        job = IngestJob(tmp_path / "ckpt", tmp_path / "metrics.jsonl", env, log)
        job.start()
        with SqliteStore(settings.sqlite.path) as store:
            put(settings.stream_name, [good_record(5)])
            wait_for(lambda: store.count("CartPole-v1") == 5, 180, "5 stored steps", job.check_alive)
            proxy.cut()
            put(settings.stream_name, [good_record(6), good_record(7)])
            threading.Event().wait(OUTAGE_S)  # the outage itself, not a synchronisation
            job.check_alive()
            proxy.restore()
            wait_for(lambda: store.count("CartPole-v1") == 18, 180, "18 stored steps", job.check_alive)
        assert f"Kinesis unreachable at {proxy.endpoint}" in log.read_text()
        assert f"Kinesis reachable again at {proxy.endpoint}" in log.read_text()
    finally:
        if proxy is not None:
            proxy.cut()
        if job is not None:
            job.stop()
        moto.stop()
