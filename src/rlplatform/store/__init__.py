"""Experience stores: one port (``ExperienceStore``), one module per adapter."""

from rlplatform.store.base import ExperienceStore, TransitionBatch, open_store, store_endpoint, unavailable_errors

__all__ = ["ExperienceStore", "TransitionBatch", "open_store", "store_endpoint", "unavailable_errors"]
