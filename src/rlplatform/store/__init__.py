"""Experience stores: one port (``ExperienceStore``, ``base.py``), one module per adapter, and the factory:
a name -> adapter map (``RLP_STORE``), imported only when named, so no profile loads another's driver."""

from __future__ import annotations

import importlib

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


__all__ = [
    "STORES",
    "ExperienceStore",
    "TransitionBatch",
    "adapter",
    "open_store",
    "store_endpoint",
    "unavailable_errors",
]
