"""Operator commands with their bucket or store down end in one line naming the endpoint, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.infra import aws
from rlplatform.infra.aws import free_port

COMMANDS = [
    ["dlq"],
    ["games", "list"],
    ["games", "show", "Racer-v1"],
    ["games", "register", "Racer-v1", "--obs-size", "3", "--actions", "2"],
    ["models", "list", "--game", "CartPole-v1"],
    ["models", "show", "--game", "CartPole-v1"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_unreachable_bucket_is_one_line_naming_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(aws, "_config", aws._config)  # restored afterwards: fail_fast is for this command only
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"AWS_ENDPOINT_URL": endpoint, "RLP_SQLITE_PATH": str(tmp_path / "s.sqlite")}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: S3 at {endpoint}: Could not connect"), lines
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unreachable_store_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws, "_config", aws._config)
    port = free_port()
    env = {"RLP_STORE": "cassandra", "RLP_CASSANDRA_CONTACT_POINTS": "127.0.0.1", "RLP_CASSANDRA_PORT": str(port)}
    result = CliRunner().invoke(app, ["models", "list", "--game", "CartPole-v1"], env=env)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: the cassandra store at 127.0.0.1 port {port} does not answer"), lines
