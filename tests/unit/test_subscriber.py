import json
from typing import Any

import boto3
import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws
from onnx import TensorProto, helper, numpy_helper

from rlplatform_client import ModelFitError  # exported for games to catch
from rlplatform_client.games import GameSpec
from rlplatform_client.models import (
    ManifestDocument,
    ManifestError,
    ModelError,
    ModelManifest,
    ModelSignatureError,
    latest_key,
    manifest_document,
    manifest_key,
    model_key,
    publish_model,
    sha256_hex,
)
from rlplatform_client.releases import ReleaseError, ReleaseState, release_document, release_key
from rlplatform_client.retry import Backoff
from rlplatform_client.subscriber import (
    MISSING_MODEL_BACKOFF,
    ModelIntegrityError,
    ModelLoadError,
    ModelMissingError,
    ModelSubscriber,
    NoModelError,
)
from tests.support import SIGNING_KEY, TRUSTED_KEYS, Clock

BUCKET = "rlplatform-models"
GAME = "CartPole-v1"
OBS_SPACE = {"type": "box", "shape": [4], "low": [None] * 4, "high": [None] * 4}
ACTION_SPACE = {"type": "discrete", "n": 2}


def tiny_model(weights: np.ndarray) -> bytes:
    """obs [None, 4] float32 -> MatMul(W [4, 2]) -> q [None, 2]."""
    w = numpy_helper.from_array(weights.astype(np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["q"])],
        "tiny_q",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # Loadable by every onnxruntime the client supports (>= 1.18).
    onnx.checker.check_model(model)
    return model.SerializeToString()


PICK_FIRST = np.array([[1, 0], [0, 1], [0, 0], [0, 0]])  # q = (obs[0], obs[1])
PICK_SECOND = PICK_FIRST[:, ::-1]  # q = (obs[1], obs[0])


def manifest_for(version: int, onnx_bytes: bytes) -> ModelManifest:
    return ModelManifest.create(
        GAME,
        version,
        onnx_bytes,
        algorithm="dqn",
        learner_step=1000 * version,
        observation_space=OBS_SPACE,
        action_space=ACTION_SPACE,
        eval_return=20.0 * version,
    )


