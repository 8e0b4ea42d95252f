"""Settings of the SQLite adapter (``store/sqlite.py``), from ``RLP_SQLITE_*``.

A module of its own, importing only pydantic, like every adapter's settings: ``rlplatform.settings`` nests
each adapter's section, so loading the settings never loads an adapter or its driver.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class SqliteSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLP_SQLITE_", extra="forbid")

    path: Path = Path("runs/experience.sqlite")
