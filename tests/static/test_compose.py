"""Static checks of the Docker Compose stack and its images (no Docker engine needed).

- docker-compose.yml, and docker-compose.yml merged with docker-compose.aws.yml, validate against
  the Compose specification's JSON schema (check-jsonschema's vendored ``vendor.compose-spec``);
- the Dockerfiles under docker/ pass hadolint;
- every service command names an existing entry point with options it declares;
- every RLP_* variable is read by rlplatform.settings.Settings (its fields, its store adapters' sections');
- every Ray node and driver runs with token auth and one secret from .env, which is required and not shipped;
- images are pinned, host ports are bound to 127.0.0.1, dependencies are consistent;
- the LocalStack ready hook and rlplatform's bootstrap agree (run under moto).

There is no ``docker compose config`` here, so ``merge_compose`` below implements the part of the
Compose merge rules these files rely on (https://github.com/compose-spec/compose-spec/blob/main/13-merge.md):
mappings merge, sequences append, ``command``/``entrypoint``/``healthcheck.test`` are replaced,
``ports``/``volumes`` merge on their unique keys, ``!reset`` removes, ``!override`` replaces.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlplatform.settings import CassandraSettings, Settings, env_var_names
from tests.support import check_command_line, cli_group

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
AWS = ROOT / "docker-compose.aws.yml"
ENV_EXAMPLE = ROOT / ".env.example"
HOOK = ROOT / "compose" / "localstack" / "ready.d" / "10-bootstrap.py"
DOCKERFILES = sorted((ROOT / "docker").glob("*Dockerfile*"))
VENV_BIN = Path(sys.executable).parent
SCALABLE = ("spark-worker", "ray-worker", "clients")
# Variables Compose reads from the host that .env.example deliberately does not set.
HOST_VARS = {"HOME"}


# -- YAML with Compose's merge tags ------------------------------------------------------------------


class Reset:
    """``!reset``: remove the attribute from the merged model."""


class Override:
    """``!override``: replace the attribute instead of merging it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: Override(_construct_any(loader, node)))


def load_compose(path: Path) -> dict:
    with path.open() as fh:
        doc = yaml.load(fh, Loader=ComposeLoader)
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    return doc


# -- merge -------------------------------------------------------------------------------------------

REPLACED_SEQUENCES = {("command",), ("entrypoint",), ("healthcheck", "test")}


def _service_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """The attribute path inside a service (``services.<name>.`` stripped), else ``()``."""
    return path[2:] if len(path) > 2 and path[0] == "services" else ()


def _env_dict(value: Any) -> dict:
    if isinstance(value, list):  # KEY=VALUE list form
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in value)
    return value


def _depends_dict(value: Any) -> dict:
    if isinstance(value, list):
        return {name: {"condition": "service_started"} for name in value}
    return value


def _port_key(entry: Any) -> tuple:
    if isinstance(entry, dict):
        return (entry.get("host_ip"), entry.get("target"), entry.get("published"), entry.get("protocol", "tcp"))
    spec, _, protocol = str(entry).partition("/")
    parts = spec.split(":")
    ip = parts[0] if len(parts) == 3 else None
    published = parts[-2] if len(parts) >= 2 else None
    return (ip, parts[-1], published, protocol or "tcp")


