"""Cassandra adapter checks that need no server: the CQL it runs, and failing fast when nobody answers."""

from __future__ import annotations

import re
import socket
import time

import pytest

from rlplatform.settings import CassandraSettings, Settings
from rlplatform.store import open_store
from rlplatform.store.cassandra import (
    KEYSPACE_EXISTS_CQL,
    KEYSPACE_TABLES_CQL,
    KEYSPACES_TABLE_STATUS_CQL,
    TTL_TABLES,
    CassandraUnavailable,
    keyspace_cql,
    schema_cql,
    statements,
)

KS = "rlp"
DDL = {**schema_cql(KS), **{f"{t} (keyspaces)": c for t, c in schema_cql(KS, keyspaces_service=True).items()}}
DML = statements(KS, ttl_seconds=3600)
PROBES = {
    "keyspace_exists": KEYSPACE_EXISTS_CQL,
    "keyspace_tables": KEYSPACE_TABLES_CQL,
    "keyspaces_table_status": KEYSPACES_TABLE_STATUS_CQL,
}
# Partition keys of the system tables the schema probes read.
SYSTEM_PARTITION_KEYS = {
    "system_schema.keyspaces": ["keyspace_name"],
    "system_schema.tables": ["keyspace_name"],
    "system_schema_mcs.tables": ["keyspace_name"],
}


def _partition_keys() -> dict[str, list[str]]:
    """Partition key columns of each table, parsed from its CREATE TABLE statement."""
    keys = {}
    for cql in schema_cql(KS).values():
        table = re.search(r"CREATE TABLE IF NOT EXISTS (\S+) \(", cql).group(1)
        if m := re.search(r"PRIMARY KEY \(\(([^)]*)\)", cql):  # composite: PRIMARY KEY ((a, b), c)
            keys[table] = [c.strip() for c in m.group(1).split(",")]
        elif m := re.search(r"PRIMARY KEY \((\w+)", cql):  # PRIMARY KEY (a, b)
            keys[table] = [m.group(1)]
        else:  # a PRIMARY KEY column
            keys[table] = [re.search(r"(\w+) \w+ PRIMARY KEY", cql).group(1)]
    return keys | SYSTEM_PARTITION_KEYS


ALL = {**DDL, **DML, **PROBES, "keyspace": keyspace_cql(CassandraSettings())}


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_allow_filtering_indexes_views_counters_or_batches(name: str) -> None:
    cql = ALL[name].upper()
    for banned in ("ALLOW FILTERING", "CREATE INDEX", "CUSTOM INDEX", "MATERIALIZED VIEW", "COUNTER", "BATCH"):
        assert banned not in cql, (name, ALL[name])


@pytest.mark.parametrize("name", sorted({**DML, **PROBES}))
def test_every_read_update_and_delete_names_the_full_partition_key_by_equality(name: str) -> None:
    cql = {**DML, **PROBES}[name]
    verb = cql.split()[0].upper()
    if verb == "INSERT":
        return
    table = re.search(r"(?:FROM|UPDATE) (\S+)", cql).group(1)
    where = cql.split(" WHERE ", 1)[1]
    for column in _partition_keys()[table]:
        assert re.search(rf"\b{column} = (\?|%s)", where), (name, column, cql)
        assert not re.search(rf"\b{column} IN\b", where), (name, column, cql)


def test_experience_inserts_carry_the_ttl_and_metadata_tables_are_small() -> None:
    inserts = {name: cql for name, cql in DML.items() if cql.startswith("INSERT")}
    ttl_tables = {f"{KS}.{t}" for t in TTL_TABLES}
    for name, cql in inserts.items():
        table = cql.split()[2]
        if table in ttl_tables:
            assert cql.endswith("USING TTL 3600"), (name, cql)
        else:  # games and seq_alloc: one row per game, no TTL (they must outlive the data)
            assert table in (f"{KS}.games", f"{KS}.seq_alloc"), (name, cql)
    assert {cql.split()[2] for cql in inserts.values()} >= ttl_tables


def test_keyspaces_tables_enable_ttl_and_plain_cassandra_tables_do_not() -> None:
    for table in TTL_TABLES:
        assert "CUSTOM_PROPERTIES" in schema_cql(KS, keyspaces_service=True)[table]
    assert not any("CUSTOM_PROPERTIES" in cql for cql in schema_cql(KS).values())


def test_keyspace_replication_per_target() -> None:
    assert "SimpleStrategy" in keyspace_cql(CassandraSettings(replication_factor=3))
    assert "'dc1': 3" in keyspace_cql(CassandraSettings(local_dc="dc1", replication_factor=3))
    keyspaces = CassandraSettings(contact_points="cassandra.eu-west-1.amazonaws.com", port=9142)
    assert "SingleRegionStrategy" in keyspace_cql(keyspaces)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_store_fails_fast_naming_the_contact_points() -> None:
    settings = Settings(store="cassandra", cassandra=CassandraSettings(contact_points="127.0.0.1", port=_closed_port()))
    started = time.monotonic()
    with pytest.raises(CassandraUnavailable, match=rf"127\.0\.0\.1 port {settings.cassandra.port}"):
        open_store(settings)
    assert time.monotonic() - started < 5
