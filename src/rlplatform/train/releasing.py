"""The trainer's part in its game's release (``rlplatform.release``): each version it publishes is proposed, and
the candidate is judged by how the clients played it.

Proposing: the new version becomes the candidate for ``canary_share`` of the clients, or the stable version at
once without a share. A candidate is judged to the end: a version published meanwhile waits, and after the
verdict the newest one waiting becomes the next candidate (the ones in between are skipped). Replacing the
candidate at each publish instead would restart its judgement every time, and a trainer that publishes faster
than its canary plays 50 episodes would never promote anything.

Judging, every ``JUDGE_EVERY_S``: the steps stored since the trainer first saw the candidate are read once
(``release.watch``), and the candidate is promoted or withdrawn when the test says so (``release.judge``); a
pinned game's candidate is never promoted. Either move is applied only to the candidate that was judged: one
that changed meanwhile (an operator's move) is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rlplatform.registry import keys
from rlplatform.release import state as release
from rlplatform.release.judge import PROMOTE, WAIT, judge
from rlplatform.release.watch import CandidateWatch
from rlplatform.settings import Settings
from rlplatform.store import ExperienceStore
from rlplatform_client.models import ModelError, ModelManifest
from rlplatform_client.releases import ReleaseState

log = logging.getLogger(__name__)

# How often the trainer judges its game's release candidate, when there is one.
JUDGE_EVERY_S = 10.0
# Calls through the trainer's waits for an unreachable S3 or store.
Retry = Callable[[Callable[[], Any]], Any]


class CandidateUnderJudgement(release.ReleaseRefused):
    """A candidate is being judged: the new version waits for the verdict."""


class Releaser:
    def __init__(self, settings: Settings, game_id: str, canary_share: float, s3: Retry, store: Retry) -> None:
        self.settings, self.game_id, self.canary_share = settings, game_id, canary_share
        self._s3, self._store = s3, store
        self.watch: CandidateWatch | None = None
        self.waiting: ModelManifest | None = None  # the newest version published and not yet proposed

    def propose(self, manifest: ModelManifest, signing: keys.SigningKeys) -> None:
        """The published ``manifest``'s version becomes the candidate (or stable), or waits while a candidate is
        judged. A release state the trainer cannot read or move is logged and left for the operator: the version
        is published either way."""
        self.waiting = manifest
        self._propose_waiting(signing)

    def _propose_waiting(self, signing: keys.SigningKeys) -> None:
        manifest, share = self.waiting, self.canary_share
        if manifest is None:
            return
        version = manifest.version

        def move(state: ReleaseState | None) -> ReleaseState:
            if share and state is not None and state.candidate is not None:
                raise CandidateUnderJudgement(f"v{version} waits: candidate v{state.candidate} is being judged")
            return release.on_publish(state, self.game_id, version, share)

        why = f"v{version} published at learner step {manifest.learner_step}"
        try:
            self._change(signing, move, by="trainer", action="publish", why=why)
        except CandidateUnderJudgement as exc:
            log.info("%s %s", self.game_id, exc)
            return
        except (release.ReleaseRefused, release.ReleaseConflict, ModelError) as exc:
            log.error("%s v%d is published but not released: %s", self.game_id, version, exc)
        self.waiting = None

    def judge(self, store: ExperienceStore) -> str | None:
        """Judge the candidate, if there is one; returns the judge's word on it (None: no candidate)."""
        signing = keys.signing_keys(self.settings)
        try:
            current, _ = self._s3(lambda: release.read_release(self.settings.bucket, self.game_id, signing.trusted))
        except (release.ReleaseRefused, ModelError) as exc:
            return f"release state unreadable: {exc}"
        if current is None or current.candidate is None:  # judged, or moved by the operator
            self.watch = None
            self._propose_waiting(signing)
            return None
        judged, stable = current.candidate, current.stable
        if self.watch is None or (self.watch.stable, self.watch.candidate) != (stable, judged):
            self.watch = CandidateWatch.from_now(store, self.game_id, stable, judged)
        self._store(self.watch.update)
        verdict = judge(self.watch.returns(judged), self.watch.returns(stable))
        said = f"v{judged} against v{stable}: {verdict.reason}"
        if self.waiting is not None:
            said += f"; v{self.waiting.version} waits for the verdict"
        if verdict.decision == WAIT:
            return said
        if verdict.decision == PROMOTE and current.pinned:
            return f"{said}; pinned: not promoting"
        move = release.promote if verdict.decision == PROMOTE else release.reject

        def on_judged(state: ReleaseState | None) -> ReleaseState:
            if state is None or state.candidate != judged:
                raise release.ReleaseRefused(f"the candidate is no longer v{judged}")
            return move(state)

        try:
            self._change(signing, on_judged, by="judge", action=verdict.decision, why=verdict.reason)
        except (release.ReleaseRefused, release.ReleaseConflict, ModelError) as exc:
            log.warning("%s: the judge's %s of v%d was not applied: %s", self.game_id, verdict.decision, judged, exc)
        self.watch = None
        self._propose_waiting(signing)
        return said

    def _change(self, signing: keys.SigningKeys, move: release.Move, *, by: str, action: str, why: str) -> None:
        self._s3(
            lambda: release.change(self.settings.bucket, self.game_id, signing, move, by=by, action=action, why=why)
        )
