"""The game spec (defined once, in the client package, like the wire contract) and the lookup error."""

from __future__ import annotations

from rlplatform_client.games import GameSpec, GameSpecConflict, GameSpecError

__all__ = ["GameSpec", "GameSpecConflict", "GameSpecError", "UnknownGameError"]


class UnknownGameError(LookupError):
    """No declared spec and no usable gymnasium environment for a game id."""
