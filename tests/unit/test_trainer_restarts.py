"""The training service's restart budget counts failures in a row: a trainer that ran a healthy while starts a
new count, so a service that runs for months does not use its restarts up on failures weeks apart."""

from __future__ import annotations

from rlplatform.train.service import HEALTHY_S, GameTrainer
from rlplatform_client.retry import Backoff

BACKOFF = Backoff(1.0, 30.0)


def fail_after(game: GameTrainer, ran_s: float) -> bool:
    """The trainer ran ``ran_s`` since its (re)start, then failed; restarted at once if it may be."""
    now = game.started_at + ran_s
    restarting = game.failed("RayActorError: its node died", now, max_restarts=3, backoff=BACKOFF)
    if restarting:
        game.started_at = game.restart_at
    return restarting


def test_failures_in_a_row_use_the_budget_up_with_a_growing_backoff() -> None:
    game = GameTrainer(doc={})
    delays = []
    for _ in range(3):
        failed_at = game.started_at + 5.0
        assert fail_after(game, 5.0)
        delays.append(game.restart_at - failed_at)
    assert delays == [BACKOFF.delay(1), BACKOFF.delay(2), BACKOFF.delay(3)] and delays == sorted(set(delays))
    assert (game.restarts, game.failures_in_a_row, game.state) == (3, 3, "restarting")
    assert not fail_after(game, 5.0)
    assert (game.state, game.error, game.restarts) == ("failed", "RayActorError: its node died", 3)


def test_a_trainer_that_ran_healthy_starts_a_new_count_and_backoff() -> None:
    game = GameTrainer(doc={})
    assert fail_after(game, 5.0) and fail_after(game, 5.0)
    second_delay = BACKOFF.delay(2)
    assert game.failures_in_a_row == 2
    for _ in range(10):  # failures a healthy while apart never use the budget up
        failed_at = game.started_at + HEALTHY_S
        assert fail_after(game, HEALTHY_S)
        assert game.failures_in_a_row == 1 and game.restart_at - failed_at == BACKOFF.delay(1) < second_delay
    assert game.restarts == 12 and game.state == "restarting"
