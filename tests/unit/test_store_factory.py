"""The store factory: a name -> adapter map outside the port, each adapter importing only its own driver."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store import STORES, adapter, open_store, store_endpoint, unavailable_errors
from rlplatform.store.sqlite import SqliteStore


def test_settings_name_the_adapter_and_it_says_where_it_is_and_what_unreachable_means(tmp_path: Path) -> None:
    settings = Settings(store="sqlite", sqlite=SqliteSettings(path=tmp_path / "s.sqlite"))
    with open_store(settings) as store:
        assert isinstance(store, SqliteStore)
    assert store_endpoint(settings) == str(tmp_path / "s.sqlite")
    assert unavailable_errors(settings) == (sqlite3.OperationalError,)
    assert set(STORES) == set(Settings.model_fields["store"].annotation.__args__)


def test_an_unknown_adapter_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown adapter 'redis'; known: sqlite, cassandra"):
        adapter("redis")


def test_the_embedded_profile_never_imports_the_cassandra_driver(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom rlplatform.settings import Settings\nfrom rlplatform.store import open_store\n"
        "from rlplatform.settings import SqliteSettings\n"
        f"open_store(Settings(sqlite=SqliteSettings(path={str(tmp_path / 's.sqlite')!r}))).close()\n"
        "assert 'cassandra' not in sys.modules, sorted(m for m in sys.modules if 'cassandra' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
