"""The per-role IAM policies under deploy/policies/: valid documents, templates with known placeholders only, no
wildcard actions, and the old all-in-one policy gone. What they allow is enforced in tests/e2e/test_roles.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "deploy" / "policies"
PLACEHOLDERS = {"region", "account", "stream", "bucket", "keyspace", "game"}


def statements(role: str) -> list[dict]:
    return json.loads((POLICIES / f"{role}.json").read_text())["Statement"]


def test_one_policy_per_role_and_no_all_in_one_policy() -> None:
    assert sorted(p.stem for p in POLICIES.glob("*.json")) == ["bootstrap", "client", "ingest", "operator", "trainer"]
    assert not (ROOT / "deploy" / "iam-policy.json").exists()


@pytest.mark.parametrize("role", ["bootstrap", "client", "ingest", "operator", "trainer"])
def test_policies_are_allow_only_with_named_actions_and_known_placeholders(role: str) -> None:
    text = (POLICIES / f"{role}.json").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= PLACEHOLDERS
    for statement in statements(role):
        assert statement["Effect"] == "Allow" and statement["Sid"]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(re.fullmatch(r"(kinesis|s3|cassandra):[A-Z][A-Za-z]+", a) for a in actions), actions
        assert statement["Resource"] != "*"


def test_only_the_client_policy_is_per_game_and_it_writes_nothing_but_records() -> None:
    for role in ("bootstrap", "ingest", "trainer", "operator"):
        assert "${game}" not in (POLICIES / f"{role}.json").read_text(), role
    actions = {
        a for s in statements("client") for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert actions == {"kinesis:PutRecords", "kinesis:PutRecord", "s3:GetObject"}