def _volume_key(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("target")
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge_unique(base: list, override: list, key) -> list:
    merged = {key(e): e for e in base}
    for entry in override:
        merged[key(entry)] = entry  # same unique key: the override's entry wins
    return list(merged.values())


def merge_compose(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """Merge ``override`` onto ``base`` following the Compose specification's merge rules."""
    if isinstance(override, Override):
        return strip_tags(override.value)
    attr = _service_path(path)
    if attr in {("environment",), ("labels",)}:
        base, override = _env_dict(base), _env_dict(override)
    if attr == ("depends_on",):
        base, override = _depends_dict(base), _depends_dict(override)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value, (*path, str(key)))
            else:
                merged[key] = strip_tags(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if attr in REPLACED_SEQUENCES:
            return strip_tags(override)
        if attr == ("ports",):
            return _merge_unique(base, override, _port_key)
        if attr in {("volumes",), ("secrets",), ("configs",)}:
            return _merge_unique(base, override, _volume_key)
        return base + strip_tags(override)
    return strip_tags(override)


def strip_tags(value: Any) -> Any:
    """A value from an override file with its ``!override`` tags resolved and ``!reset`` entries dropped."""
    if isinstance(value, Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [strip_tags(v) for v in value if not isinstance(v, Reset)]
    return value


def assert_no_tags(value: Any, where: str = "") -> None:
    assert not isinstance(value, (Reset, Override)), f"unresolved merge tag at {where}"
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_tags(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_no_tags(v, f"{where}[{i}]")


def test_merge_rules_used_by_the_override() -> None:
    base = {
        "services": {
            "a": {
                "command": ["x", "y"],
                "environment": ["KEEP=1", "DROP=2"],
                "depends_on": ["b"],
                "ports": ["127.0.0.1:80:80"],
                "volumes": ["v:/data", "w:/other"],
                "dns": ["1.1.1.1"],
            }
        }
    }
    override = load_compose_text(
        """
services:
  a:
    command: ["z"]
    environment: {DROP: !reset null, NEW: "3"}
    depends_on: {b: !reset null, c: {condition: service_healthy}}
    ports: !override ["127.0.0.1:81:81"]
    volumes: ["u:/data"]
    dns: ["8.8.8.8"]
"""
    )
    merged = merge_compose(base, override)["services"]["a"]
    assert merged["command"] == ["z"]
    assert merged["environment"] == {"KEEP": "1", "NEW": "3"}
    assert merged["depends_on"] == {"c": {"condition": "service_healthy"}}
    assert merged["ports"] == ["127.0.0.1:81:81"]
    assert merged["volumes"] == ["u:/data", "w:/other"]
    assert merged["dns"] == ["1.1.1.1", "8.8.8.8"]


def load_compose_text(text: str) -> dict:
    return yaml.load(text, Loader=ComposeLoader)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> dict:
    return load_compose(BASE)


@pytest.fixture(scope="module")
def aws_override() -> dict:
    return load_compose(AWS)


@pytest.fixture(scope="module")
def merged_aws(base: dict, aws_override: dict) -> dict:
    merged = merge_compose(base, aws_override)
    assert_no_tags(merged)
    return merged


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for lineno, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", line), f".env.example:{lineno}: not KEY=VALUE: {line!r}"
        key, value = line.split("=", 1)
        values[key] = value
    return values


def both_configs(base: dict, merged_aws: dict) -> list[tuple[str, dict]]:
    return [("docker-compose.yml", base), ("docker-compose.yml + docker-compose.aws.yml", merged_aws)]


# -- interpolation -----------------------------------------------------------------------------------

# An argument holds no "$": a nested ``${A:-${B:-x}}`` is resolved from the inside out.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}$]*))?\}|\$\$")


def referenced_vars(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``$$``,
    nested (``${A:-${B:-default}}``)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        present = bool(env.get(name)) if op in (":-", ":?") else name in env
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"variable {name} is required but unset ({arg or 'no default'})")

    while True:  # one pass per level of nesting; "$$" only ever occurs outside ${...}
        resolved = _VAR.sub(sub, value)
        if resolved == value or "${" not in resolved:
            return resolved
        value = resolved


# -- schema ------------------------------------------------------------------------------------------


def _tool(name: str) -> Path:
    path = VENV_BIN / name
    assert path.is_file(), f"{name} not found at {path}: install the dev extra (pip install -e '.[dev]')"
    return path


def check_compose_schema(path: Path) -> None:
    proc = subprocess.run(
        [str(_tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{path.name} does not match the Compose schema:\n{proc.stdout}{proc.stderr}"


def test_base_compose_validates_against_the_compose_schema() -> None:
    check_compose_schema(BASE)


def test_merged_aws_compose_validates_against_the_compose_schema(merged_aws: dict, tmp_path: Path) -> None:
    # check-jsonschema cannot read the override's !reset tags, so it checks our merge of both files.
    merged_file = tmp_path / "merged-aws.json"
    merged_file.write_text(json.dumps(merged_aws, indent=2))
    check_compose_schema(merged_file)


# -- Dockerfiles -------------------------------------------------------------------------------------


def test_dockerfiles_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"platform.Dockerfile", "client.Dockerfile"} <= names, names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    proc = subprocess.run(
        [str(_tool("hadolint")), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned(dockerfile: Path) -> None:
    for line in dockerfile.read_text().splitlines():
        if line.upper().startswith("FROM "):
            image = line.split()[1]
            assert_pinned_image(image, where=dockerfile.name)
    text = dockerfile.read_text()
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M), f"{dockerfile.name} must switch to a non-root USER"


def test_platform_image_runs_the_same_python_for_spark_and_ray() -> None:
    text = (ROOT / "docker" / "platform.Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "PYSPARK_PYTHON=/opt/venv/bin/python" in text
    assert "SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark" in text
    assert re.search(r"^FROM python:3\.11\.", text, re.M), "SPARK_HOME names python3.11: keep the base image on 3.11"


def test_client_image_has_no_platform_dependencies() -> None:
    text = (ROOT / "docker" / "client.Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for heavy in ("pyspark", "ray", "torch", "openjdk", "COPY src", "COPY pyproject.toml"):
        assert heavy not in code, f"client.Dockerfile installs or copies {heavy}"
    assert '"./client[simulate]"' in code


# -- images and ports --------------------------------------------------------------------------------


def assert_pinned_image(image: str, where: str) -> None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    assert "@sha256:" in image or ":" in last, f"{where}: image {image!r} has no tag"
    tag = last.split(":", 1)[1] if ":" in last else ""
    assert tag != "latest", f"{where}: image {image!r} uses the latest tag"
    assert "@sha256:" in image or re.search(r"\d", tag), f"{where}: image {image!r} is not pinned to a version"


def test_images_are_pinned_and_ports_local(base: dict, merged_aws: dict, env_example: dict) -> None:
    env = {**env_example, "HOME": "/home/user"}
    for label, config in both_configs(base, merged_aws):
        for name, svc in config["services"].items():
            assert "image" in svc, f"{label}: {name} has no image"
            assert_pinned_image(interpolate(svc["image"], env), where=f"{label}: {name}")
            for port in svc.get("ports", []):
                if isinstance(port, dict):
                    assert port.get("host_ip") == "127.0.0.1", f"{label}: {name} publishes {port} beyond 127.0.0.1"
                else:
                    assert str(port).startswith("127.0.0.1:"), f"{label}: {name} publishes {port} beyond 127.0.0.1"


def test_scalable_services_have_no_fixed_name_or_host_port(base: dict) -> None:
    for name in SCALABLE:
        svc = base["services"][name]
        assert "container_name" not in svc and "ports" not in svc, name


def test_builds_use_repo_root_context(base: dict, aws_override: dict) -> None:
    for config in (base, aws_override):
        for name, svc in config["services"].items():
            if "build" in svc:
                assert svc["build"]["context"] == ".", name
                assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
                assert svc["build"]["dockerfile"].startswith("docker/"), name


def test_only_the_trainer_and_operator_hold_the_signing_key_and_clients_trust_its_public_keys(
    base: dict, merged_aws: dict, env_example: dict
) -> None:
    for label, config in both_configs(base, merged_aws):
        holders = {name for name, svc in config["services"].items() if svc.get("secrets")}
        assert holders == {"trainer", "operator"}, f"{label}: {holders}"  # models, and release changes
        for holder in holders:
            env = _env_dict(config["services"][holder]["environment"])
            assert env["RLP_SIGNING_KEY_FILE"] == "/run/secrets/model-signing-key", (label, holder)
        assert config["secrets"]["model-signing-key"]["file"] == "./keys/signing.key", label
        clients = config["services"]["clients"]
        assert "./keys/trusted.pem:/etc/rlplatform/trusted.pem:ro" in clients["volumes"], label
        command = service_commands(clients, env_example)[0]
        assert command[command.index("--trusted-keys") + 1] == "/etc/rlplatform/trusted.pem", label
        assert not any("signing" in str(v) for svc in config["services"].values() for v in svc.get("volumes", [])), (
            label
        )


# -- dependencies ------------------------------------------------------------------------------------


def _active(svc: dict) -> bool:
    return not svc.get("profiles")


def test_dependencies_exist_and_health_conditions_have_healthchecks(base: dict, merged_aws: dict) -> None:
    for label, config in both_configs(base, merged_aws):
        services = config["services"]
        for name, svc in services.items():
            for dep, spec in _depends_dict(svc.get("depends_on", {})).items():
                assert dep in services, f"{label}: {name} depends on undefined service {dep}"
                if spec.get("condition") == "service_healthy":
                    assert "healthcheck" in services[dep], f"{label}: {name} waits for {dep}, which has no healthcheck"
                if _active(svc):
                    assert _active(services[dep]), f"{label}: {name} depends on {dep}, disabled by a profile"


def test_base_waits_for_healthy_backends(base: dict) -> None:
    services = base["services"]
    for name, deps in {
        "ingest": ("localstack", "cassandra", "spark-master"),
        "trainer": ("localstack", "cassandra", "ray-head"),
        "clients": ("localstack",),
        "spark-worker": ("spark-master",),
        "ray-worker": ("ray-head",),
    }.items():
        for dep in deps:
            assert services[name]["depends_on"][dep]["condition"] == "service_healthy", (name, dep)


def test_aws_override_drops_localstack_and_endpoint_overrides(merged_aws: dict) -> None:
    services = merged_aws["services"]
    assert services["localstack"].get("profiles"), "localstack must be disabled by a profile on AWS"
    for name, svc in services.items():
        if not _active(svc) and name != "bootstrap":
            continue
        assert "localstack" not in _depends_dict(svc.get("depends_on", {})), name
        env = _env_dict(svc.get("environment", {}))
        for key in env:
            assert not key.startswith("AWS_ENDPOINT_URL"), f"{name} still sets {key} on AWS"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert key not in env, f"{name} still sets the LocalStack dummy {key} on AWS"
        if any(k.startswith("AWS_") for k in env):
            assert "AWS_PROFILE" in env, name
            assert any(str(v).endswith("/home/app/.aws:ro") for v in svc.get("volumes", [])), name
            assert env.get("RLP_PROFILE", "aws") == "aws", name


# -- commands ----------------------------------------------------------------------------------------


def _argv(value: Any, env: dict[str, str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value, env))
    return [interpolate(str(v), env) for v in value]


def service_commands(svc: dict, env: dict[str, str]) -> list[list[str]]:
    """The command lines a service runs: entrypoint + command, with ``sh -c`` scripts split up."""
    argv = _argv(svc.get("entrypoint"), env) + _argv(svc.get("command"), env)
    if not argv:
        return []
    if argv[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and argv[1:2] == ["-c"]:
        script, positional = argv[2], argv[4:]  # argv[3] is $0
        commands = []
        for part in re.split(r"&&|;", script):
            words = shlex.split(part)
            if words[:1] == ["exec"]:
                words = words[1:]
            words = [w for token in words for w in (positional if token == "$@" else [token])]
            if words:
                commands.append(words)
        return commands
    return [argv]


def _pyspark_dir() -> Path:
    spec = find_spec("pyspark")
    assert spec is not None and spec.submodule_search_locations, "pyspark is not installed in this venv"
    return Path(next(iter(spec.submodule_search_locations)))


def _check_spark_class(argv: list[str], where: str) -> None:
    spark_class = _pyspark_dir() / "bin" / "spark-class"
    assert spark_class.is_file(), f"{where}: {spark_class} is missing"
    assert len(argv) >= 2 and argv[1].startswith("org.apache.spark."), f"{where}: {argv}"
    entry = argv[1].replace(".", "/") + ".class"
    for jar in (_pyspark_dir() / "jars").glob("spark-core_*.jar"):
        with zipfile.ZipFile(jar) as zf:
            if entry in zf.namelist():
                return
    raise AssertionError(f"{where}: class {argv[1]} is not in pyspark's spark-core jar")


def check_command(argv: list[str], where: str) -> None:
    exe = argv[0]
    if exe in ("rlplatform", "rlplatform-client"):
        assert (VENV_BIN / exe).is_file(), f"{where}: entry point {exe} is not installed"
        module = "rlplatform.cli" if exe == "rlplatform" else "rlplatform_client.cli"
        check_command_line(cli_group(module), argv, where)
    elif exe == "spark-class":
        _check_spark_class(argv, where)
    elif exe == "ray":
        assert (VENV_BIN / "ray").is_file(), f"{where}: ray is not installed in the venv"
        from ray.scripts.scripts import cli as ray_cli

        check_command_line(ray_cli, argv, where)
    else:
        raise AssertionError(f"{where}: unknown executable {exe!r}; teach this test how to check it")


def test_every_service_command_names_an_existing_entry_point(base: dict, merged_aws: dict, env_example: dict) -> None:
    env = {**env_example, "HOME": "/home/user"}
    checked = set()
    for label, config in both_configs(base, merged_aws):
        for name, svc in config["services"].items():
            if not svc.get("build"):
                assert "command" not in svc and "entrypoint" not in svc, f"{label}: {name}"
                continue
            commands = service_commands(svc, env)
            assert commands, f"{label}: {name} has no command"
            for argv in commands:
                check_command(argv, f"{label}: {name}")
                checked.add(argv[0])
    assert checked == {"rlplatform", "rlplatform-client", "spark-class", "ray"}, checked


def test_ray_healthcheck_is_a_ray_command(base: dict) -> None:
    test = base["services"]["ray-head"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    check_command(test[1:], "ray-head healthcheck")


def test_trainer_joins_the_ray_cluster_it_drives(base: dict, env_example: dict) -> None:
    commands = service_commands(base["services"]["trainer"], env_example)
    assert commands[0][:2] == ["ray", "start"] and "--address=ray-head:6379" in commands[0]
    assert commands[-1][:2] == ["rlplatform", "trainers"]
    assert commands[-1][commands[-1].index("--ray-address") + 1] == "ray-head:6379"


@pytest.mark.parametrize("path", [BASE, AWS], ids=lambda p: p.name)
def test_no_game_is_named_in_compose(path: Path) -> None:
    """Which games train, and how, is the catalog's (rlplatform games register / configure), not the compose file's."""
    import gymnasium as gym

    text = path.read_text()
    named = [g for g in gym.registry if re.search(rf"(?<![\w.-]){re.escape(g)}(?![\w.-])", text)]
    assert not named, f"{path.name} names {named}"


# -- variables ---------------------------------------------------------------------------------------


def test_every_rlp_variable_is_a_settings_field() -> None:
    prefix = Settings.model_config["env_prefix"]
    fields = env_var_names()
    for path in (BASE, AWS, ENV_EXAMPLE, HOOK):
        used = set(re.findall(rf"\b{prefix}[A-Z0-9_]+", path.read_text()))
        unknown = used - fields
        assert not unknown, f"{path.name} uses {sorted(unknown)}, which rlplatform.settings.Settings does not read"


def test_env_example_covers_every_interpolated_variable(env_example: dict) -> None:
    used = referenced_vars(BASE.read_text()) | referenced_vars(AWS.read_text())
    missing = used - set(env_example) - HOST_VARS
    assert not missing, f".env.example lacks {sorted(missing)}"
    unused = set(env_example) - used
    assert not unused, f".env.example sets {sorted(unused)}, which no compose file reads"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[A-Z_]", line):
            assert i and lines[i - 1].startswith("# "), f".env.example: {line.split('=')[0]} has no comment"
    assert env_example["LOCALSTACK_AUTH_TOKEN"] == ""


def test_env_example_defaults_match_compose_and_settings(env_example: dict) -> None:
    text = BASE.read_text() + AWS.read_text()
    for name, default in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", text):
        # A nested default (another variable) is the fallback of an empty value: .env.example leaves it empty.
        expected = "" if default.startswith("${") else default
        assert env_example[name] == expected, f"{name}: .env.example has {env_example[name]!r}, compose {default!r}"
    fields = Settings.model_fields
    for name in ("stream_name", "shard_count", "bucket"):
        assert env_example["RLP_" + name.upper()] == str(fields[name].default), name
    for name in ("keyspace", "ttl_seconds"):
        assert env_example["RLP_CASSANDRA_" + name.upper()] == str(CassandraSettings.model_fields[name].default), name
    assert float(env_example["RLP_INGEST_TRIGGER_SECONDS"]) == fields["ingest_trigger_seconds"].default


def test_compose_settings_parse(
    base: dict, merged_aws: dict, env_example: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RLP_* values each service gets are accepted by Settings and its store sections (types, patterns,
    ranges), read from the environment as the service reads them."""
    env = {**env_example, "HOME": "/home/user"}
    prefix = Settings.model_config["env_prefix"]
    for var in env_var_names():
        monkeypatch.delenv(var, raising=False)
    for label, config in both_configs(base, merged_aws):
        for name, svc in config["services"].items():
            values = {
                k: interpolate(str(v), env)
                for k, v in _env_dict(svc.get("environment", {})).items()
                if k.startswith(prefix)
            }
            if values:
                with monkeypatch.context() as service_env:
                    for var, value in values.items():
                        service_env.setenv(var, value)
                    Settings()
                assert values.get(prefix + "STORE", "cassandra") == "cassandra", f"{label}: {name}"


# -- Ray authentication ------------------------------------------------------------------------------

RAY_AUTH_TOKEN_REF = re.compile(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}")  # required: Compose stops, with a message


def runs_ray(svc: dict, env: dict[str, str]) -> bool:
    """The service runs a Ray node (``ray start``) or a Ray driver (``rlplatform train --ray-address``)."""
    return any(argv[0] == "ray" or "--ray-address" in argv for argv in service_commands(svc, env))


def test_every_ray_process_uses_token_auth_with_the_secret_from_env(
    base: dict, merged_aws: dict, env_example: dict
) -> None:
    """Explicit RAY_AUTH_MODE=token wherever Ray runs: a node joining an address and a driver's
    ray.init(address=...) never turn token auth on by themselves, and a head's default depends on
    whether ~/.ray/auth_token exists."""
    env = {**env_example, "HOME": "/home/user"}
    for label, config in both_configs(base, merged_aws):
        ray_services = set()
        for name, svc in config["services"].items():
            values = _env_dict(svc.get("environment", {}))
            if runs_ray(svc, env):
                ray_services.add(name)
                assert values.get("RAY_AUTH_MODE") == "token", f"{label}: {name} runs Ray without RAY_AUTH_MODE=token"
                token = str(values.get("RAY_AUTH_TOKEN"))
                assert RAY_AUTH_TOKEN_REF.fullmatch(token), f"{label}: {name}: RAY_AUTH_TOKEN is {token!r}"
                assert "RAY_AUTH_TOKEN_PATH" not in values, f"{label}: {name}"
            else:
                ray_vars = sorted(k for k in values if k.startswith("RAY_AUTH"))
                assert not ray_vars, f"{label}: {name} runs no Ray but gets {ray_vars}"
        assert ray_services == {"ray-head", "ray-worker", "trainer"}, f"{label}: {sorted(ray_services)}"


def test_ray_auth_token_is_required_and_not_shipped(base: dict, env_example: dict) -> None:
    assert env_example["RAY_AUTH_TOKEN"] == "", ".env.example must not ship a Ray token: everyone would share it"
    lines = ENV_EXAMPLE.read_text().splitlines()
    assert "secrets.token_hex(32)" in lines[lines.index("RAY_AUTH_TOKEN=") - 1], "say how to generate the token"
    reference = base["services"]["ray-head"]["environment"]["RAY_AUTH_TOKEN"]
    with pytest.raises(AssertionError, match="RAY_AUTH_TOKEN is required"):
        interpolate(reference, env_example)  # .env copied from .env.example and left as is: Compose stops
    assert interpolate(reference, {**env_example, "RAY_AUTH_TOKEN": "0f" * 32}) == "0f" * 32


# -- LocalStack ready hook ---------------------------------------------------------------------------


def test_host_engines_run_the_versions_compose_pins(base: dict) -> None:
    """The tests run LocalStack and Cassandra on the host (tests/*_node.py): the same versions as the images."""
    images = {name: svc["image"].split(":")[1] for name, svc in base["services"].items() if "image" in svc}
    constraints = (ROOT / "compose" / "localstack" / "constraints.txt").read_text()
    assert f"localstack-core=={images['localstack']}" in constraints.splitlines()
    pom = (ROOT / "compose" / "cassandra" / "pom.xml").read_text()
    assert re.search(rf"<artifactId>cassandra-all</artifactId>\s*<version>{re.escape(images['cassandra'])}</", pom)


def test_localstack_mounts_match_the_hook(base: dict) -> None:
    volumes = base["services"]["localstack"]["volumes"]
    assert "./compose/localstack/ready.d:/etc/localstack/init/ready.d:ro" in volumes
    assert "./src/rlplatform/infra/bootstrap.py:/opt/rlplatform/bootstrap.py:ro" in volumes
    assert '"/opt/rlplatform"' in HOOK.read_text()
    env = base["services"]["localstack"]["environment"]
    assert env["SERVICES"] == "kinesis,s3"
    assert env["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"
    assert {"RLP_STREAM_NAME", "RLP_SHARD_COUNT", "RLP_BUCKET"} <= set(env)


@pytest.mark.parametrize(
    "names",
    [{}, {"RLP_STREAM_NAME": "other-stream", "RLP_SHARD_COUNT": "3", "RLP_BUCKET": "other-bucket"}],
    ids=["settings-defaults", "from-env"],
)
def test_localstack_hook_creates_stream_and_bucket(names: dict, tmp_path: Path, monkeypatch) -> None:
    """Run the hook the way LocalStack does (``exec(source, {})``), against moto instead of LocalStack."""
    import boto3
    from moto import mock_aws

    bootstrap_py = ROOT / "src" / "rlplatform" / "infra" / "bootstrap.py"
    assert bootstrap_py.is_file(), f"{bootstrap_py} is missing: the LocalStack hook imports it"
    # The hook looks in /opt/rlplatform first; here the module comes from a copy on sys.path.
    mounted = tmp_path / "opt-rlplatform"
    mounted.mkdir()
    shutil.copy(bootstrap_py, mounted / "bootstrap.py")
    monkeypatch.syspath_prepend(str(mounted))
    monkeypatch.delitem(sys.modules, "bootstrap", raising=False)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for var in ("RLP_STREAM_NAME", "RLP_SHARD_COUNT", "RLP_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    for var, value in names.items():
        monkeypatch.setenv(var, value)
    region = "eu-west-1"  # not us-east-1, so the bucket needs a LocationConstraint
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)

    real_client = boto3.client
    endpoints = []

    def client_via_moto(*args, endpoint_url=None, **kwargs):
        endpoints.append(endpoint_url)  # LocalStack's; moto intercepts AWS's own endpoints only
        return real_client(*args, **kwargs)

    monkeypatch.setattr(boto3, "client", client_via_moto)
    fields = Settings.model_fields
    stream = names.get("RLP_STREAM_NAME", fields["stream_name"].default)
    shards = int(names.get("RLP_SHARD_COUNT", fields["shard_count"].default))
    bucket = names.get("RLP_BUCKET", fields["bucket"].default)
    code = compile(HOOK.read_text(), str(HOOK), "exec")
    try:
        with mock_aws():
            exec(code, {})  # exactly how LocalStack runs .py init hooks
            exec(code, {})  # LocalStack reruns it on every start: idempotent
            kinesis = real_client("kinesis", region_name=region)
            summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
            assert summary["StreamStatus"] == "ACTIVE"
            assert summary["OpenShardCount"] == shards
            s3 = real_client("s3", region_name=region)
            s3.head_bucket(Bucket=bucket)
            assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == region
    finally:
        sys.modules.pop("bootstrap", None)
    assert endpoints and set(endpoints) == {"http://127.0.0.1:4566"}
