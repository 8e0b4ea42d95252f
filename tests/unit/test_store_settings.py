"""Each store adapter owns its settings section, read from its own ``RLP_<STORE>_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlplatform.settings import CassandraSettings, Settings, SqliteSettings, env_var_names, settings_env


@pytest.fixture(autouse=True)
def no_rlp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_var_names() | {"RLP_SQLITE", "RLP_CASSANDRA"}:
        monkeypatch.delenv(name, raising=False)


def test_the_variables_reach_each_adapters_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLP_STORE", "cassandra")
    monkeypatch.setenv("RLP_SQLITE_PATH", str(tmp_path / "s.sqlite"))
    monkeypatch.setenv("RLP_CASSANDRA_PORT", "9999")
    monkeypatch.setenv("RLP_CASSANDRA_CONTACT_POINTS", "a,b")
    monkeypatch.setenv("RLP_CASSANDRA_SSL", "true")
    monkeypatch.setenv("RLP_CASSANDRA", "not json")  # not a variable of ours: the section reads its own
    settings = Settings()
    assert settings.store == "cassandra"
    assert settings.sqlite.path == tmp_path / "s.sqlite"
    assert (settings.cassandra.port, settings.cassandra.contact_points, settings.cassandra.ssl) == (9999, "a,b", True)
    assert settings.cassandra.keyspace == "rlplatform"  # defaults stay
    assert {"RLP_SQLITE_PATH", "RLP_CASSANDRA_PORT", "RLP_CASSANDRA_SIGV4", "RLP_STORE"} <= env_var_names()


def test_a_section_given_explicitly_still_reads_the_rest_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLP_CASSANDRA_KEYSPACE", "from_env")
    settings = Settings(cassandra=CassandraSettings(port=9043))
    assert (settings.cassandra.port, settings.cassandra.keyspace) == (9043, "from_env")
    copy = settings.model_copy(update={"cassandra": settings.cassandra.model_copy(update={"keyspace": "other"})})
    assert (copy.cassandra.port, copy.cassandra.keyspace, settings.cassandra.keyspace) == (9043, "other", "from_env")


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [("RLP_CASSANDRA_PORT", "70000", "port"), ("RLP_CASSANDRA_KEYSPACE", "1bad", "keyspace")],
)
def test_a_bad_value_names_its_section_and_field(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=rf"for CassandraSettings\n{field}\n"):
        Settings()


def test_a_flat_name_from_before_the_sections_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sqlite_path"):
        Settings(sqlite_path=tmp_path / "s.sqlite")
    with pytest.raises(ValidationError, match="sqlite_path"):
        SqliteSettings(sqlite_path=tmp_path / "s.sqlite")


def test_settings_env_rebuilds_the_same_settings_in_a_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stage started by the launcher or a bench builds exactly the settings its starter chose, whatever
    RLP_* the starter's shell holds; a field left unset (None) is not written and stays unset."""
    chosen = Settings(
        store="cassandra",
        sqlite=SqliteSettings(path=tmp_path / "x.sqlite"),
        cassandra=CassandraSettings(port=9100, ssl=True),
        ingest_trigger_seconds=0.25,
    )
    env = settings_env(chosen, {"PATH": "/bin", "RLP_RAY_ADDRESS": "auto", "RLP_SHARD_COUNT": "9"})

    assert env["PATH"] == "/bin"
    assert "RLP_RAY_ADDRESS" not in env and env["RLP_SHARD_COUNT"] == str(chosen.shard_count)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == chosen