class SpyS3:
    """Records get_object kwargs and outcomes so the test can see the conditional GET."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gets: list[tuple[dict, str]] = []

    def get_object(self, **kwargs: Any) -> dict:
        try:
            response = self.real.get_object(**kwargs)
        except Exception as exc:
            self.gets.append((kwargs, getattr(exc, "response", {}).get("Error", {}).get("Code", repr(exc))))
            raise
        self.gets.append((kwargs, "200"))
        return response


@pytest.fixture
def s3() -> Any:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_keys_layout() -> None:
    assert model_key(GAME, 3) == "models/CartPole-v1/v000003/model.onnx"
    assert manifest_key(GAME, 3) == "models/CartPole-v1/v000003/manifest.json"
    assert latest_key(GAME) == "models/CartPole-v1/latest.json"


def test_subscriber_lifecycle(s3: Any) -> None:
    spy = SpyS3(s3)
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=spy)
    obs_first, obs_second = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]

    # No pointer yet: no model, not an error.
    assert sub.poll() is False
    assert (sub.version, sub.has_model, sub.manifest, sub.verified_loads) == (0, False, None, 0)
    with pytest.raises(NoModelError):
        sub.act(obs_first)

    # v1 is verified and loaded.
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY)
    assert sub.poll() is True
    assert (sub.version, sub.has_model, sub.verified_loads) == (1, True, 1)
    pointer = s3.get_object(Bucket=BUCKET, Key=latest_key(GAME))["Body"].read()
    assert sub.manifest == ManifestDocument.from_json(pointer).manifest
    assert sub.manifest.sha256 == sha256_hex(v1)
    assert sub.act(obs_first) == 0 and sub.act(obs_second) == 1
    assert isinstance(sub.act(obs_first), int)
    np.testing.assert_allclose(sub.q_values(np.array([3.0, 2.0, 0.0, 0.0])), [3.0, 2.0])
    np.testing.assert_allclose(sub.forward(np.eye(4)[:2]), [[1.0, 0.0], [0.0, 1.0]])

    # Unchanged pointer: conditional GET answered 304, nothing downloaded.
    assert sub.poll() is False
    kwargs, outcome = spy.gets[-1]
    assert kwargs["Key"] == latest_key(GAME) and kwargs["IfNoneMatch"] and outcome == "304"

    # v2's bytes do not match its manifest: refused, v1 stays in service.
    v2 = tiny_model(PICK_SECOND)
    bad = manifest_for(2, v2)
    publish_model(s3, BUCKET, bad, v2[:-1] + bytes([v2[-1] ^ 1]), SIGNING_KEY)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        sub.poll()
    assert (sub.version, sub.verified_loads, sub.rejected_loads) == (1, 1, 1)
    assert sub.act(obs_first) == 0
    assert sub.poll() is False  # The bad pointer is not re-downloaded on every poll.

    # A good v3 loads.
    v3 = tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(3, v3), v3, SIGNING_KEY)
    assert sub.poll() is True
    assert (sub.version, sub.verified_loads) == (3, 2)
    assert sub.manifest.sha256 == sha256_hex(v3)
    assert sub.act(obs_first) == 1 and sub.act(obs_second) == 0


def test_older_pointer_is_ignored(s3: Any) -> None:
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3)
    v5 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(5, v5), v5, SIGNING_KEY)
    assert sub.poll() is True
    publish_model(s3, BUCKET, manifest_for(4, v5), v5, SIGNING_KEY)  # A publisher rolled the pointer back.
    assert sub.poll() is False
    assert sub.version == 5


def test_pointer_for_another_game_is_refused(s3: Any) -> None:
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3)
    v1 = tiny_model(PICK_FIRST)
    other = manifest_for(1, v1)
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=other.to_json().replace(b"CartPole-v1", b"Other-v0"))
    with pytest.raises(ManifestError, match="game_id"):
        sub.poll()
    assert not sub.has_model


def matmul_model(obs_dim: int, width: int) -> bytes:
    """obs [None, obs_dim] -> MatMul(zeros [obs_dim, width]) -> q [None, width]: another game's model."""
    w = numpy_helper.from_array(np.zeros((obs_dim, width), dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["q"])],
        "other_q",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, obs_dim])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, width])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


ACROBOT_SPACES = ({"type": "box", "shape": [6], "dtype": "float32"}, {"type": "discrete", "n": 3})


def _held_v1(s3: Any, **kwargs: Any) -> ModelSubscriber:
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, **kwargs)
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY)
    assert sub.poll() is True
    return sub


@pytest.mark.parametrize(
    ("obs_dim", "width", "reason"),
    [(6, 3, r"does not run on a float32\[1, 4\] observation"), (4, 3, r"output 'q' is \[1, 3\].*needs \[1, 2\]")],
)
def test_a_model_of_another_shape_under_this_games_manifest_is_refused_before_the_swap(
    s3: Any, obs_dim: int, width: int, reason: str
) -> None:
    """Another game's model with its true digest, behind a manifest that claims this game's spaces: the client
    keeps the model it has and keeps acting (the first act after the swap used to raise in the game)."""
    sub = _held_v1(s3)
    other = matmul_model(obs_dim, width)
    publish_model(s3, BUCKET, manifest_for(2, other), other, SIGNING_KEY)
    with pytest.raises(ModelFitError, match=reason + ".*keeping model v1"):
        sub.poll()
    assert (sub.version, sub.rejected_loads) == (1, 1)
    assert sub.act(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)) == 0


