"""Polls the S3 model registry and serves greedy actions from the verified ONNX model the game's release names.

Which version: the game's release state (``releases.py``) names a stable version and maybe a candidate for a
share of the clients; the subscriber plays the one its ``client_id`` gets, following a rollback to an older
version too, and refuses a release state it cannot verify or one older than it has seen (keeping its model).
A bucket without a release state is read through the latest pointer, whose newest version is played.

Why a conditional GET: thousands of clients poll the small pointer object; with ``IfNoneMatch`` an
unchanged pointer costs a 304 and no body. S3 (and moto) surface the 304 as a botocore ``ClientError``
whose code is ``"304"`` (``"NotModified"`` is accepted too, for S3-compatible stores).

Why verify a signature: anyone who can write to the bucket could otherwise publish a model every client runs.
The manifest must carry a signature by one of the keys the game trusts (``trusted_keys``: the studio's public
keys, shipped with the game; several, so keys rotate without breaking installed games); the manifest's sha256
then vouches for the model bytes. An unsigned model, one signed by an unknown key or a signature over other
bytes raises ``ModelSignatureError`` and the held model stays. ``accept_unsigned`` (development only, logged)
loads models whose signature is not verified.

Why verify sha256: a truncated or tampered download must never replace a working policy. On mismatch
``poll`` raises ``ModelIntegrityError`` and the previously loaded model stays in service.

Why check the fit: a model with the right digest can still be another game's (a pointer naming it, a manifest
claiming this game's spaces). Before a swap the model runs once on an observation of the game's shape and its
outputs must have the game's action width; its manifest's spaces must be the game's (``spec``) or, without a
spec, those of the model held (a game's spaces never change). A misfit raises ``ModelFitError`` and the held
model stays: the first ``act`` after such a swap would otherwise raise inside the game.

Why back off on a missing model: a pointer naming an object that does not exist may be fixed by the
object appearing later, so it is retried, but only after an exponential, jittered, capped delay; until
then polls cost one conditional GET of the pointer (a 304), and a new pointer (new ETag) is tried at once.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from .games import GameSpec
from .models import (
    INPUT_NAME,
    ManifestDocument,
    ManifestError,
    ModelError,
    ModelManifest,
    ModelSignatureError,
    error_code,
    greedy_action,
    is_missing,
    latest_key,
    manifest_key,
    sha256_hex,
)
from .releases import MAX_RELEASE_BYTES, ReleaseError, read_release_document, release_key
from .retry import Backoff
from .signing import SignatureError, TrustedKeys, load_trusted_keys

log = logging.getLogger(__name__)

_NOT_MODIFIED_CODES = frozenset({"304", "NotModified", "Not Modified"})
MISSING_MODEL_BACKOFF = Backoff(base_s=5.0, cap_s=300.0, jitter=True)
# A manifest document is ~1-2 KiB; a pointer larger than this is refused without being read on.
MAX_MANIFEST_BYTES = 64 * 1024


class ModelIntegrityError(ModelError):
    """Downloaded model bytes do not match the manifest's sha256; the model was not loaded."""


class ModelLoadError(ModelError):
    """Verified model bytes could not be loaded or break the ONNX convention; the model was not loaded."""


class ModelFitError(ModelLoadError):
    """A verified model that does not fit the game: other spaces, or outputs of another shape."""


class ModelMissingError(ModelError):
    """The pointer names a model object that does not exist; the model was not loaded."""

    def __init__(self, bucket: str, manifest: ModelManifest, note: str = "") -> None:
        super().__init__(
            f"model v{manifest.version} is missing: {latest_key(manifest.game_id)} names "
            f"s3://{bucket}/{manifest.onnx_key}, which does not exist{note}"
        )
        self.key = manifest.onnx_key
        self.version = manifest.version


@contextlib.contextmanager
def missing_model_raises(bucket: str, manifest: ModelManifest, note: str = "") -> Iterator[None]:
    """A "no such key" from S3 inside the block becomes ``ModelMissingError`` for the manifest's model: the
    one reading of a missing model, for the subscriber and the platform's registry alike."""
    try:
        yield
    except ClientError as exc:
        if not is_missing(exc):
            raise
        raise ModelMissingError(bucket, manifest, note) from None


class NoModelError(ModelError, RuntimeError):
    """``act``/``forward`` was called before any model was loaded."""


