"""Model registry layout in S3, shared by the publisher (platform) and the subscriber (game client).

Layout (``version`` is an int >= 1, zero-padded so keys sort by version)::

    models/{game_id}/v{version:06d}/model.onnx     the ONNX bytes
    models/{game_id}/v{version:06d}/manifest.json  the signed manifest (immutable once written)
    models/{game_id}/latest.json                   pointer; its body IS the newest signed manifest

Publishers write the model, then its manifest, then the pointer, so a reader that sees a pointer can
always fetch the model it names. A manifest document is a DSSE envelope (``signing.py``) whose payload is the
manifest's JSON: the signature covers the model's ``sha256``, so it vouches for the model bytes too. Subscribers
verify the signature, then ``sha256``, before loading anything. A document that is a bare manifest (what
publishers wrote before signatures) is unsigned.

ONNX convention: one input named ``"obs"``, float32 ``[batch, obs_dim]``. The manifest's ``output``
(``{"name": ..., "kind": ...}``) names the graph output to read and how to act on it:

* ``"kind": "q_values"`` (discrete ``action_space={"type": "discrete", "n": N}``; DQN): output
  ``[batch, N]``; the greedy action is the argmax.
* ``"kind": "action"`` (box ``{"type": "box", "shape": [k], "low": [...], "high": [...]}``; SAC): output
  ``[batch, k]`` is the action itself, inside ``low``/``high`` (clip anyway; a ``null`` bound is unbounded).
  An optional ``"sample"`` names a second output of the same shape: an action drawn from the policy's own
  distribution (a new draw per run), what a client explores with (SAC's squashed Gaussian).

Manifests written before ``output`` existed lack it: read them as the graph's first output, of kind
``q_values`` for discrete action spaces and ``action`` for box ones.

Spaces are JSON: bounds must be finite numbers or ``null`` (JSON has no Infinity).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .signing import Envelope, SignatureError, sign

MODEL_PREFIX = "models"
# S3 error codes for "no such key" (S3 says NoSuchKey; a HEAD or some S3-compatible stores say 404/NotFound).
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
INPUT_NAME = "obs"
OUTPUT_KINDS = {"discrete": "q_values", "box": "action"}  # the kind of output each action space is acted on with
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ModelError(Exception):
    """Base class for model registry / loading errors."""


class ModelSignatureError(ModelError):
    """A manifest whose signature is missing, by a key the client does not trust, or does not verify."""


class ManifestError(ModelError, ValueError):
    """A manifest that is not valid JSON or breaks the schema. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"manifest.{field}: {reason}")
        self.field = field
        self.reason = reason


def model_key(game_id: str, version: int) -> str:
    return f"{_version_prefix(game_id, version)}/model.onnx"


def manifest_key(game_id: str, version: int) -> str:
    return f"{_version_prefix(game_id, version)}/manifest.json"


def latest_key(game_id: str) -> str:
    return f"{MODEL_PREFIX}/{game_id}/latest.json"


def _version_prefix(game_id: str, version: int) -> str:
    if not game_id or "/" in game_id:
        raise ValueError(f"game_id must be non-empty and contain no '/': {game_id!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    return f"{MODEL_PREFIX}/{game_id}/v{version:06d}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelManifest:
    """Describes one published model version. Serialised as the manifest and the latest pointer."""

    game_id: str
    version: int
    sha256: str
    onnx_key: str
    algorithm: str
    learner_step: int
    eval_return: float | None
    observation_space: dict
    action_space: dict
    created_at: str
    output: dict | None = None  # {"name", "kind"}; None in manifests older than the field

    def __post_init__(self) -> None:
        _validate(asdict(self))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False).encode()

    @property
    def created_at_unix(self) -> float:
        """``created_at`` (the publish stamp) as Unix seconds."""
        return _timestamp(self.created_at).timestamp()

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelManifest:
        """Parse and validate; raises ``ManifestError`` naming the offending field."""
        return cls.from_doc(json_object(data))

    @classmethod
    def from_doc(cls, doc: dict) -> ModelManifest:
        _validate(doc)
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})

    @property
    def output_kind(self) -> str:
        """How to act on the model's output: ``"q_values"`` (argmax) or ``"action"`` (the action itself)."""
        return self.output["kind"] if self.output else OUTPUT_KINDS[self.action_space["type"]]

    @classmethod
    def create(
        cls,
        game_id: str,
        version: int,
        onnx_bytes: bytes,
        *,
        algorithm: str,
        learner_step: int,
        observation_space: dict,
        action_space: dict,
        eval_return: float | None = None,
        output: dict | None = None,
    ) -> ModelManifest:
        """Manifest for ``onnx_bytes`` at its canonical key, stamped now (UTC)."""
        return cls(
            game_id=game_id,
            version=version,
            sha256=sha256_hex(onnx_bytes),
            onnx_key=model_key(game_id, version),
            algorithm=algorithm,
            learner_step=learner_step,
            eval_return=eval_return,
            observation_space=observation_space,
            action_space=action_space,
            created_at=datetime.now(timezone.utc).isoformat(),
            output=output,
        )


