"""``rlplatform models promote|rollback|pin|unpin|show``: the operator moves a game's release by hand; a move that
is not possible is one line and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from rlplatform.cli import app
from rlplatform.registry import keys
from rlplatform.registry.models import latest_manifest
from rlplatform.release import state as release
from rlplatform.settings import load_settings
from tests.unit.test_releases import GAME, published_change

BUCKET = "rlp-models"  # the settings' default bucket


@pytest.fixture
def released() -> Iterator[None]:
    """CartPole with v1 stable, v2 and v3 published, v3 the candidate for 10 % of the clients."""
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        published_change(BUCKET, 1, 0.1)
        published_change(BUCKET, 2, 0.0)
        published_change(BUCKET, 3, 0.1)
        yield


def models(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["models", *args, "--game", GAME], terminal_width=200)
    return result.exit_code, result.output


def current() -> release.ReleaseState:
    state, _ = release.read_release(BUCKET, GAME, keys.signing_keys(load_settings()).trusted)
    return state


def test_the_operator_promotes_pins_and_rolls_back_and_the_history_says_who(released: None) -> None:
    assert models("promote", "--why", "looks good") == (0, f"{GAME}: promote: stable v3\n")
    assert latest_manifest(BUCKET, GAME).version == 3
    assert models("pin")[0] == 0 and current().pinned
    assert models("rollback") == (0, f"{GAME}: rollback: stable v2 (pinned)\n")  # the version before stable
    assert models("rollback", "--to", "1")[0] == 0 and current().stable == 1
    assert latest_manifest(BUCKET, GAME).version == 1
    assert models("unpin")[0] == 0 and not current().pinned

    code, shown = models("show")
    assert code == 0 and f"{GAME}: stable v1, candidate none (revision 8)" in shown
    entries = release.history(BUCKET, GAME)
    assert [c.action for c in entries][3:] == ["promote", "pin", "rollback", "rollback", "unpin"]
    assert entries[3].by.startswith("operator (") and entries[3].why == "looks good"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollback", "--to", "9"), "no published v9 (published: v1, v2, v3)"),
        (("rollback", "--to", "3"), "v3 is not older than stable v2"),
        (("unpin",), "is not pinned"),
    ],
)
def test_a_move_that_is_not_possible_is_one_line_and_changes_nothing(released: None, args, message: str) -> None:
    before = current()
    code, output = models(*args)
    assert code == 1 and output.strip().startswith(f"error: {GAME}: ") and message in output, output
    assert current() == before and len(release.history(BUCKET, GAME)) == 3


def test_rolling_back_past_the_first_version_or_a_game_without_models_is_refused() -> None:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        code, output = models("promote")
        assert code == 1 and "nothing has been published for this game yet" in output
        published_change(BUCKET, 1, 0.1)
        code, output = models("rollback")
        assert code == 1 and "v0: there is no version before v1 to roll back to" in output
