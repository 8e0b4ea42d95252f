"""The client SDK must work without the platform's heavy dependencies."""

from __future__ import annotations

import json
import subprocess
import sys


def test_client_imports_no_heavy_dependency() -> None:
    code = (
        "import json, sys, rlplatform_client, rlplatform_client.simulate, rlplatform_client.cli;"
        "print(json.dumps(sorted(m for m in ('pyspark', 'ray', 'torch', 'rlplatform') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_client_package_declares_only_light_dependencies() -> None:
    from importlib.metadata import requires

    names = {
        r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for r in requires("rlplatform-client") or []
        if "extra ==" not in r
    }
    # orjson: one small wheel; it encodes records ~5x faster than json and writes float32 arrays directly.
    assert names == {"boto3", "cryptography", "numpy", "onnxruntime", "orjson", "typer"}
