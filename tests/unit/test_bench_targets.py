"""``rlplatform bench ingest --against``: target parsing and the refusals, without starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rlplatform.bench.ingest import BenchTargetError, Target, check_options, parse_target
from rlplatform.cli import app


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("moto+sqlite", Target("moto", "sqlite")),
        ("moto+cassandra", Target("moto", "cassandra")),
        ("http://127.0.0.1:4566+sqlite", Target("http://127.0.0.1:4566", "sqlite")),
        (" http://localstack:4566/+cassandra ", Target("http://localstack:4566", "cassandra")),
        ("https://kinesis.example:443+sqlite", Target("https://kinesis.example:443", "sqlite")),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("moto", "expected KINESIS+STORE"),
        ("+sqlite", "expected KINESIS+STORE"),
        ("moto+mysql", "unknown store 'mysql'; known: sqlite, cassandra"),
        ("localstack+sqlite", "KINESIS must be 'moto' or an endpoint URL"),
        ("ftp://host:21+sqlite", "KINESIS must be 'moto' or an endpoint URL"),
        ("http://host:port+sqlite", "bad port"),
    ],
)
def test_parse_target_refuses_with_the_option_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--against") as info:
        parse_target(text)
    assert message in str(info.value)


def test_label_and_slug() -> None:
    target = Target("http://127.0.0.1:4566", "cassandra")
    assert target.label == "http://127.0.0.1:4566+cassandra"
    assert target.slug == "127.0.0.1-4566-cassandra"
    assert Target().label == "moto+sqlite"


def test_check_options() -> None:
    check_options((Target(),), reshard_to=4)
    check_options((Target(), Target("http://127.0.0.1:4566", "cassandra")), reshard_to=None)
    with pytest.raises(BenchTargetError, match="--reshard-to: only with moto targets"):
        check_options((Target(), Target("http://127.0.0.1:4566", "sqlite")), reshard_to=4)
    with pytest.raises(BenchTargetError, match="--against: a target is given twice"):
        check_options((Target(), Target()), reshard_to=None)


def test_cli_refusals_exit_2_naming_the_option() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "ingest", "--against", "moto+mysql"])
    assert bad.exit_code == 2
    assert "--against" in bad.output and "mysql" in bad.output
    refused = runner.invoke(app, ["bench", "ingest", "--against", "http://127.0.0.1:4566+sqlite", "--reshard-to", "4"])
    assert refused.exit_code == 2
    assert "--reshard-to" in refused.output


def test_help_names_the_targets() -> None:
    out = CliRunner().invoke(app, ["bench", "ingest", "--help"], env={"COLUMNS": "200"}).output
    assert "--against" in out and "moto+sqlite" in out
