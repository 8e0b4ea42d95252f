"""``rlplatform models``: published versions beside the live returns of the clients that played them."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.store.sqlite import SqliteStore
from rlplatform_client.models import ModelManifest, publish_model
from tests.contract.test_store_contract import episode
from tests.support import SIGNING_KEY


def test_models_lists_versions_with_their_live_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLP_SQLITE_PATH", str(tmp_path / "s.sqlite"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to the terminal width
    with SqliteStore(tmp_path / "s.sqlite") as store:
        for n in (10, 14):
            store.write("CartPole-v1", episode(n, version=0, reward=1.0))
        store.write("CartPole-v1", episode(40, version=1, reward=1.0))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="rlp-models")
        for version, eval_return in ((1, 42.0), (2, None)):
            manifest = ModelManifest.create(
                "CartPole-v1",
                version,
                b"onnx",
                algorithm="DQN",
                learner_step=1000 * version,
                observation_space={"type": "box", "shape": [4], "dtype": "float32"},
                action_space={"type": "discrete", "n": 2},
                eval_return=eval_return,
            )
            publish_model(s3, "rlp-models", manifest, b"onnx", SIGNING_KEY)
        out = CliRunner().invoke(app, ["models", "list", "--game", "CartPole-v1"], terminal_width=200)
    assert out.exit_code == 0, out.output
    rows = {line.split("│")[1].strip(): line for line in out.output.splitlines() if line.count("│") > 5}
    assert "random play" in rows["0"] and "12.0 ± 2.0 (n=2, len 12)" in rows["0"]
    assert "DQN" in rows["1"] and "40.0 ± 0.0 (n=1, len 40)" in rows["1"] and "42.0" in rows["1"]
    assert "2000" in rows["2"] and rows["2"].split("│")[5].strip() == "-"  # no episode played by v2 yet
    assert "exploring clients" in out.output
