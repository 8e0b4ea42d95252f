"""One settings object for every process of the platform (env prefix ``RLP_``).

AWS endpoints are deliberately not settings: boto3 reads the SDK's standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_KINESIS``, ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``), so no
code path knows whether it talks to moto, LocalStack or AWS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# A micro-batch of ingest reads at most this many bytes of records (plus one GetRecords response per shard).
DEFAULT_INGEST_MAX_BATCH_BYTES = 16 * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLP_", extra="ignore")

    profile: Literal["embedded", "compose", "aws"] = "embedded"
    stream_name: str = Field("rlp-experience", min_length=1, max_length=128)
    shard_count: int = Field(2, ge=1, le=64)
    bucket: str = Field("rlp-models", min_length=3, max_length=63)
    store: Literal["sqlite", "cassandra"] = "sqlite"
    sqlite_path: Path = Path("runs/experience.sqlite")
    # Cassandra / ScyllaDB / Amazon Keyspaces (store="cassandra"). Contact points: comma-separated hosts.
    cassandra_contact_points: str = "127.0.0.1"
    cassandra_port: int = Field(9042, ge=1, le=65535)
    cassandra_keyspace: str = Field("rlplatform", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
    cassandra_replication_factor: int = Field(1, ge=1)
    cassandra_local_dc: str | None = None
    # Retention: every row expires this long after it was written (Cassandra TTL).
    cassandra_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    cassandra_username: str | None = None
    cassandra_password: str | None = None
    # TLS to the cluster (required by Amazon Keyspaces); optional CA bundle path.
    cassandra_ssl: bool = False
    cassandra_ssl_ca: Path | None = None
    # Amazon Keyspaces: authenticate with SigV4 from the standard AWS credential chain.
    cassandra_sigv4: bool = False
    checkpoint_dir: Path = Path("runs/checkpoints")
    # Seconds between micro-batches of the ingest job; 0 runs them back to back.
    ingest_trigger_seconds: float = Field(1.0, ge=0)
    # Bounds ingest's memory under any backlog; at least one maximum-size record (1 MiB).
    ingest_max_batch_bytes: int = Field(DEFAULT_INGEST_MAX_BATCH_BYTES, ge=1024 * 1024, le=1024**3)
    # Ray cluster for the trainer's learner ("host:port" or "auto"); None runs the learner in-process.
    ray_address: str | None = None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI options) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
