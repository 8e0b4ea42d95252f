"""``rlplatform bench judge``: the release judge's error rates, by simulation (``release.judge``).

Each trial draws episode returns for a stable version and a candidate whose returns are the stable's shifted by
``shift_sd`` standard deviations, then judges them as the judge does while episodes come in: at every planned
look until a verdict. Over many trials, the share of promotions where the candidate is worse by more than the
margin is the false-promotion rate; the share of rollbacks where it is as good as the stable version or better
is the false-rollback rate (between the two, within the margin, promoting is right and rolling back is safe).

Two return distributions: ``normal`` (mean 0, sd 1) and ``capped``, CartPole-like (normal with mean 400 and sd
100, capped at 500: one episode in six ties at the cap; the shift is applied before the cap, so the capped
returns move less than ``shift_sd``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlplatform.release.judge import PROMOTE, ROLLBACK, WAIT, JudgePolicy, Verdict, judge

SHIFTS_SD = (-1.0, -0.6, -0.3, -0.15, 0.0, 0.3)
CAP = 500.0


def _normal(rng: np.random.Generator, n: int, shift_sd: float) -> np.ndarray:
    return rng.normal(shift_sd, 1.0, n)


def _capped(rng: np.random.Generator, n: int, shift_sd: float) -> np.ndarray:
    return np.minimum(rng.normal(400.0 + 100.0 * shift_sd, 100.0, n), CAP)


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "normal": _normal,
    "capped": _capped,
}


@dataclass(frozen=True)
class JudgeBenchConfig:
    trials: int = 2000
    seed: int = 0
    policy: JudgePolicy = JudgePolicy()
    shifts_sd: tuple[float, ...] = SHIFTS_SD


def simulate(policy: JudgePolicy, distribution: str, shift_sd: float, trials: int, rng: np.random.Generator) -> dict:
    """Verdict shares over ``trials`` and the median episodes per version each verdict took."""
    draw = DISTRIBUTIONS[distribution]
    n_max = policy.looks[-1]
    verdicts = []
    for _ in range(trials):
        stable, candidate = draw(rng, n_max, 0.0), draw(rng, n_max, shift_sd)
        for n in policy.looks:
            verdict = judge(candidate[:n], stable[:n], policy)
            if verdict.decision != WAIT:
                break
        verdicts.append(verdict)

    def share(wanted: Callable[[Verdict], bool]) -> float:
        return round(sum(map(wanted, verdicts)) / trials, 4)

    return {
        "distribution": distribution,
        "shift_sd": shift_sd,
        "promoted": share(lambda v: v.decision == PROMOTE),
        "rolled_back": share(lambda v: v.decision == ROLLBACK),
        "of_which_undecided": share(lambda v: not v.conclusive),
        "median_episodes_per_version": int(np.median([v.episodes for v in verdicts])),
    }


def run_judge_bench(cfg: JudgeBenchConfig) -> dict:
    """Every distribution x shift; the error rates are the promotions of candidates worse than the margin and the
    rollbacks of the others."""
    rng = np.random.default_rng(cfg.seed)
    rows = [simulate(cfg.policy, d, shift, cfg.trials, rng) for d in DISTRIBUTIONS for shift in cfg.shifts_sd]
    normal = [r for r in rows if r["distribution"] == "normal"]
    worse = [r["promoted"] for r in normal if r["shift_sd"] <= -cfg.policy.margin_sd]
    as_good = [r["rolled_back"] for r in normal if r["shift_sd"] >= 0]
    return {
        "policy": {"margin_sd": cfg.policy.margin_sd, "alpha": cfg.policy.alpha, "looks": list(cfg.policy.looks)},
        "trials": cfg.trials,
        "false_promotion_max": max(worse, default=None),
        "false_rollback_max": max(as_good, default=None),
        "rows": rows,
    }
