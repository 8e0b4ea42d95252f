"""The game catalog: declared specs in the bucket first, then gymnasium ids.

What it costs the bucket is bounded by design, whatever ids clients send. Which ids are declared comes from one
LIST of ``games/``, repeated at most every ``recheck_s`` and only when an id is not known yet: an undeclared id
(a typo, or a client inventing thousands) costs no request of its own and no memory, and a newly declared game
is found within ``recheck_s`` without a restart. A declared spec is read once (one GET) and cached for good:
specs never change. An id that resolves to a gymnasium game is cached for good too, so a client playing
CartPole costs no request after its first record (a spec declared later under a gymnasium id takes effect at
the next restart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rlplatform.games.gym_catalog import game_spec as gym_game_spec
from rlplatform.games.spec import GameSpec, GameSpecError, UnknownGameError
from rlplatform.infra import aws
from rlplatform_client.games import GAMES_PREFIX, declare_game, read_declared
from rlplatform_client.retry import RetryStopped, aws_unreachable, retry

SPEC_SUFFIX = "/spec.json"


class GameCatalog:
    def __init__(
        self,
        bucket: str,
        s3: Any = None,
        recheck_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wait: bool = True,
    ) -> None:
        """``wait``: an unreachable S3 is waited out (a stage: valid records must not become dead letters);
        False raises at once (an operator command)."""
        self.bucket = bucket
        self.wait = wait
        self._s3 = s3
        self.recheck_s = recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._declared: dict[str, GameSpec] = {}  # read from the bucket: they never change
        self._gym: dict[str, GameSpec] = {}  # ids that resolved to gymnasium games (bounded by its registry)
        self._listed: frozenset[str] = frozenset()  # the declared ids, as of the last LIST
        self._listed_at: float | None = None
        self.requests = 0  # S3 requests made, for benchmarks and tests

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.s3_client()
        return self._s3

    def resolve(self, game_id: str) -> GameSpec:
        """The game's spec: declared in the bucket, else a gymnasium id; ``UnknownGameError`` otherwise."""
        with self._lock:
            spec = self._declared.get(game_id) or self._gym.get(game_id)
        if spec is not None:
            return spec
        spec = self.declared(game_id)
        if spec is not None:
            return spec
        try:
            spec = gym_game_spec(game_id)
        except UnknownGameError:
            raise UnknownGameError(
                f"game_id: {game_id!r} is neither declared in s3://{self.bucket}/{GAMES_PREFIX}/"
                " nor a usable gymnasium id"
            ) from None
        with self._lock:
            self._gym[game_id] = spec
        return spec

    def wait_for(
        self, game_id: str, stop: threading.Event, logger: logging.Logger, log_every_s: float = 30.0
    ) -> GameSpec:
        """The game's spec, waiting until it is declared: a trainer may start before any client declared its
        game. Says so in ``logger`` every ``log_every_s``; ``RetryStopped`` once ``stop`` is set."""
        logged_at: float | None = None
        while True:
            try:
                return self.resolve(game_id)
            except UnknownGameError as exc:
                if logged_at is None or self._clock() - logged_at >= log_every_s:
                    logger.warning("%s; waiting for its declaration (rlplatform games register, or declare_game)", exc)
                    logged_at = self._clock()
            if stop.wait(self.recheck_s):
                raise RetryStopped(f"stopped while waiting for {game_id!r} to be declared")

    def declared(self, game_id: str) -> GameSpec | None:
        """The declared spec, or None when the bucket's catalog (listed at most every ``recheck_s``) has none."""
        with self._lock:
            if game_id in self._declared:
                return self._declared[game_id]
        if game_id not in self.declared_ids():
            return None
        try:
            spec = self._s3_call(lambda: read_declared(self.s3, self.bucket, game_id))
        except GameSpecError as exc:
            raise UnknownGameError(f"game_id: {game_id!r} has a broken spec document: {exc}") from None
        if spec is not None:
            with self._lock:
                self._declared[game_id] = spec
        return spec

    def declared_ids(self) -> frozenset[str]:
        """Every id declared in the bucket, listed again when the last listing is ``recheck_s`` old."""
        with self._lock:
            if self._listed_at is not None and self._clock() - self._listed_at < self.recheck_s:
                return self._listed
        listed = self._s3_call(self._list_ids)
        with self._lock:
            self._listed, self._listed_at = listed, self._clock()
        return listed

    def _list_ids(self) -> frozenset[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{GAMES_PREFIX}/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return frozenset(k[len(GAMES_PREFIX) + 1 : -len(SPEC_SUFFIX)] for k in keys if k.endswith(SPEC_SUFFIX))

    def _s3_call(self, call: Callable[[], Any]) -> Any:
        """One catalog request, waiting out an S3 outage unless told not to (``wait``)."""
        with self._lock:
            self.requests += 1
        if not self.wait:
            return call()
        return retry(call, service="S3", endpoint=self.s3.meta.endpoint_url, unreachable=aws_unreachable)

    def register(self, spec: GameSpec) -> bool:
        """Declare a spec (idempotent); True if new. ``GameSpecConflict`` names the differences otherwise."""
        created = declare_game(self.bucket, spec, s3=self.s3)
        with self._lock:
            self._declared[spec.game_id] = spec
        return created

    def list_declared(self) -> list[GameSpec]:
        """Every declared spec, by game id."""
        return [spec for game_id in sorted(self.declared_ids()) if (spec := self.declared(game_id)) is not None]