def test_a_manifest_with_other_spaces_is_refused_against_the_spec_and_against_the_model_held(s3: Any) -> None:
    acrobot = matmul_model(6, 3)
    manifest = ModelManifest.create(
        GAME, 2, acrobot, algorithm="dqn", learner_step=1, observation_space=ACROBOT_SPACES[0],
        action_space=ACROBOT_SPACES[1],
    )  # fmt: skip
    spec = GameSpec(GAME, 4, 2)
    fresh = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, spec=spec)  # no model yet: the spec decides
    held = _held_v1(s3)  # no spec: the model held decides
    publish_model(s3, BUCKET, manifest, acrobot, SIGNING_KEY)
    with pytest.raises(ModelFitError, match=r"spaces differ from game 'CartPole-v1'.s spec: observation_space"):
        fresh.poll()
    with pytest.raises(ModelFitError, match=r"spaces differ from the model held \(v1\).*action_space"):
        held.poll()
    assert (fresh.has_model, held.version) == (False, 1)


def test_a_model_that_fits_the_spec_loads(s3: Any) -> None:
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, spec=GameSpec(GAME, 4, 2))
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY)
    assert sub.poll() is True and sub.version == 1
    with pytest.raises(ValueError, match="spec is for game 'Acrobot-v1'"):
        ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, spec=GameSpec("Acrobot-v1", 6, 3))


def _manifest_doc() -> dict:
    return json.loads(manifest_for(1, b"onnx").to_json())


def test_manifest_round_trip() -> None:
    manifest = manifest_for(7, b"bytes")
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    assert manifest.onnx_key == model_key(GAME, 7)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("sha256"), "sha256"),
        (lambda d: d.update(sha256="abc"), "sha256"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(version="1"), "version"),
        (lambda d: d.update(learner_step=True), "learner_step"),
        (lambda d: d.update(eval_return="high"), "eval_return"),
        (lambda d: d.update(action_space={"type": "discrete", "n": 0}), "action_space.n"),
        (
            lambda d: d.update(action_space={"type": "box", "shape": [2], "low": [0], "high": [1, 1]}),
            "action_space.low",
        ),
        (lambda d: d.update(observation_space=[]), "observation_space"),
        (lambda d: d.update(created_at="yesterday"), "created_at"),
    ],
)
def test_manifest_rejects_bad_fields(mutate: Any, field: str) -> None:
    doc = _manifest_doc()
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_json(json.dumps(doc).encode())
    assert info.value.field == field
    assert str(info.value).startswith(f"manifest.{field}:")


def test_manifest_rejects_non_json() -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        ModelManifest.from_json(b"\x00garbage")


def model_gets(spy: SpyS3, key: str) -> int:
    return sum(1 for kwargs, _ in spy.gets if kwargs["Key"] == key)


def test_missing_model_names_key_and_version_and_backs_off(s3: Any) -> None:
    spy, clock = SpyS3(s3), Clock(1000.0)
    sub = ModelSubscriber(
        BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=spy, backoff=Backoff(base_s=10, cap_s=40), clock=clock
    )
    v1 = tiny_model(PICK_FIRST)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY)
    assert sub.poll() is True
    broken = manifest_for(8, v1)  # A pointer to v8, whose model object was never written.
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=manifest_document(broken, SIGNING_KEY))

    with pytest.raises(ModelMissingError, match=f"v8 .*{broken.onnx_key}") as info:
        sub.poll()
    assert (info.value.key, info.value.version) == (broken.onnx_key, 8)
    assert isinstance(info.value, ModelError) and (sub.version, sub.rejected_loads) == (1, 1)

    # Within the backoff interval: only the conditional GET of the pointer (304), never the model.
    for _ in range(5):
        clock.now += 1.9
        assert sub.poll() is False
    assert model_gets(spy, broken.onnx_key) == 1
    assert spy.gets[-1][0]["Key"] == latest_key(GAME) and spy.gets[-1][1] == "304"

    # Backoff over: the same pointer is tried again, and the next interval is twice as long.
    clock.now += 0.6
    with pytest.raises(ModelMissingError):
        sub.poll()
    assert model_gets(spy, broken.onnx_key) == 2
    clock.now += 19.9
    assert sub.poll() is False and model_gets(spy, broken.onnx_key) == 2
    clock.now += 0.2
    with pytest.raises(ModelMissingError):
        sub.poll()
    assert model_gets(spy, broken.onnx_key) == 3

    # A new pointer (new ETag) is tried at once, backoff or not.
    v2 = tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, SIGNING_KEY)
    assert sub.poll() is True and sub.version == 2


