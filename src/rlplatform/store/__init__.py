"""Experience stores: one port (``ExperienceStore``, ``base.py``), one module per adapter, and the factory:
a name -> adapter map (``RLP_STORE``), imported only when named, so no profile loads another's driver.
Each adapter's settings are a section of ``rlplatform.settings.Settings`` (``settings.<name>``, ``RLP_<NAME>_*``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rlplatform.store.base import ExperienceStore, TransitionBatch
from rlplatform_client.retry import retry

if TYPE_CHECKING:
    from rlplatform.settings import Settings

T = TypeVar("T")
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


class StoreUnreachable(ConnectionError):
    """The store the settings name does not answer (``open_reachable``)."""


def open_reachable(settings: Settings) -> ExperienceStore:
    """``open_store``, with "not reachable now" turned into one ``StoreUnreachable`` that says where it looked:
    for commands that should stop at once (``rlplatform up``, the benches) rather than wait like a stage."""
    try:
        return open_store(settings)
    except unavailable_errors(settings) as exc:
        hint = (
            "; `make cassandra` starts a local node, RLP_CASSANDRA_* say where" if settings.store == "cassandra" else ""
        )
        raise StoreUnreachable(
            f"the {settings.store} store at {store_endpoint(settings)} does not answer ({exc}){hint}"
        ) from None


def wait_for_store(settings: Settings, call: Callable[[], T], **retry_options: Any) -> T:
    """``call()`` (a call to the store the settings name), waiting out that store being unreachable: logged,
    with backoff, until it answers. Every other error propagates. ``retry_options`` go to
    ``rlplatform_client.retry.retry`` (``stop``, ``backoff``, ``logger``)."""
    errors = unavailable_errors(settings)
    return retry(
        call,
        service=f"store ({settings.store})",
        endpoint=store_endpoint(settings),
        unreachable=lambda exc: isinstance(exc, errors),
        **retry_options,
    )


__all__ = [
    "STORES",
    "StoreUnreachable",
    "ExperienceStore",
    "TransitionBatch",
    "adapter",
    "open_reachable",
    "open_store",
    "store_endpoint",
    "unavailable_errors",
    "wait_for_store",
]
