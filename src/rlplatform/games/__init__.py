"""Games: declared specs (the catalog in the bucket) and gymnasium ids, resolved to one ``GameSpec``."""

from rlplatform.games.catalog import GameCatalog
from rlplatform.games.gym_catalog import game_spec, reward_threshold
from rlplatform.games.spec import GameSpec, GameSpecConflict, GameSpecError, UnknownGameError

__all__ = [
    "GameCatalog",
    "GameSpec",
    "GameSpecConflict",
    "GameSpecError",
    "UnknownGameError",
    "game_spec",
    "reward_threshold",
]
