"""The docs as tests: the site builds with --strict (broken links and anchors fail), the README stays a
newcomer's page that links into it, every command the docs give is one the code accepts, and the generated
reference pages cover what they claim to."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlplatform.ingest.dead_letters import REASONS
from rlplatform.settings import Settings, env_var_names
from tests.static.test_compose import load_compose
from tests.support import check_command_line, cli_group

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted([README, *DOCS.rglob("*.md")])
PROGRAMS = {"rlplatform": "rlplatform.cli", "rlplatform-client": "rlplatform_client.cli"}
README_MAX_LINES = 200


def _built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true"}
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _built_site(tmp_path_factory)


def _shell_lines(page: Path) -> list[tuple[int, str]]:
    """``(line number, command)`` of every line inside a ```bash block of ``page``."""
    lines, inside = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside and line.strip() == "```bash"
        elif inside and line.strip():
            lines.append((number, line.strip()))
    return lines


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _compose_services() -> set[str]:
    services: set[str] = set()
    for name in ("docker-compose.yml", "docker-compose.aws.yml"):
        services |= set(load_compose(ROOT / name).get("services", {}))
    return services


# ---------------------------------------------------------------------------------------------------- the site


def test_site_builds_strict_with_the_generated_reference(site: Path) -> None:
    for page in ("reference/cli", "reference/configuration", "reference/dead-letter-reasons"):
        assert (site / page / "index.html").is_file(), f"{page} was not generated"


def test_generated_reference_covers_every_command_setting_and_reason(site: Path) -> None:
    cli = (site / "reference/cli/index.html").read_text()
    for name, command in cli_group("rlplatform.cli").commands.items():
        assert f"rlplatform {name}" in cli, name
        for sub in getattr(command, "commands", {}):
            assert f"rlplatform {name} {sub}" in cli, (name, sub)
    configuration = (site / "reference/configuration/index.html").read_text()
    for var in env_var_names(Settings):
        assert f"<code>{var}</code>" in configuration, var
    reasons = (site / "reference/dead-letter-reasons/index.html").read_text()
    for reason in REASONS:
        assert f"<code>{reason}</code>" in reasons, reason


def test_every_setting_says_what_it_is_for() -> None:
    """The configuration page's meaning column comes from the fields' descriptions."""
    sections = [Settings, *(f.annotation for f in Settings.model_fields.values() if f.description is None)]
    for cls in sections:
        for name, field in cls.model_fields.items():
            if name in ("sqlite", "cassandra"):
                continue
            assert field.description, f"{cls.__name__}.{name} has no description"


def test_a_broken_link_fails_the_build(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    broken = DOCS / "broken-link-probe.md"
    broken.write_text("# probe\n\n[nowhere](no-such-page.md)\n")
    try:
        with pytest.raises(AssertionError, match="no-such-page.md"):
            _built_site(tmp_path_factory)
    finally:
        broken.unlink()


# ---------------------------------------------------------------------------------------------------- README


def test_readme_is_short_and_its_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local), "the README links into the docs"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_readme_names_the_exact_make_up_command() -> None:
    """The command the README says ``make up`` runs is the one the Makefile runs."""
    recipe = subprocess.run(["make", "-n", "-W", "pyproject.toml", "up"], cwd=ROOT, capture_output=True, text=True)
    runs = [line for line in recipe.stdout.splitlines() if " up " in f"{line} " and "rlplatform" in line]
    assert len(runs) == 1, recipe.stdout
    command = shlex.join(["rlplatform", *shlex.split(runs[0])[1:]])
    assert f"`{command}`" in README.read_text().replace("\n", " ")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_exists(page: Path) -> None:
    """A path into the repository that a page cites (a module, a test, a compose file) is still there."""
    cited = re.findall(
        r"\b((?:src|client|tests|compose|docker|deploy|docs)/[\w./-]+\.(?:py|toml|yml|yaml|json|md|txt))",
        page.read_text(),
    )
    missing = sorted({path for path in cited if not (ROOT / path).exists()})
    assert not missing, f"{page.relative_to(ROOT)} cites {missing}"


# ---------------------------------------------------------------------------------------------------- commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_is_one_the_code_accepts(page: Path) -> None:
    """Each line of a ```bash block that runs ``rlplatform``, ``rlplatform-client`` or ``make`` parses: the
    subcommands exist, the options are declared and their values convert (nothing is run); a ``docker compose``
    line names compose files and services that exist; an ``export RLP_*`` names a real setting."""
    targets, services, settings = _make_targets(), _compose_services(), env_var_names(Settings)
    for number, line in _shell_lines(page):
        argv = shlex.split(line, comments=True)
        if argv and "/" in argv[0] and Path(argv[0]).name in PROGRAMS:
            argv[0] = Path(argv[0]).name
        where = f"{page.relative_to(ROOT)}:{number}"
        if argv[:1] == ["make"]:
            for target in (a for a in argv[1:] if "=" not in a):
                assert target in targets, f"{where}: make has no target {target}"
        elif argv and argv[0] in PROGRAMS:
            check_command_line(cli_group(PROGRAMS[argv[0]]), argv, where)
        elif argv[:2] == ["docker", "compose"]:
            files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
            assert all((ROOT / f).is_file() for f in files), f"{where}: {files}"
            named = [argv[argv.index("--rm") + 1]] if "--rm" in argv else []
            named += [argv[i + 1].split("=")[0] for i, a in enumerate(argv) if a == "--scale"]
            assert set(named) <= services, f"{where}: no service {sorted(set(named) - services)}"
        elif argv[:1] == ["export"] and argv[1].startswith("RLP_"):
            assert argv[1].split("=")[0] in settings, f"{where}: {argv[1]} is not a setting"


def test_the_code_layout_names_every_package_and_module() -> None:
    """The layout in Concepts is the folder tree: every package and module of the platform appears in it."""
    text = (DOCS / "concepts.md").read_text()
    layout = text[text.index("## Code layout") :]
    package = ROOT / "src" / "rlplatform"
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = path.parent.relative_to(package)
        assert path.name in layout, f"{path.relative_to(ROOT)} is not in the layout"
        if folder.parts:
            assert f"{folder.parts[0]}/" in layout, f"package {folder.parts[0]} is not in the layout"


def test_the_commands_table_lists_exactly_the_cli_commands() -> None:
    """The overview table in Concepts names every command of the CLI, and no other."""
    text = (DOCS / "concepts.md").read_text()
    table = re.findall(r"^\| `rlplatform ([a-z]+(?: [a-z]+)?)", text, flags=re.M)
    named = {" ".join(w for w in row.split() if not w.isupper()) for row in table}
    group = cli_group("rlplatform.cli")
    commands = set()
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        commands |= {f"{name} {sub}" for sub in subs} if subs else {name}
    documented = {c for c in commands if any(c == n or c.startswith(n + " ") for n in named)}
    assert documented == commands, f"not in the table: {sorted(commands - documented)}"
    assert all(any(c == n or c.startswith(n + " ") for c in commands) for n in named), named
