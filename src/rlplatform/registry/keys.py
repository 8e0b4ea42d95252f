"""The studio's model signing keys: a directory holding the key that signs and every public key games trust.

    signing.key   the Ed25519 private key the trainer signs with (PEM PKCS#8, mode 0600): RLP_SIGNING_KEY_FILE
    trusted.pem   the public keys games trust, the signing key's first: ship this file with the game

Rotation makes a new signing key and puts its public key first in trusted.pem; the old private key is deleted
(nothing signs with it any more) while its public key stays trusted, so installed games keep accepting what
the old key signed and games updated with the new bundle accept both. ``retire`` drops an old public key once
no installed game needs it. Files are replaced atomically, so a trainer reading the key at a publish never sees
half a key.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rlplatform.settings import Settings
from rlplatform_client.signing import SignatureError, key_id, load_private_key, load_trusted_keys, public_pem

SIGNING_KEY = "signing.key"
TRUSTED_KEYS = "trusted.pem"


class KeyringError(ValueError):
    """A keyring operation that cannot be done; the message says why and changes nothing."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    signs: bool  # this key is the keyring's signing key


def init(directory: Path) -> str:
    """The signing key's id, making a first key pair if the keyring has none (idempotent)."""
    if (directory / SIGNING_KEY).exists():
        return key_id(_signing_key(directory).public_key())
    if (directory / TRUSTED_KEYS).exists():
        raise KeyringError(f"{directory} has {TRUSTED_KEYS} but no {SIGNING_KEY}: restore it, or `keys rotate`")
    return _install(directory, Ed25519PrivateKey.generate(), trusted=[])


def rotate(directory: Path) -> str:
    """A new signing key (its id returned); the previous one's public key stays trusted."""
    previous = _signing_key(directory)  # refuses a keyring without a readable signing key
    return _install(directory, Ed25519PrivateKey.generate(), trusted=_trusted_pems(directory, previous))


def retire(directory: Path, kid: str) -> None:
    """Stop trusting the public key ``kid``; the signing key cannot be retired (rotate first)."""
    signer, trusted = key_id(_signing_key(directory).public_key()), _trusted(directory)
    if kid not in trusted:
        raise KeyringError(f"no key {kid!r} in {directory / TRUSTED_KEYS} (keys: {', '.join(trusted)})")
    if kid == signer:
        raise KeyringError(f"key {kid} signs new models: `keys rotate` first, then retire it")
    _write(directory / TRUSTED_KEYS, b"".join(public_pem(key) for k, key in trusted.items() if k != kid))


def listing(directory: Path) -> list[KeyInfo]:
    """The trusted keys, the signing key's first."""
    signer = key_id(_signing_key(directory).public_key())
    return [KeyInfo(kid, kid == signer) for kid in _trusted(directory)]


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """``key`` as the keyring stores it: unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The key the trainer signs with: ``RLP_SIGNING_KEY`` (the PEM itself) or ``RLP_SIGNING_KEY_FILE``."""
    if settings.signing_key is not None:
        source, pem = "RLP_SIGNING_KEY", settings.signing_key.get_secret_value().encode()
    elif settings.signing_key_file is not None:
        source = f"RLP_SIGNING_KEY_FILE={settings.signing_key_file}"
        try:
            pem = settings.signing_key_file.read_bytes()
        except OSError as exc:
            raise KeyringError(f"{source}: {exc.strerror}") from None
    else:
        raise KeyringError(
            "no model signing key: set RLP_SIGNING_KEY_FILE to a keyring's signing.key (`rlplatform keys init "
            "--dir DIR` makes one) or RLP_SIGNING_KEY to the key's PEM; clients refuse unsigned models"
        )
    try:
        return load_private_key(pem)
    except SignatureError as exc:
        raise KeyringError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class SigningKeys:
    """What the platform signs its documents with, and the public keys it accepts its own earlier documents from
    (a release state signed before a rotation)."""

    signing: Ed25519PrivateKey
    trusted: dict[str, Ed25519PublicKey]


def signing_keys(settings: Settings) -> SigningKeys:
    """The signing key (``signing_key``) and, trusted, its public key and those of the keyring's trusted.pem
    when ``RLP_SIGNING_KEY_FILE`` is in a keyring."""
    signing = signing_key(settings)
    public = signing.public_key()
    trusted = {key_id(public): public}
    if settings.signing_key_file is not None:
        trusted |= _trusted(settings.signing_key_file.parent, missing_ok=True)
    return SigningKeys(signing, trusted)


# ---------------------------------------------------------------------- files


def _signing_key(directory: Path) -> Ed25519PrivateKey:
    path = directory / SIGNING_KEY
    try:
        return load_private_key(path.read_bytes())
    except FileNotFoundError:
        raise KeyringError(f"{path} does not exist: `rlplatform keys init --dir {directory}` makes a keyring") from None
    except (OSError, SignatureError) as exc:
        raise KeyringError(f"{path}: {exc}") from None


def _trusted(directory: Path, missing_ok: bool = False) -> dict[str, Ed25519PublicKey]:
    """The keyring's trusted public keys by id (none for a missing bundle when ``missing_ok``)."""
    path = directory / TRUSTED_KEYS
    if missing_ok and not path.exists():
        return {}
    try:
        return load_trusted_keys(path.read_bytes())
    except (OSError, SignatureError) as exc:
        raise KeyringError(f"{path}: {exc}") from None


def _trusted_pems(directory: Path, signer: Ed25519PrivateKey) -> list[bytes]:
    """The trusted public keys as PEM, the current signer's included even if the bundle lost it."""
    trusted = _trusted(directory, missing_ok=True)
    trusted.setdefault(key_id(signer.public_key()), signer.public_key())
    return [public_pem(key) for key in trusted.values()]


def _install(directory: Path, key: Ed25519PrivateKey, trusted: list[bytes]) -> str:
    """``key`` becomes the signing key, first in trusted.pem (written before the key, so what it signs is
    trusted by the time anything is signed)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / TRUSTED_KEYS, public_pem(key.public_key()) + b"".join(trusted))
    _write(directory / SIGNING_KEY, private_pem(key), mode=0o600)
    return key_id(key.public_key())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` atomically; the temporary file has ``mode`` from its creation (a private key is never
    readable by others, not even for a moment)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
