"""Signed models: what a bucket writer without the signing key can publish is refused by the SDK and by the
verification path the docs give other languages; keys rotate; bad key material gets a clear error."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from rlplatform import cli
from rlplatform.registry import keys
from rlplatform.registry.keys import KeyringError
from rlplatform.settings import Settings
from rlplatform_client import ModelSignatureError, ModelSubscriber, SignatureError, load_trusted_keys
from rlplatform_client.models import latest_key, manifest_document, publish_model
from rlplatform_client.signing import Envelope, key_id, pae
from tests.support import SIGNING_KEY, TRUSTED_KEYS
from tests.unit.test_subscriber import BUCKET, GAME, PICK_FIRST, PICK_SECOND, SpyS3, manifest_for, s3, tiny_model

__all__ = ["s3"]  # the fixture, shared with test_subscriber

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reference" / "model-signatures.md"
OBS = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)  # v1 (PICK_FIRST) acts 0 on it, PICK_SECOND 1


def doc_block(language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)[index]


def docs_verifier() -> dict[str, Any]:
    """The Python block of the signatures reference, run as written: cryptography and the standard library."""
    namespace: dict[str, Any] = {}
    exec(compile(doc_block("python"), str(DOC), "exec"), namespace)  # noqa: S102 - the documented code itself
    return namespace


def forgeries(v2: bytes) -> dict[str, bytes]:
    """What a bucket writer without the signing key can put behind the pointer for a v2 of its own."""
    manifest = manifest_for(2, v2)
    other = Ed25519PrivateKey.generate()
    genuine = json.loads(manifest_document(manifest, SIGNING_KEY))
    tampered = manifest_for(2, tiny_model(PICK_FIRST * 2))  # another model, under the genuine signature
    genuine_sig_other_payload = {**genuine, "payload": base64.b64encode(tampered.to_json()).decode()}
    # The genuine key's id on a signature made by another key.
    impostor = Envelope.from_doc(json.loads(manifest_document(manifest, other)))
    impostor = Envelope(
        impostor.payload_type, impostor.payload, ((key_id(SIGNING_KEY.public_key()), impostor.signatures[0][1]),)
    )
    return {
        "unsigned": manifest.to_json(),
        "signed by another key": manifest_document(manifest, other),
        "signature over other bytes": json.dumps(genuine_sig_other_payload).encode(),
        "another key under the trusted key's id": impostor.to_json(),
        "no signatures": json.dumps({**genuine, "signatures": []}).encode(),
    }


REASONS = {
    "unsigned": "not signed",
    "signed by another key": r"signed by key [0-9a-f]{16}, which this client does not trust \(trusts [0-9a-f]{16}\)",
    "signature over other bytes": "the signature by key [0-9a-f]{16} does not verify",
    "another key under the trusted key's id": "the signature by key [0-9a-f]{16} does not verify",
    "no signatures": "not signed",
}


@pytest.mark.parametrize("forgery", list(REASONS))
def test_a_model_published_without_the_signing_key_is_refused_and_the_client_keeps_its_model(
    s3: Any, forgery: str
) -> None:
    spy = SpyS3(s3)
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=spy)
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY)
    assert sub.poll() and sub.act(OBS) == 0
    v2 = tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, SIGNING_KEY)  # the model, manifest: a forger writes them too
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=forgeries(v2)[forgery])
    with pytest.raises(ModelSignatureError, match=f"model v2: {REASONS[forgery]}.*; keeping model v1"):
        sub.poll()
    assert (sub.version, sub.rejected_loads, sub.act(OBS)) == (1, 1, 0)
    assert not any(kwargs["Key"].endswith("v000002/model.onnx") for kwargs, _ in spy.gets)  # refused unread
    assert sub.poll() is False  # the same pointer is not fetched again


def test_the_docs_verification_path_accepts_what_the_platform_signs_and_refuses_every_forgery(s3: Any) -> None:
    verify = docs_verifier()
    trusted = verify["trusted_keys"](TRUSTED_KEYS)
    v2 = tiny_model(PICK_SECOND)
    manifest = manifest_for(2, v2)
    publish_model(s3, BUCKET, manifest, v2, SIGNING_KEY)
    pointer = s3.get_object(Bucket=BUCKET, Key=latest_key(GAME))["Body"].read()
    verified = verify["verified_manifest"](pointer, trusted)
    assert verified == json.loads(manifest.to_json())
    model = s3.get_object(Bucket=BUCKET, Key=verified["onnx_key"])["Body"].read()
    assert verify["verified_model"](verified, model) == v2
    with pytest.raises(ValueError, match="does not match"):
        verify["verified_model"](verified, tiny_model(PICK_FIRST))
    for name, forged in forgeries(v2).items():
        reason = "not a signed manifest" if name == "unsigned" else "no trusted key signed this manifest"
        with pytest.raises(ValueError, match=reason):
            verify["verified_manifest"](forged, trusted)


def test_openssl_verifies_the_signed_bytes_as_the_docs_describe(tmp_path: Path) -> None:
    body = manifest_document(manifest_for(1, b"model"), SIGNING_KEY)
    envelope = json.loads(body)
    payload = base64.b64decode(envelope["payload"])
    (tmp_path / "signed.bin").write_bytes(pae(envelope["payloadType"], payload))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(envelope["signatures"][0]["sig"]))
    (tmp_path / "key.pem").write_bytes(TRUSTED_KEYS)
    command = doc_block("bash").split()
    ok = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "signed.bin").write_bytes(
        pae(envelope["payloadType"], payload.replace(b'"version": 1', b'"version": 9'))
    )
    forged = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert forged.returncode != 0


def test_the_documented_pae_example_is_what_is_signed() -> None:
    assert pae("application/vnd.rlplatform.manifest+json", b"{}") == (
        b"DSSEv1 40 application/vnd.rlplatform.manifest+json 2 {}"
    )
    assert "DSSEv1 40 application/vnd.rlplatform.manifest+json" in DOC.read_text()


# ---------------------------------------------------------------------- rotation


def test_after_a_rotation_a_client_trusting_both_keys_accepts_new_models_and_one_trusting_the_old_refuses(
    s3: Any, tmp_path: Path
) -> None:
    ring = tmp_path / "keys"
    old = keys.init(ring)
    old_bundle = (ring / keys.TRUSTED_KEYS).read_bytes()
    settings = Settings(signing_key_file=ring / keys.SIGNING_KEY)
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, keys.signing_key(settings))
    updated = ModelSubscriber(BUCKET, GAME, trusted_keys=old_bundle, s3=s3)
    installed = ModelSubscriber(BUCKET, GAME, trusted_keys=old_bundle, s3=s3)
    assert updated.poll() and installed.poll()

    new = keys.rotate(ring)
    assert new != old and [(k.key_id, k.signs) for k in keys.listing(ring)] == [(new, True), (old, False)]
    updated = ModelSubscriber(BUCKET, GAME, trusted_keys=(ring / keys.TRUSTED_KEYS).read_bytes(), s3=s3)
    assert updated.poll() and updated.version == 1  # what the old key signed is still trusted
    v2 = tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, keys.signing_key(settings))  # the file now holds the new key
    assert updated.poll() and updated.version == 2
    with pytest.raises(
        ModelSignatureError, match=f"signed by key {new}, which this client does not trust .trusts {old}"
    ):
        installed.poll()
    assert installed.version == 1 and installed.act(OBS) == 0

    keys.retire(ring, old)
    assert set(load_trusted_keys((ring / keys.TRUSTED_KEYS).read_bytes())) == {new}


# ---------------------------------------------------------------------- the keyring


def test_init_is_idempotent_and_the_private_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    ring = tmp_path / "keys"
    kid = keys.init(ring)
    assert keys.init(ring) == kid
    assert (ring / keys.SIGNING_KEY).stat().st_mode & 0o777 == 0o600
    assert list(load_trusted_keys((ring / keys.TRUSTED_KEYS).read_bytes())) == [kid]
    assert sorted(p.name for p in ring.iterdir()) == [keys.SIGNING_KEY, keys.TRUSTED_KEYS]  # no temporary files


def test_bad_keyring_operations_say_why_and_change_nothing(tmp_path: Path) -> None:
    ring = tmp_path / "keys"
    with pytest.raises(KeyringError, match=r"signing.key does not exist: `rlplatform keys init --dir"):
        keys.rotate(ring)
    kid = keys.init(ring)
    before = {p.name: p.read_bytes() for p in ring.iterdir()}
    with pytest.raises(KeyringError, match=f"key {kid} signs new models: `keys rotate` first"):
        keys.retire(ring, kid)
    with pytest.raises(KeyringError, match=f"no key 'feedfacefeedface' in .*trusted.pem \\(keys: {kid}\\)"):
        keys.retire(ring, "feedfacefeedface")
    assert {p.name: p.read_bytes() for p in ring.iterdir()} == before
    (ring / keys.SIGNING_KEY).write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyringError, match="signing.key: not an unencrypted PEM private key"):
        keys.rotate(ring)
    assert (ring / keys.TRUSTED_KEYS).read_bytes() == before[keys.TRUSTED_KEYS]


def test_the_trainers_key_comes_from_the_variable_or_the_file_and_a_bad_one_is_named(tmp_path: Path) -> None:
    pem = (tmp_path / "k.pem").as_posix()
    ring = tmp_path / "keys"
    keys.init(ring)
    from_file = keys.signing_key(Settings(signing_key_file=ring / keys.SIGNING_KEY))
    text = (ring / keys.SIGNING_KEY).read_text()
    from_env = keys.signing_key(Settings(signing_key=text, signing_key_file=Path(pem)))  # the variable wins
    assert key_id(from_file.public_key()) == key_id(from_env.public_key())
    with pytest.raises(KeyringError, match="no model signing key: set RLP_SIGNING_KEY_FILE"):
        keys.signing_key(Settings(signing_key_file=None, signing_key=None))
    with pytest.raises(KeyringError, match=f"RLP_SIGNING_KEY_FILE={pem}: No such file"):
        keys.signing_key(Settings(signing_key_file=Path(pem)))
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyringError, match="RLP_SIGNING_KEY: the signing key must be Ed25519"):
        keys.signing_key(Settings(signing_key=other.decode()))


def test_a_malformed_trusted_keys_bundle_names_the_block() -> None:
    with pytest.raises(SignatureError, match="no PEM public key"):
        load_trusted_keys(b"garbage")
    broken = TRUSTED_KEYS + b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(SignatureError, match="trusted key 2: not a PEM public key"):
        load_trusted_keys(broken)
    with pytest.raises(ValueError, match="trusted key 1: not a PEM public key"):
        ModelSubscriber(BUCKET, GAME, trusted_keys="-----BEGIN PUBLIC KEY-----\nAAAA\n", s3=object())


def test_a_malformed_envelope_names_its_field(s3: Any) -> None:
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3)
    genuine = json.loads(manifest_document(manifest_for(1, b"m"), SIGNING_KEY))
    for broken, field in (
        ({**genuine, "payload": "%%%"}, "envelope.payload: not valid base64"),
        ({**genuine, "payloadType": "text/plain"}, "envelope.payloadType: must be"),
        ({**genuine, "signatures": [{"sig": "AA=="}]}, r"envelope.signatures\[0\].keyid"),
    ):
        s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=json.dumps(broken).encode())
        with pytest.raises(ModelSignatureError, match=field):
            sub.poll()
    assert not sub.has_model


# ---------------------------------------------------------------------- unsigned, by choice


def test_without_trusted_keys_a_subscriber_needs_an_explicit_accept_unsigned(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="trusted_keys is empty.*accept_unsigned=True"):
        ModelSubscriber(BUCKET, GAME, s3=s3)
    with caplog.at_level(logging.WARNING):
        sub = ModelSubscriber(BUCKET, GAME, accept_unsigned=True, s3=s3)
        v1 = tiny_model(PICK_FIRST)
        manifest = manifest_for(1, v1)
        publish_model(s3, BUCKET, manifest, v1, None)
        assert sub.poll() and sub.version == 1
    assert "development only" in caplog.text and "model CartPole-v1 v1: not signed; loading it anyway" in caplog.text


# ---------------------------------------------------------------------- commands


def test_keys_commands_make_rotate_list_export_and_retire(tmp_path: Path) -> None:
    runner, ring = CliRunner(), str(tmp_path / "keys")
    first = runner.invoke(cli.app, ["keys", "init", "--dir", ring])
    assert first.exit_code == 0, first.output
    old = re.search(r"signing key ([0-9a-f]{16})", first.output).group(1)
    rotated = runner.invoke(cli.app, ["keys", "rotate", "--dir", ring])
    new = re.search(r"signing key ([0-9a-f]{16})", rotated.output).group(1)
    listed = runner.invoke(cli.app, ["keys", "list", "--dir", ring])
    assert listed.output.splitlines() == [f"{new}  signs new models", f"{old}  trusted"]
    exported = runner.invoke(cli.app, ["keys", "export", "--dir", ring])
    assert set(load_trusted_keys(exported.output)) == {old, new}
    refused = runner.invoke(cli.app, ["keys", "retire", new, "--dir", ring])
    assert refused.exit_code == 1 and "signs new models: `keys rotate` first" in refused.output
    assert runner.invoke(cli.app, ["keys", "retire", old, "--dir", ring]).exit_code == 0
    assert set(load_trusted_keys(runner.invoke(cli.app, ["keys", "export", "--dir", ring]).output)) == {new}


def test_simulate_refuses_to_start_without_trusted_keys_or_with_a_bad_bundle(tmp_path: Path) -> None:
    from rlplatform_client.cli import app

    bad = tmp_path / "trusted.pem"
    bad.write_text("not a key")
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--trusted-keys", str(bad)], env={"RLP_TRUSTED_KEYS": None})
    assert result.exit_code == 2 and f"--trusted-keys {bad}: no PEM public key" in result.output
    result = runner.invoke(app, ["simulate"], env={"RLP_TRUSTED_KEYS": None})
    assert result.exit_code == 2 and "no trusted keys: pass --trusted-keys" in result.output
