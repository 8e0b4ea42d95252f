"""The release judge's test: planned looks, the margin, and a verdict only the data at a look decides."""

from __future__ import annotations

import numpy as np
import pytest

from rlplatform.release.judge import PROMOTE, ROLLBACK, WAIT, JudgePolicy, judge


def returns(seed: int, n: int, mean: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, n)


def test_it_waits_for_the_first_look_on_both_versions() -> None:
    verdict = judge(returns(1, 49, mean=-5.0), returns(2, 500))
    assert verdict.decision == WAIT and verdict.episodes == 0
    assert "waiting for 50 finished episodes of each version (49 candidate, 500 stable)" in verdict.reason


def test_a_side_without_play_by_the_last_look_keeps_the_stable_version() -> None:
    """With few clients the share can put them all on one side: the judge does not wait for ever."""
    for candidate, stable in ((returns(1, 800), returns(2, 0)), (returns(3, 12), returns(4, 801))):
        verdict = judge(candidate, stable)
        assert (verdict.decision, verdict.conclusive) == (ROLLBACK, False)
        assert verdict.reason.startswith("one version got almost no play")
    assert judge(returns(5, 799), returns(6, 0)).decision == WAIT


def test_a_much_worse_candidate_is_rolled_back_at_the_first_look() -> None:
    verdict = judge(returns(1, 60, mean=-2.0), returns(2, 60))
    assert (verdict.decision, verdict.episodes, verdict.conclusive) == (ROLLBACK, 50, True)
    assert verdict.p_worse is not None and verdict.p_worse < JudgePolicy().alpha_per_look
    assert verdict.reason.startswith("worse: p ")


def test_an_equal_candidate_is_promoted_once_there_are_enough_episodes() -> None:
    candidate, stable = returns(3, 800), returns(4, 800)
    decisions = {n: judge(candidate[:n], stable[:n]).decision for n in (50, 100, 200, 400, 800)}
    assert decisions[800] == PROMOTE and WAIT in decisions.values(), decisions
    # The margin is in the stable version's spread: the same play on another scale gets the same verdicts.
    assert {n: judge(100 * candidate[:n] + 7, 100 * stable[:n] + 7).decision for n in decisions} == decisions


def test_a_look_uses_exactly_its_episodes_so_a_repeated_look_never_changes_its_verdict() -> None:
    candidate, stable = returns(5, 199, mean=-0.2), returns(6, 300)
    at_100 = judge(candidate[:100], stable[:100])
    assert judge(candidate, stable) == at_100  # 199 and 300 episodes: still the look at 100


def test_no_verdict_by_the_last_look_keeps_the_stable_version() -> None:
    policy = JudgePolicy(looks=(50,))
    verdict = judge(returns(7, 50, mean=-0.3), returns(8, 50), policy)
    assert verdict.decision == ROLLBACK and not verdict.conclusive and "undecided" in verdict.reason


def test_versions_that_play_identically_are_not_worse() -> None:
    capped = np.full(50, 500.0)
    assert judge(capped, capped).decision == PROMOTE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"margin_sd": -0.1}, "margin_sd: must be >= 0"),
        ({"alpha": 1.0}, "alpha: must be in (0, 1)"),
        ({"looks": (100, 50)}, "looks: must be increasing"),
        ({"looks": ()}, "looks: must be increasing"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JudgePolicy(**options)


def test_the_simulation_counts_each_verdict_over_its_trials() -> None:
    from rlplatform.bench.judge import simulate

    rng = np.random.default_rng(0)
    worse = simulate(JudgePolicy(), "normal", -2.0, 20, rng)
    assert (worse["promoted"], worse["rolled_back"], worse["median_episodes_per_version"]) == (0.0, 1.0, 50)
    better = simulate(JudgePolicy(), "capped", 1.0, 20, rng)
    assert (better["promoted"], better["rolled_back"]) == (1.0, 0.0)
