"""Model signatures: a DSSE envelope (https://github.com/secure-systems-lab/dsse) with Ed25519 signatures.

Why Ed25519 through ``cryptography``: a public key is 32 bytes a game can ship as one short PEM block, a
signature is 64 bytes, verifying takes microseconds, and every language a game is written in has a verifier
(OpenSSL >= 1.1.1, libsodium, .NET through NSec or BouncyCastle, Go's standard library). OpenSSF's
``model-signing`` signs a model's files on disk through sigstore bundles: more machinery than a game client
needs to check one manifest, and not available outside Python.

Why DSSE: the signature covers exact bytes (the manifest's JSON as published, base64 in the envelope), so a
verifier never re-serialises JSON, and the payload type is signed with them, so a signature made for one kind
of document cannot be replayed as another. What is signed (``pae``)::

    b"DSSEv1 " + len(type) + b" " + type + b" " + len(payload) + b" " + payload

with ``type`` = ``PAYLOAD_TYPE`` and the lengths as ASCII decimal byte counts. A key's id is the first 16 hex
characters of the SHA-256 of its raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.rlplatform.manifest+json"
# A game's release state (``releases.py``): signed like a manifest, under its own type so neither passes for the other.
RELEASE_PAYLOAD_TYPE = "application/vnd.rlplatform.release+json"
KEY_ID_HEX_CHARS = 16
_PEM_BLOCK = b"-----BEGIN PUBLIC KEY-----"

TrustedKeys = Mapping[str, Ed25519PublicKey]


class SignatureError(ValueError):
    """A signature that cannot be trusted, or key material that cannot be read; the message says why."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: SHA-256 of its raw 32 bytes, first 16 hex characters."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the exact bytes a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key (what ``openssl genpkey -algorithm ed25519`` writes)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"the signing key must be Ed25519, got {type(key).__name__}")
    return key


def load_trusted_keys(pem: bytes | str) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM bundle (one ``BEGIN PUBLIC KEY`` block per key), by key id."""
    data = pem.encode() if isinstance(pem, str) else pem
    blocks = [_PEM_BLOCK + part for part in data.split(_PEM_BLOCK)[1:]]
    if not blocks:
        raise SignatureError("no PEM public key (-----BEGIN PUBLIC KEY-----) in the trusted keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for number, block in enumerate(blocks, start=1):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise SignatureError(f"trusted key {number}: not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"trusted key {number}: must be Ed25519, got {type(key).__name__}")
        keys[key_id(key)] = key
    return keys


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: ``payload`` (the exact bytes signed over, inside ``pae``) and its signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (key id, signature)

    def to_json(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [{"keyid": kid, "sig": base64.b64encode(sig).decode()} for kid, sig in self.signatures],
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_doc(cls, doc: dict, expected_type: str = PAYLOAD_TYPE) -> Envelope:
        """From a parsed JSON envelope of ``expected_type``; ``SignatureError`` names the field that breaks the
        format."""
        payload_type = doc.get("payloadType")
        if payload_type != expected_type:
            raise SignatureError(f"envelope.payloadType: must be {expected_type!r}, got {payload_type!r}")
        payload = _b64(doc.get("payload"), "envelope.payload")
        entries = doc.get("signatures")
        if not isinstance(entries, list):
            raise SignatureError(f"envelope.signatures: must be a list, got {entries!r}")
        signatures = []
        for i, entry in enumerate(entries):
            kid = entry.get("keyid") if isinstance(entry, dict) else None
            if not isinstance(kid, str) or not kid:
                raise SignatureError(f"envelope.signatures[{i}].keyid: must be a non-empty string, got {kid!r}")
            signatures.append((kid, _b64(entry.get("sig"), f"envelope.signatures[{i}].sig")))
        return cls(payload_type, payload, tuple(signatures))

    def verify(self, trusted: TrustedKeys) -> str:
        """The id of a trusted key whose signature verifies; ``SignatureError`` saying why there is none."""
        if not self.signatures:
            raise SignatureError("not signed")
        known = [(kid, sig) for kid, sig in self.signatures if kid in trusted]
        if not known:
            signers = ", ".join(kid for kid, _ in self.signatures)
            raise SignatureError(f"signed by key {signers}, which this client does not trust (trusts {_ids(trusted)})")
        message = pae(self.payload_type, self.payload)
        for kid, sig in known:
            try:
                trusted[kid].verify(sig, message)
            except InvalidSignature:
                continue
            return kid
        raise SignatureError(
            f"the signature by key {known[0][0]} does not verify: the document was changed after it was signed, "
            "or another key signed it under this key's id"
        )


def sign(payload: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> Envelope:
    """``payload`` in an envelope of ``payload_type`` signed by ``key``."""
    signature = key.sign(pae(payload_type, payload))
    return Envelope(payload_type, payload, ((key_id(key.public_key()), signature),))


def _b64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"{field}: must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{field}: not valid base64") from None


def _ids(trusted: Iterable[str]) -> str:
    return ", ".join(sorted(trusted)) or "no key"