@dataclass(frozen=True)
class ManifestDocument:
    """What a pointer or a version's ``manifest.json`` holds: the manifest and the envelope that signs it
    (None: a bare manifest, unsigned)."""

    manifest: ModelManifest
    envelope: Envelope | None

    @classmethod
    def from_json(cls, data: bytes) -> ManifestDocument:
        """Raises ``ManifestError`` (not a manifest) or ``ModelSignatureError`` (a malformed envelope)."""
        doc = json_object(data)
        if "payloadType" not in doc:
            return cls(ModelManifest.from_doc(doc), None)
        try:
            envelope = Envelope.from_doc(doc)
        except SignatureError as exc:
            raise ModelSignatureError(str(exc)) from None
        return cls(ModelManifest.from_json(envelope.payload), envelope)


def manifest_document(manifest: ModelManifest, signing_key: Ed25519PrivateKey | None) -> bytes:
    """The manifest as published: signed by ``signing_key``, or bare (unsigned) without one."""
    body = manifest.to_json()
    return body if signing_key is None else sign(body, signing_key).to_json()


def greedy_action(row: np.ndarray, kind: str, action_space: dict) -> int | np.ndarray:
    """The action for one row of a model's output: the argmax of ``q_values`` (int), or the ``action``
    (float32[k]) clipped to the box (``null`` bounds: unbounded)."""
    if kind == "q_values":
        return int(np.argmax(row))
    low = np.array([-np.inf if v is None else v for v in action_space["low"]], dtype=np.float32)
    high = np.array([np.inf if v is None else v for v in action_space["high"]], dtype=np.float32)
    return np.clip(np.asarray(row, dtype=np.float32), low, high)


def publish_model(
    s3: Any,
    bucket: str,
    manifest: ModelManifest,
    onnx_bytes: bytes,
    signing_key: Ed25519PrivateKey | None,
    *,
    pointer: bool = True,
) -> None:
    """Write model, manifest, then pointer (in that order, so the pointer never names a missing model), the
    manifest signed by ``signing_key`` (None publishes it unsigned: clients refuse it unless they accept
    unsigned models). ``pointer=False`` leaves the pointer to whoever releases versions (``releases.py``)."""
    body = manifest_document(manifest, signing_key)
    s3.put_object(Bucket=bucket, Key=manifest.onnx_key, Body=onnx_bytes, ContentType="application/octet-stream")
    s3.put_object(
        Bucket=bucket,
        Key=manifest_key(manifest.game_id, manifest.version),
        Body=body,
        ContentType="application/json",
    )
    if pointer:
        s3.put_object(Bucket=bucket, Key=latest_key(manifest.game_id), Body=body, ContentType="application/json")


# ---------------------------------------------------------------------- validation


