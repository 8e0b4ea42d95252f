"""Property-based fuzzing of the record parser: whatever a client sends, ``parse`` yields rows or a reason.

The parser's safety net turns an unexpected exception into a ``parser_error`` dead letter so ingest keeps
running; these tests demand that the net is never needed (every input gets a contract reason), and that the
fast path and the reference path give the same verdict on every mutated chunk.
"""

from __future__ import annotations

import gzip
import json
import uuid

import boto3
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from moto import mock_aws

from rlplatform.games import GameCatalog
from rlplatform.ingest.dead_letters import PARSER_ERROR
from rlplatform.ingest.parse import Rejected, parse
from rlplatform_client.contract import REJECT_KINDS
from tests.unit.test_parse_paths import reference, valid_doc

CATALOG_BUCKET = "rlp-fuzz-catalog"
FUZZ = hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


def check_outcome(data: bytes) -> tuple[str, object]:
    """``parse``'s outcome, after checking it never raised and never fell back on the safety net."""
    outcome = parse(data)
    if isinstance(outcome, Rejected):
        assert outcome.kind != PARSER_ERROR, (data[:300], outcome)
        assert outcome.kind in REJECT_KINDS, outcome
        assert outcome.error.startswith(outcome.field), outcome
        return "rejected", outcome
    game_id, batch = outcome
    assert game_id == "CartPole-v1" and len(batch) >= 1
    return "accepted", outcome


@FUZZ
@given(st.binary(max_size=2048))
@example(b"\x1f\x8b")
@example(b'{"v":1}' + b" " * 10)
@example("{}".encode("utf-16"))
def test_arbitrary_bytes_get_rows_or_a_reason(data: bytes) -> None:
    check_outcome(data)
    check_outcome(gzip.compress(data))


@FUZZ
@given(json_values)
def test_arbitrary_json_gets_rows_or_a_reason(value: object) -> None:
    check_outcome(json.dumps(value).encode())


def paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, (*prefix, i))
    return found


def replace_at(doc: object, path: tuple, value: object) -> None:
    *parents, last = path
    for key in parents:
        doc = doc[key]
    doc[last] = value


@FUZZ
@given(st.data(), st.integers(min_value=1, max_value=6), st.booleans())
def test_mutated_valid_chunks_get_the_reference_verdict(data: st.DataObject, n_steps: int, compress: bool) -> None:
    doc = valid_doc(n_steps)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(paths(doc)))
        replace_at(doc, path, data.draw(json_values))
    if data.draw(st.booleans()):
        doc[data.draw(st.text(max_size=8))] = data.draw(json_values)  # an extra (unknown) field
    record = json.dumps(doc).encode()
    record = gzip.compress(record) if compress else record
    verdict, outcome = check_outcome(record)
    expected = reference(record)
    assert verdict == expected[0], (record[:300], outcome, expected)
    if verdict == "accepted":
        for name in ("t", "obs", "action", "reward", "next_obs", "terminated", "truncated", "model_version"):
            np.testing.assert_array_equal(getattr(outcome[1], name), getattr(expected[1], name))
    else:
        assert outcome.error == expected[2], (outcome, expected)


def kind_of(data: bytes) -> str:
    outcome = parse(data)
    return outcome.kind if isinstance(outcome, Rejected) else "accepted"


def test_a_huge_integer_in_an_unknown_field_is_ignored_and_in_a_known_field_rejected() -> None:
    doc = valid_doc(2)
    raw = json.dumps(doc).encode()
    huge = b"9" * 5000
    assert kind_of(raw[:-1] + b', "extra": ' + huge + b"}") == "accepted"
    assert kind_of(raw.replace(b'"model_version": 2', b'"model_version": ' + huge)) == "wrong_type"


@pytest.mark.parametrize("game_id", ["LunarLander-v3", "Ant-v5", "ALE/Pong-v5", "NoSuchGame-v0"])
def test_a_game_that_cannot_be_built_here_is_unknown_game(game_id: str) -> None:
    doc = valid_doc(2)
    doc["game_id"] = game_id
    assert kind_of(json.dumps(doc).encode()) == "unknown_game"


def test_only_utf8_is_json() -> None:
    text = json.dumps(valid_doc(2))
    assert kind_of(text.encode("utf-8")) == "accepted"
    assert kind_of(text.encode("utf-16")) == "not_json"
    assert kind_of(b"\xef\xbb\xbf" + text.encode()) == "not_json"  # a BOM is not JSON text


@pytest.mark.parametrize(
    "spelling", [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u, lambda u: u.replace("-", "")]
)
def test_every_uuid_spelling_gives_the_canonical_episode_id(spelling) -> None:
    episode = str(uuid.uuid4())
    doc = valid_doc(2)
    doc["episode_id"] = spelling(episode)
    for record in (json.dumps(doc).encode(), gzip.compress(json.dumps(doc, indent=1).encode())):
        _, batch = parse(record)
        assert batch.episode_id.tolist() == [episode, episode]


@pytest.mark.parametrize("flag", ["terminated", "truncated"])
def test_a_step_after_the_episode_ended_is_refused(flag: str) -> None:
    doc = valid_doc(3)
    doc["steps"][0][flag] = True
    outcome = parse(json.dumps(doc).encode())
    assert isinstance(outcome, Rejected) and outcome.kind == "step_after_end" and outcome.field == "steps[1]"


def test_empty_steps_is_bad_length_not_too_large() -> None:
    doc = valid_doc(1)
    doc["steps"] = []
    assert kind_of(json.dumps(doc).encode()) == "bad_length"


# Any code point, lone surrogates included (what a JSON "\ud800" escape decodes to), and control characters.
any_text = st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=20)


@FUZZ
@given(st.sampled_from(["game_id", "client_id", "episode_id"]), any_text, st.booleans())
@example("game_id", "\ud800", False)
@example("client_id", "bot\x00", False)
@example("episode_id", "\udfff" * 3, True)
def test_any_string_in_any_string_field_gets_a_contract_reason_from_the_catalog(
    field: str, text: str, compress: bool
) -> None:
    """Surrogates and control characters in every string field: stored or refused with a contract reason, never
    the safety net, also when the game id goes to the bucket's catalog (an S3 key must be encodable)."""
    doc = valid_doc(2)
    doc[field] = text
    record = json.dumps(doc).encode()  # ensure_ascii: a lone surrogate travels as a legal \ud800 escape
    record = gzip.compress(record) if compress else record
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=CATALOG_BUCKET)
        outcome = parse(record, GameCatalog(CATALOG_BUCKET).resolve)
    if isinstance(outcome, Rejected):
        assert outcome.kind in REJECT_KINDS and outcome.kind != PARSER_ERROR, outcome
        if not text.isprintable():
            assert outcome.kind in ("bad_string", "bad_length"), outcome
    else:
        assert text.isprintable() and outcome[1].episode_id[0]


def test_a_lone_surrogate_or_nul_in_an_id_is_bad_string() -> None:
    for field, text in (("game_id", "Cart\ud800"), ("client_id", "a\x00b"), ("episode_id", "\ud800" * 36)):
        doc = valid_doc(1)
        doc[field] = text
        outcome = parse(json.dumps(doc).encode())
        assert isinstance(outcome, Rejected) and (outcome.kind, outcome.field) == ("bad_string", field), outcome
