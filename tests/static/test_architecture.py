"""The architecture as tests: the import contracts in pyproject.toml hold, they fail when an import breaks
them, and the light commands load neither Spark nor Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(python_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    argv = [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contracts_catch_a_cycle_and_an_import_up_the_chain(tmp_path: Path) -> None:
    """A copy of the packages with two bad imports added: the store reaching the trainer (a stage importing
    a later one), and the terminal view importing the launcher that imports it (a cycle)."""
    for package in (ROOT / "src" / "rlplatform", ROOT / "client" / "src" / "rlplatform_client"):
        shutil.copytree(package, tmp_path / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "rlplatform" / "store" / "base.py").open("a") as f:
        f.write("\nimport rlplatform.train.trainer  # noqa: E402\n")
    with (tmp_path / "rlplatform" / "stack" / "view.py").open("a") as f:
        f.write("\nfrom rlplatform.stack import launcher  # noqa: E402\n")

    result = _lint_imports(tmp_path)

    assert result.returncode != 0
    assert "rlplatform.store is not allowed to import rlplatform.train" in result.stdout
    assert ".view -> .launcher" in result.stdout


def test_light_commands_import_neither_spark_nor_ray(tmp_path: Path) -> None:
    """``dlq``, ``games`` and ``models`` run where the platform's heavy engines are not wanted (an operator's
    laptop): run them for real against a bucket (moto in-process) and an empty store, then look at what
    the interpreter loaded."""
    script = textwrap.dedent(
        """
        import json, sys
        import boto3
        from moto import mock_aws
        from typer.testing import CliRunner

        from rlplatform.cli import app

        with mock_aws():
            boto3.client("s3").create_bucket(Bucket="rlp-models")
            runs = [
                ["dlq", "--help"], ["dlq"],
                ["games", "list"], ["games", "show", "CartPole-v1"],
                ["models", "--help"], ["models", "list", "--game", "CartPole-v1"],
                ["models", "show", "--game", "CartPole-v1"],
            ]
            for args in runs:
                result = CliRunner().invoke(app, args)
                assert result.exit_code == 0, (args, result.output, result.exception)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "ray"))))
        """
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "RLP_SQLITE_PATH": str(tmp_path / "experience.sqlite"),
    }
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_KINESIS", "RLP_STORE", "RLP_BUCKET"):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
