"""One settings object for every process of the platform (env prefix ``RLP_``).

Each store adapter has a settings section of its own prefix (``RLP_SQLITE_*``, ``RLP_CASSANDRA_*``), defined
here and nested as ``settings.sqlite`` and ``settings.cassandra``: loading the settings never loads an adapter
or its driver, and the store imports the settings, never the other way round. A section reads its variables
itself when ``Settings`` is built; to override some of its fields, pass a section
(``Settings(sqlite=SqliteSettings(path=p))``), which still reads the rest from the environment.

AWS endpoints are deliberately not settings: boto3 reads the SDK's standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_KINESIS``, ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``), so no
code path knows whether it talks to moto, LocalStack or AWS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from rlplatform_client.contract import DEFAULT_BUCKET, DEFAULT_STREAM_NAME

# A game's store holds at most this many transitions by default: the capacity replay buffers commonly use.
DEFAULT_MAX_TRANSITIONS_PER_GAME = 1_000_000
# A micro-batch of ingest reads at most this many bytes of records (plus one GetRecords response per shard).
DEFAULT_INGEST_MAX_BATCH_BYTES = 16 * 1024 * 1024
# rlplatform dashboard (and the one `up` starts): where it listens, and how often it reads the bucket and store.
DEFAULT_DASHBOARD_PORT = 8050
DEFAULT_DASHBOARD_REFRESH_S = 5.0
# ... and how often at most it LISTs (the catalog, a game's versions, the dead letters) when nothing said they changed.
DEFAULT_DASHBOARD_LIST_S = 60.0


class SqliteSettings(BaseSettings):
    """The SQLite adapter's section (``store/sqlite.py``, embedded profile)."""

    model_config = SettingsConfigDict(env_prefix="RLP_SQLITE_", extra="forbid")

    path: Path = Field(
        Path("runs/experience.sqlite"), description="The SQLite file (WAL mode) of the experience store."
    )


class CassandraSettings(BaseSettings):
    """The Cassandra adapter's section (``store/cassandra.py``): Apache Cassandra, ScyllaDB or Amazon Keyspaces."""

    model_config = SettingsConfigDict(env_prefix="RLP_CASSANDRA_", extra="forbid")

    contact_points: str = Field("127.0.0.1", description="Comma-separated hosts of the cluster.")
    port: int = Field(9042, ge=1, le=65535, description="The CQL port.")
    keyspace: str = Field(
        "rlplatform", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$", description="Keyspace of the experience tables."
    )
    replication_factor: int = Field(1, ge=1, description="Replication factor of a keyspace the platform creates.")
    local_dc: str | None = Field(None, description="The data centre the driver prefers; unset: the driver's choice.")
    ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="Retention: every row expires this long after it was written (TTL)."
    )
    username: str | None = Field(None, description="Plain-text authentication user; unset: no authentication.")
    password: str | None = Field(None, description="Plain-text authentication password.")
    ssl: bool = Field(False, description="TLS to the cluster (required by Amazon Keyspaces).")
    ssl_ca: Path | None = Field(None, description="CA bundle for TLS; unset: the system's.")
    sigv4: bool = Field(
        False, description="Amazon Keyspaces: authenticate with SigV4 from the standard AWS credential chain."
    )


def _is_section(field: FieldInfo) -> bool:
    """A nested settings class: it reads its own prefixed variables."""
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)