def json_object(data: bytes | str, error: Callable[[str, str], ModelError] = ManifestError) -> dict:
    """``data`` parsed as a JSON object; ``error(field, reason)`` (a manifest's, by default) when it is not one."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error("(document)", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error("(document)", "must be a JSON object")
    return doc


def _validate(doc: dict) -> None:
    _str(doc, "game_id")
    _int(doc, "version", minimum=1)
    if not _SHA256_RE.match(_str(doc, "sha256")):
        raise ManifestError("sha256", "must be 64 lowercase hex characters")
    _str(doc, "onnx_key")
    _str(doc, "algorithm")
    _int(doc, "learner_step", minimum=0)
    _eval_return(doc)
    observation = _space(doc, "observation_space")
    if observation["type"] != "box" or len(observation["shape"]) != 1:
        raise ManifestError("observation_space", f"must be a 1-D box (float32[obs_dim]), got {observation!r}")
    _action_space(doc)
    _output(doc)
    try:
        _timestamp(_str(doc, "created_at"))
    except ValueError:
        raise ManifestError("created_at", f"not an ISO 8601 timestamp: {doc['created_at']!r}") from None


def _timestamp(iso: str) -> datetime:
    # Python 3.10's fromisoformat does not accept the common "Z" suffix.
    return datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", iso))


def _get(doc: dict, key: str) -> Any:
    if key not in doc:
        raise ManifestError(key, "missing")
    return doc[key]


def _str(doc: dict, key: str) -> str:
    value = _get(doc, key)
    if not isinstance(value, str) or not value:
        raise ManifestError(key, f"must be a non-empty string, got {value!r}")
    return value


def _int(doc: dict, key: str, minimum: int) -> int:
    value = _get(doc, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ManifestError(key, f"must be an int >= {minimum}, got {value!r}")
    return value


def _eval_return(doc: dict) -> None:
    value = _get(doc, "eval_return")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError("eval_return", f"must be a finite number or null, got {value!r}")


def _space(doc: dict, key: str) -> dict:
    value = _get(doc, key)
    if not isinstance(value, dict) or value.get("type") not in ("discrete", "box"):
        raise ManifestError(key, f'must be an object with "type" "discrete" or "box", got {value!r}')
    if value["type"] == "discrete":
        n = value.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ManifestError(f"{key}.n", f"must be an int >= 1, got {n!r}")
        return value
    shape = value.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ManifestError(f"{key}.shape", f"must be a non-empty list of positive ints, got {shape!r}")
    return value


def _action_space(doc: dict) -> None:
    space = _space(doc, "action_space")
    if space["type"] == "discrete":
        return
    if len(space["shape"]) != 1:
        raise ManifestError("action_space.shape", f"continuous actions must be 1-D [k], got {space['shape']}")
    k = space["shape"][0]
    for bound in ("low", "high"):
        values = space.get(bound)
        if not isinstance(values, list) or len(values) != k or not all(_is_number(v) for v in values):
            raise ManifestError(f"action_space.{bound}", f"must be a list of {k} numbers or nulls, got {values!r}")


def _output(doc: dict) -> None:
    output = doc.get("output")
    if output is None:
        return
    if not isinstance(output, dict):
        raise ManifestError("output", f'must be an object with "name" and "kind", got {output!r}')
    if not isinstance(output.get("name"), str) or not output["name"]:
        raise ManifestError("output.name", f"must be a non-empty string, got {output.get('name')!r}")
    kind = OUTPUT_KINDS[doc["action_space"]["type"]]
    sample = output.get("sample")
    if sample is not None and kind != "action":
        raise ManifestError("output.sample", f"only an action model has one, not a {kind!r} model")
    if sample is not None and (not isinstance(sample, str) or not sample or sample == output["name"]):
        raise ManifestError("output.sample", f"must be a non-empty string other than output.name, got {sample!r}")
    if output.get("kind") != kind:
        raise ManifestError(
            "output.kind",
            f"must be {kind!r} for a {doc['action_space']['type']} action space, got {output.get('kind')!r}",
        )


def _is_number(value: Any) -> bool:
    """A finite bound, or None for "unbounded" (JSON has no Infinity)."""
    if value is None:
        return True
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore ``ClientError``."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: Any) -> bool:
    """A botocore ``ClientError`` that means the object does not exist."""
    return error_code(exc) in MISSING_CODES
