"""n-step transitions from store samples: each draw's reward summed over the next steps of its episode.

``ExperienceStore.sample(..., follow=n_step - 1)`` returns each draw followed by the rows stored after it.
A follower counts while it is the same episode's next step and no earlier step ended the episode; the
transition then bootstraps from the last counted step's ``next_obs`` with ``gamma ** steps``, as RLlib's
DQN and SAC losses do with their ``n_step`` column (Ape-X and Rainbow use n = 3).
"""

from __future__ import annotations

import numpy as np

from rlplatform.store import TransitionBatch


def n_step_transitions(rows: TransitionBatch, n_step: int, gamma: float) -> tuple[TransitionBatch, np.ndarray]:
    """``rows`` (m * n_step rows: draw, then its n_step - 1 followers) -> m transitions and ``steps`` int64[m].

    reward[i] = sum_{j < steps[i]} gamma**j * r[i, j]; next_obs, terminated and truncated are those of step
    ``steps[i] - 1``; obs, action and the keys are the draw's. ``steps`` is 1..n_step.
    """
    if len(rows) % n_step:
        raise ValueError(f"{len(rows)} rows are not whole groups of n_step={n_step}")
    m = len(rows) // n_step
    first = np.arange(m) * n_step
    if n_step == 1:
        return rows, np.ones(m, dtype=np.int64)
    offsets = np.arange(1, n_step)
    episode = rows.episode_id.reshape(m, n_step)
    t = rows.t.reshape(m, n_step)
    ended = (rows.terminated | rows.truncated).reshape(m, n_step)
    continues = (episode[:, 1:] == episode[:, :1]) & (t[:, 1:] == t[:, :1] + offsets)  # [m, n_step - 1]
    # Step j counts while every step before it continued the episode without ending it.
    counted = np.ones((m, n_step), dtype=bool)
    counted[:, 1:] = np.cumprod(continues & ~ended[:, :-1], axis=1).astype(bool)
    steps = counted.sum(axis=1)
    discounts = (gamma ** np.arange(n_step)).astype(np.float32)
    reward = (rows.reward.reshape(m, n_step) * discounts * counted).sum(axis=1, dtype=np.float32)
    last = first + steps - 1
    draws = rows[first]
    transitions = TransitionBatch(
        episode_id=draws.episode_id,
        t=draws.t,
        obs=draws.obs,
        action=draws.action,
        reward=reward,
        next_obs=rows.next_obs[last],
        terminated=rows.terminated[last],
        truncated=rows.truncated[last],
        model_version=draws.model_version,
    )
    return transitions, steps.astype(np.int64)