def test_missing_model_is_loaded_once_it_appears_after_the_backoff(s3: Any) -> None:
    clock = Clock(1000.0)
    sub = ModelSubscriber(
        BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, backoff=Backoff(base_s=10, cap_s=40), clock=clock
    )
    v1 = tiny_model(PICK_FIRST)
    manifest = manifest_for(1, v1)
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=manifest_document(manifest, SIGNING_KEY))
    with pytest.raises(ModelMissingError):
        sub.poll()
    s3.put_object(Bucket=BUCKET, Key=manifest.onnx_key, Body=v1)
    assert sub.poll() is False  # Still backing off.
    clock.now += 10
    assert sub.poll() is True and sub.version == 1


def test_default_missing_model_backoff_is_jittered_and_capped() -> None:
    assert MISSING_MODEL_BACKOFF.jitter and MISSING_MODEL_BACKOFF.cap_s >= MISSING_MODEL_BACKOFF.base_s > 0


def test_manifest_without_output_reads_as_q_values_for_discrete_and_action_for_box() -> None:
    doc = json.loads(manifest_for(1, b"m").to_json())
    del doc["output"]  # as written before the field existed
    old = ModelManifest.from_json(json.dumps(doc))
    assert old.output is None and old.output_kind == "q_values"
    box = {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}
    assert ModelManifest.from_json(json.dumps({**doc, "action_space": box})).output_kind == "action"


@pytest.mark.parametrize(
    ("output", "field"),
    [
        ({"name": "q", "kind": "action"}, "output.kind"),
        ({"kind": "q_values"}, "output.name"),
        ("q", "output"),
        ({"name": "q", "kind": "q_values", "sample": "q_sample"}, "output.sample"),
    ],
)
def test_manifest_output_must_fit_the_action_space(output: Any, field: str) -> None:
    doc = {**json.loads(manifest_for(1, b"m").to_json()), "output": output}
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_json(json.dumps(doc))
    assert info.value.field == field


@pytest.mark.parametrize("sample", ["", "action", 3])
def test_an_action_models_sample_must_name_another_output(sample: Any) -> None:
    box = {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}
    output = {"name": "action", "kind": "action", "sample": sample}
    doc = {**json.loads(manifest_for(1, b"m").to_json()), "action_space": box, "output": output}
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_json(json.dumps(doc))
    assert info.value.field == "output.sample"


def box_model(scale: float) -> bytes:
    """obs [None, 4] float32 -> action [None, 1] = scale * obs[0] (a model that may leave its box)."""
    w = numpy_helper.from_array(np.array([[scale], [0], [0], [0]], dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["action"])],
        "tiny_action",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_action_models_are_acted_on_inside_the_box_and_must_have_the_named_output(s3: Any) -> None:
    box = {"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}
    data = box_model(3.0)

    def publish(version: int, output: dict) -> None:
        manifest = ModelManifest.create(
            GAME,
            version,
            data,
            algorithm="SAC",
            learner_step=1,
            observation_space=OBS_SPACE,
            action_space=box,
            output=output,
        )
        publish_model(s3, BUCKET, manifest, data, SIGNING_KEY)

    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3)
    publish(1, {"name": "mean_action", "kind": "action"})
    with pytest.raises(ModelLoadError, match="the manifest names output 'mean_action', the model has \\['action'\\]"):
        sub.poll()
    publish(2, {"name": "action", "kind": "action"})
    assert sub.poll() and sub.manifest.output_kind == "action"
    for x, expected in ((0.5, 1.5), (1.0, 2.0), (-4.0, -2.0)):
        action = sub.act([x, 0.0, 0.0, 0.0])
        assert action.dtype == np.float32 and action.shape == (1,) and action[0] == pytest.approx(expected)
    assert sub.sample([0.5, 0.0, 0.0, 0.0]) is None  # no sample output: the client explores its own way
    publish(3, {"name": "action", "kind": "action", "sample": "action_sample"})
    with pytest.raises(ModelLoadError, match="names sample output 'action_sample', the model has \\['action'\\]"):
        sub.poll()


