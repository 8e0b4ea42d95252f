"""Settings of the Cassandra adapter (``store/cassandra.py``), from ``RLP_CASSANDRA_*``: Apache Cassandra,
ScyllaDB or Amazon Keyspaces.

A module of its own because the adapter imports cassandra-driver at its top, and ``rlplatform.settings``
nests this section: the settings of the embedded profile must load without the driver.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CassandraSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLP_CASSANDRA_", extra="forbid")

    # Comma-separated hosts.
    contact_points: str = "127.0.0.1"
    port: int = Field(9042, ge=1, le=65535)
    keyspace: str = Field("rlplatform", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
    replication_factor: int = Field(1, ge=1)
    local_dc: str | None = None
    # Retention: every row expires this long after it was written (Cassandra TTL).
    ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    username: str | None = None
    password: str | None = None
    # TLS to the cluster (required by Amazon Keyspaces); optional CA bundle path.
    ssl: bool = False
    ssl_ca: Path | None = None
    # Amazon Keyspaces: authenticate with SigV4 from the standard AWS credential chain.
    sigv4: bool = False
