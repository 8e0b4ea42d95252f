"""What several tests need when they drive real processes: waiting on a condition with a deadline, probing
ports, and reading back what clients acknowledged, what the stream holds and what the store keeps."""

from __future__ import annotations

import contextlib
import importlib
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rlplatform.store.base import ExperienceStore
from rlplatform_client.contract import decode_chunk
from rlplatform_client.signing import public_pem


class Clock:
    """A clock the test moves by hand (``clock.now += 5``), so periods and backoffs are checked without sleeping."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# The test session's model signing key: tests/conftest.py gives it to every trainer a test starts
# (RLP_SIGNING_KEY_FILE) and its public key to every simulated client (RLP_TRUSTED_KEYS).
SIGNING_KEY = Ed25519PrivateKey.generate()
TRUSTED_KEYS = public_pem(SIGNING_KEY.public_key())


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: str, check: Callable[[], object] | None = None
) -> None:
    """Poll ``condition`` until it is truthy; ``check`` (e.g. a stage's ``check_alive``) raises if a process
    the wait depends on died, so a crash fails the test at once instead of at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if check is not None:
            check()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def started_stack(cfg: Any, run_dir: Path) -> Iterator[Any]:
    """The embedded stack of ``cfg`` (a ``LaunchConfig``) running in ``run_dir``, stopped at the end even on failure."""
    from rlplatform.stack.launcher import Stack

    stack = Stack(cfg, run_dir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def running(procs: Mapping[str, subprocess.Popen], logs: Path | None = None) -> Callable[[], None]:
    """A ``check`` for :func:`wait_for`: fails naming the first of ``procs`` that exited (and its log)."""

    def check() -> None:
        for name, proc in procs.items():
            see = f"; see {logs / f'{name}.log'}" if logs is not None else ""
            assert proc.poll() is None, f"{name} exited with {proc.returncode}{see}"

    return check


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def client_stats(stats_dir: Path) -> list[dict]:
    """Each simulated client's stats file; one being rewritten at this moment is read next time."""
    stats = []
    for path in sorted(stats_dir.glob("*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            stats.append(json.loads(path.read_text()))
    return stats


def stream_records(stream: str) -> Iterator[dict]:
    """Every record in the Kinesis stream, read from the start of each shard."""
    kinesis = boto3.client("kinesis")
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        iterator = it["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            yield from page["Records"]
            iterator = page.get("NextShardIterator") if page["Records"] else None


def stream_transitions(stream: str) -> dict[tuple[str, int], tuple]:
    """Every step in the Kinesis stream, keyed by (episode_id, t), read from the start of each shard."""
    steps: dict[tuple[str, int], tuple] = {}
    for rec in stream_records(stream):
        chunk = decode_chunk(rec["Data"])
        for s in chunk.steps:
            steps[(chunk.episode_id, s.t)] = (s.obs, s.action, s.reward, s.next_obs, s.terminated, s.truncated)
    return steps


def stored_keys(store: ExperienceStore, game: str) -> list[tuple[str, int]]:
    """The (episode_id, t) of every stored step, duplicates kept. Not ``count()``: Cassandra counts a
    batch's seqs once reserved, a moment before its rows are readable."""
    steps = store._episode_steps(game)
    return list(zip(steps.episode_id.tolist(), steps.t.tolist(), strict=True))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a run directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                found.append(cmdline)
    return found


def serve_until_ctrl_c(server: AbstractContextManager, describe: Callable[[object], str]) -> None:
    """Start ``server``, print ``describe(server)`` and how long it took, and stop it on Ctrl-C (``make`` targets)."""
    started = time.monotonic()
    with server as running_server:
        print(f"{describe(running_server)} after {time.monotonic() - started:.1f} s; Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)


def cli_group(module: str) -> Any:
    """The click group behind ``module.app`` (a Typer app)."""
    group = typer.main.get_command(importlib.import_module(module).app)
    assert hasattr(group, "commands"), f"{module}.app is a single command, not a group of subcommands"
    return group


def check_command_line(group: Any, argv: list[str], where: str) -> None:
    """``argv`` (program, subcommands, options) against a click group, Typer's (which vendors click) or click's
    own: every subcommand exists, every option is declared, and the values parse (types, ranges, required
    options), without running anything."""
    command, path, rest = group, [argv[0]], list(argv[1:])
    while hasattr(command, "commands"):
        assert rest, f"{where}: `{' '.join(path)}` needs a subcommand"
        sub = command.commands.get(rest[0])
        assert sub is not None, (
            f"{where}: `{' '.join(path)} {rest[0]}` does not exist (have {sorted(command.commands)})"
        )
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    declared = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in declared, f"{where}: `{' '.join(path)}` has no option {option}"
    try:
        command.make_context(path[-1], rest)
    except Exception as exc:  # click.ClickException or typer's vendored twin
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        raise AssertionError(f"{where}: `{shlex.join(argv)}` is rejected: {message}") from exc
