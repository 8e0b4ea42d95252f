"""The release judge's test: does a candidate version play worse than the stable one, by the clients' returns?

The data are the live returns of finished, whole episodes (``store.base.live_returns_of``'s episodes) that the
clients played with each version over the same period, in the order they started (``release.watch``).

Why Mann-Whitney U: episode returns are far from normal (CartPole's pile up at 500, a crash-prone game's have
two modes), and a rank test assumes no distribution; it is what Kayenta judges canaries with, asking for at least
50 points per metric. Two one-sided tests with a margin ``delta`` (in return units, ``margin_sd`` of the stable
version's standard deviation over the period, so one default fits every game's scale):

- *not worse*: the candidate's returns plus ``delta`` are stochastically greater than the stable's -> promote;
- *worse*: the candidate's returns plus ``delta`` are stochastically smaller than the stable's -> roll back.

Why planned looks: the judge reads returns as clients finish episodes; testing at each new episode would inflate
both error rates. It looks only when both versions have ``looks[k]`` episodes (50, 100, 200, 400, 800), on exactly
the first ``looks[k]`` of each, each look at ``alpha / len(looks)`` (Bonferroni), so each error rate stays below
``alpha`` however many looks it takes (``rlplatform bench judge`` measures them by simulation). After the last
look without a verdict the candidate is rolled back: the stable version keeps serving when the data cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WAIT, PROMOTE, ROLLBACK = "wait", "promote", "rollback"


@dataclass(frozen=True)
class JudgePolicy:
    # The margin, in standard deviations of the stable version's returns over the period.
    margin_sd: float = 0.3
    # The most each error rate (false promotion, false rollback) may be, over all looks together.
    alpha: float = 0.05
    # Episodes per version at each look; the judge waits for the first.
    looks: tuple[int, ...] = (50, 100, 200, 400, 800)

    def __post_init__(self) -> None:
        if not self.margin_sd >= 0:
            raise ValueError(f"margin_sd: must be >= 0, got {self.margin_sd!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: must be in (0, 1), got {self.alpha!r}")
        if not self.looks or list(self.looks) != sorted(set(self.looks)) or self.looks[0] < 2:
            raise ValueError(f"looks: must be increasing episode counts >= 2, got {self.looks!r}")

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / len(self.looks)


@dataclass(frozen=True)
class Verdict:
    decision: str  # WAIT, PROMOTE or ROLLBACK
    reason: str
    episodes: int = 0  # per version, at the look decided on (0: no look yet)
    margin: float = 0.0  # delta, in return units
    p_not_worse: float | None = None
    p_worse: float | None = None
    # False for the rollback after the last look without a verdict: the data could not tell.
    conclusive: bool = True


def judge(candidate: np.ndarray, stable: np.ndarray, policy: JudgePolicy = JudgePolicy()) -> Verdict:
    """The verdict on a candidate from its episode returns and the stable version's (float[n], in the order the
    episodes started), at the last planned look both have reached."""
    reached = [n for n in policy.looks if min(len(candidate), len(stable)) >= n]
    if not reached:
        have = f"{len(candidate)} candidate, {len(stable)} stable"
        if max(len(candidate), len(stable)) >= policy.looks[-1]:
            # With few clients the share can put (nearly) all of them on one side, and the other never gets its
            # episodes; each candidate splits the clients anew (releases.version_for), so the next one may not.
            return Verdict(
                ROLLBACK, f"one version got almost no play ({have}): the stable version stays", conclusive=False
            )
        return Verdict(WAIT, f"waiting for {policy.looks[0]} finished episodes of each version ({have})")
    from scipy.stats import mannwhitneyu  # here: the command line imports this module, and scipy costs 0.5 s

    n = reached[-1]
    c, s = np.asarray(candidate[:n], np.float64), np.asarray(stable[:n], np.float64)
    if np.ptp(np.concatenate([c, s])) == 0:  # e.g. both always at a game's cap: nothing to rank, nothing worse
        return Verdict(PROMOTE, f"the same return in every episode ({n} episodes each)", n, 0.0)
    delta = policy.margin_sd * float(np.std(s, ddof=1))
    p_not_worse = float(mannwhitneyu(c + delta, s, alternative="greater").pvalue)
    p_worse = float(mannwhitneyu(c + delta, s, alternative="less").pvalue)
    level, stats = policy.alpha_per_look, (n, delta, p_not_worse, p_worse)
    found = f"{n} episodes each, margin {delta:.3g}"
    if p_not_worse < level:
        return Verdict(PROMOTE, f"not worse: p {p_not_worse:.2g} < {level:.2g} ({found})", *stats)
    if p_worse < level:
        return Verdict(ROLLBACK, f"worse: p {p_worse:.2g} < {level:.2g} ({found})", *stats)
    if n == policy.looks[-1]:
        return Verdict(ROLLBACK, f"undecided after the last look ({found}): the stable version stays", *stats, False)
    return Verdict(WAIT, f"undecided at {found}; next look at {policy.looks[len(reached)]}", *stats)
