"""The game catalog: declared specs in the bucket first, then gymnasium ids.

Declared specs never change, so a found one is cached for good. A game id that is not declared is looked up
again at most every ``recheck_s`` seconds, so ingest learns of a newly declared game without a restart while
a client repeating an unknown id costs one S3 GET per interval, not one per record.
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

# Unknown ids remembered at most this many at a time: a client inventing ids cannot grow the cache forever.
_MAX_UNKNOWN = 10_000


class GameCatalog:
    def __init__(
        self,
        bucket: str,
        s3: Any = None,
        recheck_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self._s3 = s3
        self.recheck_s = recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._declared: dict[str, GameSpec] = {}
        self._checked_at: dict[str, float] = {}  # undeclared id -> when S3 said so

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.s3_client()
        return self._s3

    def resolve(self, game_id: str) -> GameSpec:
        """The game's spec: declared in the bucket, else a gymnasium id; ``UnknownGameError`` otherwise."""
        spec = self.declared(game_id)
        if spec is not None:
            return spec
        try:
            return gym_game_spec(game_id)
        except UnknownGameError:
            raise UnknownGameError(
                f"game_id: {game_id!r} is neither declared in s3://{self.bucket}/{GAMES_PREFIX}/"
                " nor a usable gymnasium id"
            ) from None

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
        """The declared spec, re-reading the bucket for an undeclared id at most every ``recheck_s``."""
        with self._lock:
            if game_id in self._declared:
                return self._declared[game_id]
            checked = self._checked_at.get(game_id)
            if checked is not None and self._clock() - checked < self.recheck_s:
                return None
        try:
            # An S3 outage must not turn valid records into dead letters: wait for it, as every stage does.
            spec = retry(
                lambda: read_declared(self.s3, self.bucket, game_id),
                service="S3",
                endpoint=self.s3.meta.endpoint_url,
                unreachable=aws_unreachable,
            )
        except GameSpecError as exc:
            raise UnknownGameError(f"game_id: {game_id!r} has a broken spec document: {exc}") from None
        with self._lock:
            if spec is not None:
                self._declared[game_id] = spec
                self._checked_at.pop(game_id, None)
            else:
                if len(self._checked_at) >= _MAX_UNKNOWN:
                    self._checked_at.clear()
                self._checked_at[game_id] = self._clock()
        return spec

    def register(self, spec: GameSpec) -> bool:
        """Declare a spec (idempotent); True if new. ``GameSpecConflict`` names the differences otherwise."""
        created = declare_game(self.bucket, spec, s3=self.s3)
        with self._lock:
            self._declared[spec.game_id] = spec
            self._checked_at.pop(spec.game_id, None)
        return created

    def list_declared(self) -> list[GameSpec]:
        """Every declared spec, by game id."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{GAMES_PREFIX}/")
        ids = sorted(
            obj["Key"][len(GAMES_PREFIX) + 1 : -len("/spec.json")]
            for page in pages
            for obj in page.get("Contents", [])
            if obj["Key"].endswith("/spec.json")
        )
        return [spec for game_id in ids if (spec := self.declared(game_id)) is not None]
