"""rlplatform game-client SDK: stream experience to Kinesis, pull verified ONNX models from S3."""

from .contract import (
    MAX_RECORD_BYTES,
    MAX_STEPS_PER_CHUNK,
    SCHEMA_VERSION,
    Chunk,
    ContractError,
    Step,
    decode_chunk,
    encode_chunk,
)
from .games import GameSpec, GameSpecConflict, GameSpecError, declare_game
from .models import (
    ManifestError,
    ModelError,
    ModelManifest,
    latest_key,
    manifest_key,
    model_key,
    publish_model,
    sha256_hex,
)
from .producer import BufferFullError, ExperienceProducer
from .subscriber import (
    ModelFitError,
    ModelIntegrityError,
    ModelLoadError,
    ModelMissingError,
    ModelSubscriber,
    NoModelError,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_STEPS_PER_CHUNK",
    "SCHEMA_VERSION",
    "BufferFullError",
    "Chunk",
    "ContractError",
    "ExperienceProducer",
    "GameSpec",
    "GameSpecConflict",
    "GameSpecError",
    "ManifestError",
    "ModelError",
    "ModelFitError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelManifest",
    "ModelMissingError",
    "ModelSubscriber",
    "NoModelError",
    "Step",
    "__version__",
    "declare_game",
    "decode_chunk",
    "encode_chunk",
    "latest_key",
    "manifest_key",
    "model_key",
    "publish_model",
    "sha256_hex",
]
