"""One settings object for every process of the platform (env prefix ``RLP_``).

Each store adapter owns its settings: a section defined next to the adapter (``store/sqlite_settings.py``,
``store/cassandra_settings.py``) with its own prefix (``RLP_SQLITE_*``, ``RLP_CASSANDRA_*``), nested here
as ``settings.sqlite`` and ``settings.cassandra``. A section reads its variables itself when ``Settings``
is built; to override some of its fields, pass a section (``Settings(sqlite=SqliteSettings(path=p))``),
which still reads the rest from the environment.

AWS endpoints are deliberately not settings: boto3 reads the SDK's standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_KINESIS``, ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``), so no
code path knows whether it talks to moto, LocalStack or AWS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from rlplatform.store.cassandra_settings import CassandraSettings
from rlplatform.store.sqlite_settings import SqliteSettings

# A micro-batch of ingest reads at most this many bytes of records (plus one GetRecords response per shard).
DEFAULT_INGEST_MAX_BATCH_BYTES = 16 * 1024 * 1024


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

    profile: Literal["embedded", "compose", "aws"] = "embedded"
    stream_name: str = Field("rlp-experience", min_length=1, max_length=128)
    shard_count: int = Field(2, ge=1, le=64)
    bucket: str = Field("rlp-models", min_length=3, max_length=63)
    store: Literal["sqlite", "cassandra"] = "sqlite"
    # Each store adapter's section, one per name ``store`` accepts: RLP_SQLITE_*, RLP_CASSANDRA_*.
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings)
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    checkpoint_dir: Path = Path("runs/checkpoints")
    # Seconds between micro-batches of the ingest job; 0 runs them back to back.
    ingest_trigger_seconds: float = Field(1.0, ge=0)
    # Bounds ingest's memory under any backlog; at least one maximum-size record (1 MiB).
    ingest_max_batch_bytes: int = Field(DEFAULT_INGEST_MAX_BATCH_BYTES, ge=1024 * 1024, le=1024**3)
    # Port of the ingest job's Spark UI and its REST API (/api/v1: executors, tasks, streaming queries); None: off.
    # It binds SPARK_LOCAL_IP when set, else every interface.
    ingest_ui_port: int | None = Field(None, ge=1, le=65535)
    # Ray cluster for the trainer's learner ("host:port" or "auto"); None runs the learner in-process.
    ray_address: str | None = None

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


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI options) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