class _OwnFieldsEnv(EnvSettingsSource):
    """The environment for the fields of ``Settings`` itself: a section is never read as one JSON variable
    (``RLP_CASSANDRA``), only field by field, by the section (its ``default_factory``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if _is_section(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    # extra="forbid": a name that is not a field (e.g. a flat ``sqlite_path=``) fails instead of being dropped.
    model_config = SettingsConfigDict(env_prefix="RLP_", extra="forbid")

    profile: Literal["embedded", "compose", "aws"] = Field(
        "embedded", description="Where the platform runs; the endpoints themselves come from the AWS SDK's variables."
    )
    stream_name: str = Field(DEFAULT_STREAM_NAME, min_length=1, max_length=128, description="The Kinesis stream.")
    shard_count: int = Field(2, ge=1, le=64, description="Shards of a stream the platform creates.")
    bucket: str = Field(
        DEFAULT_BUCKET, min_length=3, max_length=63, description="The S3 bucket: models, game catalog, dead letters."
    )
    store: Literal["sqlite", "cassandra"] = Field("sqlite", description="The experience store's adapter.")
    # Each store adapter's section, one per name ``store`` accepts: RLP_SQLITE_*, RLP_CASSANDRA_*.
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings)
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    max_transitions_per_game: int = Field(
        DEFAULT_MAX_TRANSITIONS_PER_GAME,
        ge=1_000,
        le=10**10,
        description="Retention: ingest keeps at most this many transitions per game in the store and drops the "
        "oldest (beside the Cassandra TTL), like a replay buffer of this capacity; sampling is uniform over them.",
    )
    ingest_trigger_seconds: float = Field(
        1.0, ge=0, description="Seconds between micro-batches of the ingest job; 0 runs them back to back."
    )
    ingest_max_batch_bytes: int = Field(
        DEFAULT_INGEST_MAX_BATCH_BYTES,
        ge=1024 * 1024,
        le=1024**3,
        description="Record bytes one ingest micro-batch reads at most: bounds ingest's memory under any backlog.",
    )
    ingest_status_seconds: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Ingest writes its status (lag, batch counts) to `ingest/status.json` in the bucket this "
        "often while it runs, batches or none (one PUT per interval: ~8,640 a day at 10 s).",
    )
    ingest_ui_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the ingest job's Spark UI and REST API (/api/v1); binds SPARK_LOCAL_IP when set, "
        "else every interface. Unset: off.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="The Ed25519 private key (PEM) the trainer signs every model it publishes with: a keyring's "
        "signing.key (`rlplatform keys init`). Read at each publish, so a rotated key is used without a restart.",
    )
    signing_key: SecretStr | None = Field(
        None, description="The signing key's PEM text itself, for a secret injected as a variable; wins over the file."
    )
    ray_address: str | None = Field(
        None, description='Ray cluster for the trainer\'s learner ("host:port" or "auto"); unset: in-process.'
    )
    dashboard_token: SecretStr | None = Field(
        None,
        description="What every request to `rlplatform dashboard` must carry when it listens off loopback; unset "
        "or empty: it makes one and prints the URL with it.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _OwnFieldsEnv(settings_cls), dotenv_settings, file_secret_settings


def env_var_names(settings_cls: type[BaseSettings] = Settings) -> set[str]:
    """Every variable the settings read: ``RLP_<FIELD>``, and ``RLP_<SECTION>_<FIELD>`` for each section's."""
    prefix = settings_cls.model_config["env_prefix"]
    names: set[str] = set()
    for name, field in settings_cls.model_fields.items():
        names |= env_var_names(field.annotation) if _is_section(field) else {(prefix + name).upper()}
    return names


def settings_env(settings: BaseSettings, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (a child process's environment) with every ``RLP_*`` variable replaced by ``settings``' own, so
    the child builds exactly these settings whatever the parent's shell holds. A field at None is left unset
    (its default)."""
    env = {k: v for k, v in base.items() if not k.startswith(Settings.model_config["env_prefix"])}
    return env | _as_env(settings)


def _as_env(settings: BaseSettings) -> dict[str, str]:
    prefix = settings.model_config["env_prefix"]
    env: dict[str, str] = {}
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if _is_section(field):
            env |= _as_env(value)
        elif isinstance(value, SecretStr):
            env[(prefix + name).upper()] = value.get_secret_value()
        elif value is not None:
            env[(prefix + name).upper()] = json.dumps(value) if isinstance(value, bool) else str(value)
    return env


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI options) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
