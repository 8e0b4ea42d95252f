"""Experience stores: one port (``ExperienceStore``, ``base.py``), one module per adapter, and the factory:
a name -> adapter map (``RLP_STORE``), imported only when named, so no profile loads another's driver.
Each adapter's settings live in a driver-free module beside it (``<name>_settings.py``, ``RLP_<NAME>_*``),
nested in ``rlplatform.settings.Settings`` as ``settings.<name>``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlplatform.settings import Settings
    from rlplatform.store.base import ExperienceStore, TransitionBatch

# RLP_STORE -> "module:class" of its adapter.
STORES = {
    "sqlite": "rlplatform.store.sqlite:SqliteStore",
    "cassandra": "rlplatform.store.cassandra:CassandraStore",
}


def adapter(name: str) -> type[ExperienceStore]:
    """The adapter class registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in STORES:
        raise ValueError(f"store: unknown adapter {name!r}; known: {', '.join(STORES)}")
    module, cls = STORES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_store(settings: Settings) -> ExperienceStore:
    """The adapter the settings name, connected."""
    return adapter(settings.store).from_settings(settings)


def store_endpoint(settings: Settings) -> str:
    """Where the store the settings name lives, for log lines."""
    return adapter(settings.store).endpoint(settings)


def unavailable_errors(settings: Settings) -> tuple[type[BaseException], ...]:
    """Errors of the settings' store that mean "not reachable now" (worth waiting for), not a bug."""
    return adapter(settings.store).unavailable_errors()


def __getattr__(name: str) -> object:
    """The port's names, loaded on first use: ``rlplatform.settings`` imports the adapters' settings modules,
    which runs this package, and must load neither the port (numpy) nor, circularly, the settings."""
    if name in ("ExperienceStore", "TransitionBatch"):
        from rlplatform.store import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "STORES",
    "ExperienceStore",
    "TransitionBatch",
    "adapter",
    "open_store",
    "store_endpoint",
    "unavailable_errors",
]
