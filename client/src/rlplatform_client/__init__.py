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
from .credentials import TemporaryCredentials, refreshing_session
from .games import GameSpec, GameSpecConflict, GameSpecError, declare_game
from .models import (
    ManifestDocument,
    ManifestError,
    ModelError,
    ModelManifest,
    ModelSignatureError,
    latest_key,
    manifest_key,
    model_key,
    publish_model,
    sha256_hex,
)
from .producer import BufferFullError, ExperienceProducer
from .signing import SignatureError, load_trusted_keys
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
    "ManifestDocument",
    "ManifestError",
    "ModelError",
    "ModelFitError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelManifest",
    "ModelMissingError",
    "ModelSignatureError",
    "ModelSubscriber",
    "NoModelError",
    "SignatureError",
    "Step",
    "TemporaryCredentials",
    "__version__",
    "declare_game",
    "decode_chunk",
    "encode_chunk",
    "latest_key",
    "load_trusted_keys",
    "manifest_key",
    "model_key",
    "publish_model",
    "refreshing_session",
    "sha256_hex",
]
