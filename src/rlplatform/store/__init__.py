"""Experience stores: one port (``ExperienceStore``), one module per adapter."""

from rlplatform.store.base import ExperienceStore, TransitionBatch, open_store

__all__ = ["ExperienceStore", "TransitionBatch", "open_store"]
