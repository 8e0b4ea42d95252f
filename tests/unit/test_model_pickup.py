"""Model pickup latency: from a version's publish stamp to the first step any client acted with it."""

from __future__ import annotations

import pytest

from rlplatform.stack.launcher import GameProgress, pickup_latencies
from rlplatform.stack.view import _game_summary


def test_pickup_is_the_earliest_client_per_version() -> None:
    stats = [
        {"pickups": {"1": [100.0, 101.5], "2": [200.0, 200.9]}},
        {"pickups": {"1": [100.0, 100.4]}},  # this client acted with v1 first
        {"steps_acked": 0},  # a client from before the field, or one that never loaded a model
    ]
    assert pickup_latencies(stats) == {1: pytest.approx(0.4), 2: pytest.approx(0.9)}


def test_summary_reports_p50_and_p99_over_versions() -> None:
    g = GameProgress("CartPole-v1", 475.0)
    assert _game_summary(g)["model_pickup_s"] is None  # no model picked up yet: nothing made up
    g.pickup_s = {v: 0.1 * v for v in range(1, 101)}
    pickup = _game_summary(g)["model_pickup_s"]
    assert pickup["versions"] == 100
    assert pickup["p50"] == pytest.approx(5.05, abs=0.01)
    assert pickup["p99"] == pytest.approx(9.9, abs=0.01)