def test_nothing_the_bucket_holds_reaches_the_game_as_anything_but_a_model_error(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest with a discrete observation space (no game here has one) is a ManifestError, and a failure
    nobody foresaw while reading the pointer is a ModelLoadError: the game catches ModelError and plays on."""
    sub = _held_v1(s3)
    doc = json.loads(manifest_for(2, b"m").to_json())
    doc["observation_space"] = {"type": "discrete", "n": 4}
    s3.put_object(Bucket=BUCKET, Key=latest_key(GAME), Body=json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="observation_space: must be a 1-D box"):
        sub.poll()

    def unforeseen(_body: bytes) -> None:
        raise KeyError("shape")

    monkeypatch.setattr("rlplatform_client.subscriber.ManifestDocument.from_json", unforeseen)
    v2 = tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, SIGNING_KEY)
    with pytest.raises(ModelLoadError, match="the model pointer could not be read: KeyError"):
        sub.poll()
    assert (sub.version, sub.rejected_loads) == (1, 2)


# ---------------------------------------------------------------------------------------------- release state


def release(s3: Any, revision: int, stable: int, candidate: int | None = None, share: float = 0.0, key=None) -> None:
    state = ReleaseState(GAME, revision, stable, candidate, share)
    s3.put_object(Bucket=BUCKET, Key=release_key(GAME), Body=release_document(state, key or SIGNING_KEY))


def test_clients_play_the_version_the_release_names_for_them_and_follow_a_rollback(s3: Any) -> None:
    v1, v2 = tiny_model(PICK_FIRST), tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY, pointer=False)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, SIGNING_KEY, pointer=False)
    release(s3, 1, stable=1, candidate=2, share=1.0)  # every client with an id is in the candidate's share
    canary = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, client_id="client-0")
    plain = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=SpyS3(s3))
    assert canary.poll() and plain.poll()
    assert (canary.version, plain.version) == (2, 1)
    assert plain.poll() is False and plain._s3.gets[-1][1] == "304"  # unchanged: one conditional GET

    release(s3, 2, stable=1)  # the candidate is rolled back: its clients go back to v1, an older version
    assert canary.poll() is True and canary.version == 1 and canary.act([1.0, 0.0, 0.0, 0.0]) == 0
    assert plain.poll() is False and plain.version == 1


def test_a_release_state_that_is_forged_or_replayed_is_refused_and_the_model_kept(s3: Any) -> None:
    v1, v2 = tiny_model(PICK_FIRST), tiny_model(PICK_SECOND)
    publish_model(s3, BUCKET, manifest_for(1, v1), v1, SIGNING_KEY, pointer=False)
    publish_model(s3, BUCKET, manifest_for(2, v2), v2, SIGNING_KEY, pointer=False)
    release(s3, 5, stable=1)
    sub = ModelSubscriber(BUCKET, GAME, trusted_keys=TRUSTED_KEYS, s3=s3, client_id="client-0")
    assert sub.poll() and sub.version == 1

    release(s3, 6, stable=2, key=Ed25519PrivateKey.generate())  # someone with write access but not the key
    with pytest.raises(ModelSignatureError, match="release state: signed by key"):
        sub.poll()
    release(s3, 4, stable=2)  # a genuine but older state, written back
    with pytest.raises(ReleaseError, match="revision: 4 is older than revision 5"):
        sub.poll()
    release(s3, 7, stable=3)  # names a version that was never published
    with pytest.raises(ReleaseError, match="names v3, whose manifest .* does not exist; keeping model v1"):
        sub.poll()
    assert (sub.version, sub.rejected_loads, sub.act([1.0, 0.0, 0.0, 0.0])) == (1, 3, 0)
