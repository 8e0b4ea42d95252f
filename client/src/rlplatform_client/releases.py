"""A game's release state: which model version its clients play, shared by the platform (writer) and clients.

One object per game, ``models/{game_id}/release.json``, a DSSE envelope (``signing.py``, payload type
``RELEASE_PAYLOAD_TYPE``) whose payload is::

    {"game_id": "CartPole-v1", "revision": 7, "stable": 3, "candidate": 5, "share": 0.1, "pinned": false,
     "updated_at": "2026-12-04T20:00:00+00:00"}

The rule every client follows, in any language:

1. read the object and verify its signature with the game's trusted keys (as a manifest's); refuse one whose
   ``game_id`` is another game's or whose ``revision`` is lower than one already seen (an old state replayed);
2. play ``candidate`` if there is one and the client is in its share, else ``stable``. A client is in the share
   when the first 8 bytes of ``sha256("{game_id}/{candidate}/{client_id}")``, read as a big-endian unsigned
   integer, are below ``share * 2**64``: the same client stays in (or out) for as long as that candidate lasts,
   and each candidate goes to a different sample of clients;
3. load that version's manifest, ``models/{game_id}/v{version:06d}/manifest.json``, and its model as for any
   manifest (signature, sha256, fit). A version lower than the one held is loaded too: that is a rollback.

A bucket without the object (nothing published through releases yet) is read through the latest pointer instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .models import MODEL_PREFIX, ModelError, ModelSignatureError, json_object
from .signing import RELEASE_PAYLOAD_TYPE, Envelope, SignatureError, TrustedKeys, sign

# A release state is ~200 bytes; a larger object is refused without being read on.
MAX_RELEASE_BYTES = 16 * 1024


class ReleaseError(ModelError, ValueError):
    """A release state that is not valid; the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"release state: {field}: {reason}")
        self.field = field


def release_key(game_id: str) -> str:
    return f"{MODEL_PREFIX}/{game_id}/release.json"


def in_candidate_share(game_id: str, candidate: int, client_id: str, share: float) -> bool:
    """Whether ``client_id`` plays the candidate (rule 2 of the module's docstring)."""
    digest = hashlib.sha256(f"{game_id}/{candidate}/{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


@dataclass(frozen=True)
class ReleaseState:
    game_id: str
    revision: int  # 1 for the first state, one more per change
    stable: int  # the version every client not in the candidate's share plays
    candidate: int | None = None
    share: float = 0.0  # of clients playing the candidate, in [0, 1]
    pinned: bool = False  # no automatic promotion while set
    updated_at: str = ""

    def __post_init__(self) -> None:
        _check(asdict(self))

    def version_for(self, client_id: str | None) -> int:
        """The version ``client_id`` plays; a client without an id plays the stable one."""
        candidate = self.candidate
        if (
            candidate is not None
            and client_id is not None
            and in_candidate_share(self.game_id, candidate, client_id, self.share)
        ):
            return candidate
        return self.stable

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReleaseState:
        doc = json_object(data, ReleaseError)
        _check(doc)
        if unknown := sorted(set(doc) - set(cls.__dataclass_fields__)):
            raise ReleaseError(unknown[0], "unknown field")
        return cls(**doc)


def release_document(state: ReleaseState, signing_key: Ed25519PrivateKey) -> bytes:
    """The release state as stored: signed by ``signing_key``."""
    return sign(state.to_json(), signing_key, RELEASE_PAYLOAD_TYPE).to_json()


def read_release_document(data: bytes, trusted: TrustedKeys, verify: bool = True) -> tuple[ReleaseState, str]:
    """The state a stored document holds and the id of the trusted key that signed it (``verify=False``, for a
    client that accepts unsigned models in development: "unverified", and the signature is not checked).

    Raises ``ReleaseError`` (not a release state) or ``ModelSignatureError`` (unsigned, or not by a trusted key).
    """
    if len(data) > MAX_RELEASE_BYTES:
        raise ReleaseError("(document)", f"larger than {MAX_RELEASE_BYTES} bytes")
    doc = json_object(data, ReleaseError)
    try:
        envelope = Envelope.from_doc(doc, RELEASE_PAYLOAD_TYPE)
        signer = envelope.verify(trusted) if verify else "unverified"
    except SignatureError as exc:
        raise ModelSignatureError(f"release state: {exc}") from None
    return ReleaseState.from_json(envelope.payload), signer


def _check(doc: dict[str, Any]) -> None:
    game_id = doc.get("game_id")
    if not isinstance(game_id, str) or not game_id:
        raise ReleaseError("game_id", f"must be a non-empty string, got {game_id!r}")
    for name in ("revision", "stable"):
        value = doc.get(name)
        if type(value) is not int or value < 1:
            raise ReleaseError(name, f"must be an int >= 1, got {value!r}")
    candidate = doc.get("candidate")
    if candidate is not None and (type(candidate) is not int or candidate < 1):
        raise ReleaseError("candidate", f"must be null or an int >= 1, got {candidate!r}")
    share = doc.get("share", 0.0)
    if type(share) not in (int, float) or not math.isfinite(share) or not 0 <= share <= 1:
        raise ReleaseError("share", f"must be a number in [0, 1], got {share!r}")
    if type(doc.get("pinned", False)) is not bool:
        raise ReleaseError("pinned", f"must be true or false, got {doc['pinned']!r}")
    if not isinstance(doc.get("updated_at", ""), str):
        raise ReleaseError("updated_at", f"must be a string, got {doc['updated_at']!r}")
