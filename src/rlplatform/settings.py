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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLP_", extra="ignore")

    profile: Literal["embedded", "compose", "aws"] = "embedded"
    stream_name: str = Field("rlp-experience", min_length=1, max_length=128)
    shard_count: int = Field(2, ge=1, le=64)
    bucket: str = Field("rlp-models", min_length=3, max_length=63)
    store: Literal["sqlite"] = "sqlite"
    sqlite_path: Path = Path("runs/experience.sqlite")
    checkpoint_dir: Path = Path("runs/checkpoints")
    # Seconds between micro-batches of the ingest job; 0 runs them back to back.
    ingest_trigger_seconds: float = Field(1.0, ge=0)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI options) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