@dataclass(frozen=True)
class _Loaded:
    manifest: ModelManifest
    session: Any  # onnxruntime.InferenceSession
    output_name: str
    sample_name: str | None  # the output the policy explores with (manifest output.sample), if it has one

    def row(self, output: str, obs: Any) -> np.ndarray:
        """The model's ``output`` for one observation."""
        return self.session.run([output], {INPUT_NAME: np.asarray(obs, dtype=np.float32).reshape(1, -1)})[0][0]


@dataclass(frozen=True)
class _MissingModel:
    """A pointer whose model object was missing: when to look for that object again."""

    etag: str
    failures: int
    retry_at: float


class ModelSubscriber:
    """Keeps the newest verified model for ``game_id`` from ``bucket``. Thread-safe.

    ``trusted_keys``: the public keys whose signatures the client accepts, as a PEM bundle (what
    ``rlplatform keys export`` writes) or a mapping of key id to key. Without any, ``accept_unsigned=True`` is
    required: it loads models whose signature is not verified (development only; each such load is logged).

    ``spec``: the game's spec (what the client plays); every model must fit it. Without it the first model
    loaded sets the spaces every later one must have.

    ``poll`` may run in one thread while others call ``act``: the swap is a single reference
    assignment under a lock, and each ``act`` uses the model that was current when it started.
    """

    def __init__(
        self,
        bucket: str,
        game_id: str,
        *,
        trusted_keys: bytes | str | TrustedKeys | None = None,
        accept_unsigned: bool = False,
        spec: GameSpec | None = None,
        s3: Any = None,
        intra_op_num_threads: int = 1,
        backoff: Backoff = MISSING_MODEL_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        client_id: str | None = None,
    ) -> None:
        if s3 is None:
            import boto3  # Lazy: callers that inject a client need no AWS config.

            s3 = boto3.client("s3")  # Endpoint from AWS_ENDPOINT_URL[_S3] if set.
        if spec is not None and spec.game_id != game_id:
            raise ValueError(f"spec is for game {spec.game_id!r}, the subscriber for {game_id!r}")
        self._trusted = _trusted(trusted_keys)
        if not self._trusted and not accept_unsigned:
            raise ValueError(
                "trusted_keys is empty: pass the public keys of the studio's model signing keys (the PEM bundle"
                " `rlplatform keys export` writes), or accept_unsigned=True to load unverified models in development"
            )
        if accept_unsigned:
            log.warning("%s: accepting models without a verified signature (development only)", game_id)
        self._accept_unsigned = accept_unsigned
        self.bucket = bucket
        self.game_id = game_id
        self.spec = spec
        self._s3 = s3
        self._threads = intra_op_num_threads
        self._lock = threading.Lock()  # Guards _loaded and counters.
        self._poll_lock = threading.Lock()  # One poll at a time; keeps ETag bookkeeping consistent.
        self._etag: str | None = None
        self.client_id = client_id
        self._release_etag: str | None = None
        self._revision = 0  # the highest release revision seen: an older one is a replay
        self._loaded: _Loaded | None = None
        self._missing: _MissingModel | None = None
        self._backoff = backoff
        self._clock = clock
        self._rng = random.Random()
        self.verified_loads = 0
        self.rejected_loads = 0

    # ------------------------------------------------------------------ polling

    def poll(self) -> bool:
        """Check the release state (else the pointer); load the version it names for this client if that is not the
        one held (through the pointer: a newer one). True iff a model was loaded.

        Raises ``ReleaseError`` (a release state that is not valid, not this game's, older than one seen, or
        naming a version without a manifest), ``ModelSignatureError`` (not signed by a trusted key),
        ``ModelIntegrityError`` (hash mismatch), ``ModelMissingError`` (no object at the manifest's ``onnx_key``),
        ``ModelLoadError`` or ``ManifestError``; the current model stays loaded in every failure case. Nothing
        published means "no model yet"; an unchanged state or pointer (304) is not an error either.
        """
        with self._poll_lock:
            released = self._poll_release()
            if released is not None:
                return released
            retry_due = self._missing is not None and self._clock() >= self._missing.retry_at
            pointer = self._get_pointer(conditional=not retry_due)
            if pointer is None:
                return False
            body, etag = pointer
            try:
                manifest, loaded = self._verified(body)
                if loaded is None:
                    self._settle(etag)
                    return False
            except ModelError as exc:
                # Remember the ETag of a bad model: re-downloading it every poll helps nobody; the publisher
                # fixes it with a new pointer (new ETag). Network errors propagate WITHOUT updating the ETag,
                # so the next poll retries.
                self._settle(etag, missing=isinstance(exc, ModelMissingError))
                with self._lock:
                    self.rejected_loads += 1
                raise
            self._settle(etag)
            with self._lock:
                self._loaded = loaded
                self.verified_loads += 1
            log.info("loaded model %s v%d (sha256 %s…)", self.game_id, manifest.version, manifest.sha256[:12])
            return True

    def _poll_release(self) -> bool | None:
        """``poll`` through the release state: whether a model was loaded, or None when the bucket has none."""
        retry_due = self._missing is not None and self._clock() >= self._missing.retry_at
        kwargs = {"Bucket": self.bucket, "Key": release_key(self.game_id)}
        if self._release_etag is not None and not retry_due:
            kwargs["IfNoneMatch"] = self._release_etag
        try:
            response = self._s3.get_object(**kwargs)
        except ClientError as exc:
            if error_code(exc) in _NOT_MODIFIED_CODES:
                return False
            if is_missing(exc):
                return None
            raise
        etag = response["ETag"]
        try:
            target = self._release_target(response["Body"].read(MAX_RELEASE_BYTES + 1))
            if target == self.version:
                self._settle(etag, release=True)
                return False
            manifest, loaded = self._verified(self._release_manifest(target), newer_only=False)
        except ModelError as exc:
            self._settle(etag, missing=isinstance(exc, ModelMissingError), release=True)
            with self._lock:
                self.rejected_loads += 1
            raise
        self._settle(etag, release=True)
        return self._swap(manifest, loaded)

    def _release_manifest(self, version: int) -> bytes:
        """The manifest document of the version the release state names."""
        key = manifest_key(self.game_id, version)
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read(MAX_MANIFEST_BYTES + 1)
        except ClientError as exc:
            if not is_missing(exc):
                raise
            reason = f"names v{version}, whose manifest s3://{self.bucket}/{key} does not exist"
            raise ReleaseError("(version)", f"{reason}; keeping model v{self.version}") from None

    def _release_target(self, body: bytes) -> int:
        """The version the release state ``body`` names for this client, once verified and not a replay."""
        state, signer = read_release_document(body, self._trusted, verify=not self._accept_unsigned)
        if state.game_id != self.game_id:
            raise ReleaseError("game_id", f"release state for {self.game_id!r} names game {state.game_id!r}")
        if state.revision < self._revision:
            raise ReleaseError("revision", f"{state.revision} is older than revision {self._revision}, seen before")
        self._revision = state.revision
        log.debug("release r%d of %s (signed by %s)", state.revision, self.game_id, signer)
        return state.version_for(self.client_id)

    def _swap(self, manifest: ModelManifest, loaded: _Loaded | None) -> bool:
        if loaded is None:
            return False
        with self._lock:
            self._loaded = loaded
            self.verified_loads += 1
        log.info("loaded model %s v%d (sha256 %s…)", self.game_id, manifest.version, manifest.sha256[:12])
        return True

    def _verified(self, body: bytes, newer_only: bool = True) -> tuple[ModelManifest, _Loaded | None]:
        """The manifest ``body`` holds and its model, loaded and checked (None: ``newer_only`` and not newer than
        the one held).

        Whatever the bucket holds ends here as a ``ModelError``: an unexpected failure while reading what it
        holds is one too (``ModelLoadError``), so it reaches the game as a refused model, never as another
        exception. Network errors (botocore's) propagate as they are: the next poll retries them.
        """
        try:
            manifest = self._parse(body)
            if manifest.version == self.version or (newer_only and manifest.version < self.version):
                return manifest, None
            return manifest, self._download_and_load(manifest)
        except (ModelError, ClientError, BotoCoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - the net that keeps a hostile bucket out of the game
            log.exception("unexpected failure reading the model pointer of %s", self.game_id)
            raise ModelLoadError(f"the model pointer could not be read: {type(exc).__name__}: {exc}") from exc

    def _settle(self, etag: str, missing: bool = False, release: bool = False) -> None:
        """Done with the pointer's (or ``release`` state's) ``etag``; a missing model is looked for again after a
        backoff delay."""
        if release:
            self._release_etag = etag
        else:
            self._etag = etag
        if not missing:
            self._missing = None
            return
        previous = self._missing
        failures = previous.failures + 1 if previous is not None and previous.etag == etag else 1
        self._missing = _MissingModel(etag, failures, self._clock() + self._backoff.delay(failures, self._rng))

    def _get_pointer(self, conditional: bool = True) -> tuple[bytes, str] | None:
        """GET of latest.json, conditional on the last ETag unless told otherwise; None if unchanged or absent."""
        kwargs = {"Bucket": self.bucket, "Key": latest_key(self.game_id)}
        if conditional and self._etag is not None:
            kwargs["IfNoneMatch"] = self._etag
        try:
            response = self._s3.get_object(**kwargs)
        except ClientError as exc:
            if error_code(exc) in _NOT_MODIFIED_CODES:
                return None
            if is_missing(exc):
                return None  # No model published yet: not an error.
            raise
        return response["Body"].read(MAX_MANIFEST_BYTES + 1), response["ETag"]

    def _parse(self, body: bytes) -> ModelManifest:
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestError("(document)", f"the pointer is larger than {MAX_MANIFEST_BYTES} bytes")
        document = ManifestDocument.from_json(body)
        manifest = document.manifest
        if manifest.game_id != self.game_id:
            raise ManifestError("game_id", f"pointer for {self.game_id!r} names game {manifest.game_id!r}")
        self._check_signature(document)
        return manifest

    def _check_signature(self, document: ManifestDocument) -> None:
        """``ModelSignatureError`` unless a trusted key signed the manifest (or unverified models are accepted)."""
        version = document.manifest.version
        try:
            if document.envelope is None:
                raise SignatureError("not signed")
            signer = document.envelope.verify(self._trusted)
        except SignatureError as exc:
            if not self._accept_unsigned:
                raise ModelSignatureError(f"model v{version}: {exc}; keeping model v{self.version}") from None
            log.warning("model %s v%d: %s; loading it anyway (accept_unsigned)", self.game_id, version, exc)
            return
        log.debug("model %s v%d is signed by trusted key %s", self.game_id, version, signer)

    def _download_and_load(self, manifest: ModelManifest) -> _Loaded:
        with missing_model_raises(self.bucket, manifest, f"; keeping model v{self.version}"):
            data = self._s3.get_object(Bucket=self.bucket, Key=manifest.onnx_key)["Body"].read()
        digest = sha256_hex(data)
        if digest != manifest.sha256:
            raise ModelIntegrityError(
                f"{manifest.onnx_key}: sha256 {digest} does not match manifest v{manifest.version} "
                f"({manifest.sha256}); keeping model v{self.version}"
            )
        return self._build(manifest, data)

    def _build(self, manifest: ModelManifest, data: bytes) -> _Loaded:
        """Create the CPU session and check it follows the ONNX convention (before it goes live)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...).
            raise ModelLoadError(f"{manifest.onnx_key}: onnxruntime cannot load model: {exc}") from exc
        inputs = [i.name for i in session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ModelLoadError(f"{manifest.onnx_key}: expected one input named {INPUT_NAME!r}, got {inputs}")
        outputs = [o.name for o in session.get_outputs()]
        output_name = manifest.output["name"] if manifest.output else outputs[0]
        if output_name not in outputs:
            raise ModelLoadError(
                f"{manifest.onnx_key}: the manifest names output {output_name!r}, the model has {outputs}"
            )
        sample_name = manifest.output.get("sample") if manifest.output else None
        if sample_name is not None and sample_name not in outputs:
            raise ModelLoadError(
                f"{manifest.onnx_key}: the manifest names sample output {sample_name!r}, the model has {outputs}"
            )
        self._check_fit(manifest, session, [output_name] if sample_name is None else [output_name, sample_name])
        return _Loaded(manifest, session, output_name, sample_name)

    def _check_fit(self, manifest: ModelManifest, session: Any, outputs: list[str]) -> None:
        """``ModelFitError`` unless the manifest's spaces are the game's and the model maps one observation of
        the game's shape to outputs of its action width."""
        keep = f"; keeping model v{self.version}"
        if self.spec is not None:
            expected, against = self.spec.manifest_spaces(), f"game {self.game_id!r}'s spec"
        else:
            held = self.manifest
            expected = None if held is None else (held.observation_space, held.action_space)
            against = "" if held is None else f"the model held (v{held.version})"
        if expected is not None:
            names = ("observation_space", "action_space")
            got = (manifest.observation_space, manifest.action_space)
            diffs = [
                f"{name}: {g} != {e}"
                for name, g, e in zip(names, got, expected, strict=True)
                if _same(g, bounds=name == "action_space") != _same(e, bounds=name == "action_space")
            ]
            if diffs:
                raise ModelFitError(f"{manifest.onnx_key}: spaces differ from {against}: {'; '.join(diffs)}{keep}")
        obs_dim = int(manifest.observation_space["shape"][0])
        space = manifest.action_space
        width = int(space["n"]) if space["type"] == "discrete" else int(space["shape"][0])
        try:
            results = session.run(outputs, {INPUT_NAME: np.zeros((1, obs_dim), dtype=np.float32)})
        except Exception as exc:  # onnxruntime's own types (InvalidArgument, Fail, ...)
            reason = " ".join(str(exc).split())  # onnxruntime's message spans lines
            raise ModelFitError(
                f"{manifest.onnx_key}: does not run on a float32[1, {obs_dim}] observation: {reason}{keep}"
            ) from exc
        for name, result in zip(outputs, results, strict=True):
            if np.shape(result) != (1, width):
                raise ModelFitError(
                    f"{manifest.onnx_key}: output {name!r} is {list(np.shape(result))} for one observation, the"
                    f" {space['type']} action space needs [1, {width}]{keep}"
                )

    # ------------------------------------------------------------------ inference

    def forward(self, obs_batch: Any) -> np.ndarray:
        """Raw model output for a batch: ``[batch, n]`` Q-values or ``[batch, k]`` actions (``output_kind``)."""
        loaded = self._current()
        batch = np.asarray(obs_batch, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch[None, :]
        return loaded.session.run([loaded.output_name], {INPUT_NAME: batch.reshape(batch.shape[0], -1)})[0]

    def q_values(self, obs: Any) -> np.ndarray:
        """Model output for a single observation, shape ``[n]`` (discrete) or ``[k]`` (continuous)."""
        return self.forward(np.asarray(obs, dtype=np.float32).reshape(1, -1))[0]

    def act(self, obs: Any) -> int | np.ndarray:
        """Greedy action: the argmax of ``q_values`` (int), or the model's ``action`` clipped to the box
        (float32[k])."""
        loaded = self._current()
        return greedy_action(
            loaded.row(loaded.output_name, obs), loaded.manifest.output_kind, loaded.manifest.action_space
        )

    def sample(self, obs: Any) -> np.ndarray | None:
        """An exploring action drawn from the policy itself (float32[k], clipped to the box), or None when the
        model has no sample output (explore as you choose: epsilon-greedy, action noise)."""
        loaded = self._current()
        if loaded.sample_name is None:
            return None
        return greedy_action(loaded.row(loaded.sample_name, obs), "action", loaded.manifest.action_space)

    def _current(self) -> _Loaded:
        with self._lock:
            loaded = self._loaded
        if loaded is None:
            raise NoModelError(f"no model loaded yet for {self.game_id!r}")
        return loaded

    # ------------------------------------------------------------------ state

    @property
    def version(self) -> int:
        """Loaded model version; 0 when none (matching the contract's "random play" model_version)."""
        with self._lock:
            return 0 if self._loaded is None else self._loaded.manifest.version

    @property
    def manifest(self) -> ModelManifest | None:
        with self._lock:
            return None if self._loaded is None else self._loaded.manifest

    @property
    def has_model(self) -> bool:
        with self._lock:
            return self._loaded is not None


def _trusted(keys: bytes | str | TrustedKeys | None) -> TrustedKeys:
    if keys is None:
        return {}
    return load_trusted_keys(keys) if isinstance(keys, (bytes, str)) else dict(keys)


def _same(space: dict, bounds: bool) -> tuple:
    """What makes two spaces the same: the type and shape (or n), and with ``bounds`` a box's bounds (an action
    box's); not how a publisher spelled the rest (an observation box's unbounded ``low``/``high``, its dtype)."""
    if space.get("type") == "discrete":
        return ("discrete", space.get("n"))
    limits = (tuple(space.get("low") or ()), tuple(space.get("high") or ())) if bounds else ()
    return ("box", tuple(space.get("shape") or ()), limits)
