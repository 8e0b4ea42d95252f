"""Servers shared by the whole test session: started once, stopped at its end, even on failure."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlplatform.registry import keys
from rlplatform.settings import CassandraSettings, Settings
from tests import cassandra_node, localstack_node
from tests.docker_engine import docker_unreachable
from tests.support import SIGNING_KEY, TRUSTED_KEYS

CASSANDRA_IMAGE = "cassandra:5.0.2"
CASSANDRA_ENV = "RLP_TEST_CASSANDRA_CONTACT_POINTS"


@pytest.fixture(scope="session", autouse=True)
def model_keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A keyring of the session's signing key: trainers sign with it, simulated clients trust it."""
    directory = tmp_path_factory.mktemp("keys")
    (directory / keys.SIGNING_KEY).write_bytes(keys.private_pem(SIGNING_KEY))
    (directory / keys.TRUSTED_KEYS).write_bytes(TRUSTED_KEYS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLP_SIGNING_KEY_FILE", str(directory / keys.SIGNING_KEY))
        patch.setenv("RLP_TRUSTED_KEYS", str(directory / keys.TRUSTED_KEYS))
        yield directory


@pytest.fixture(scope="session")
def cassandra_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for a real Cassandra with a fresh keyspace ``rlp_test_<hex>``, from the first that exists:

    1. the cluster ``RLP_TEST_CASSANDRA_CONTACT_POINTS`` names (other ``RLP_CASSANDRA_*`` settings, e.g. the
       port, auth or TLS, from the environment as usual); the keyspace is dropped at the end;
    2. a node started here from the jars ``make cassandra-jars`` fetched (``tests/cassandra_node.py``): what
       CI uses, so under ``CI`` a node that cannot start fails the tests instead of skipping them;
    3. a ``CASSANDRA_IMAGE`` container, where a Docker engine answers;
    else the tests that need it are skipped, saying what is missing.
    """
    keyspace = f"rlp_test_{uuid.uuid4().hex[:12]}"
    if contact_points := os.environ.get(CASSANDRA_ENV):
        settings = Settings(
            store="cassandra", cassandra=CassandraSettings(contact_points=contact_points, keyspace=keyspace)
        )
        yield from _external(settings)
        return
    why_not_here = cassandra_node.missing()
    if why_not_here is None or os.environ.get("CI"):
        with cassandra_node.CassandraNode(Path(tmp_path_factory.mktemp("cassandra"))) as node:
            yield Settings(store="cassandra", cassandra=CassandraSettings(port=node.port, keyspace=keyspace))
        return
    why = docker_unreachable()
    if why is not None:
        pytest.skip(f"cassandra: {CASSANDRA_ENV} is not set, {why_not_here}, and no Docker engine answers ({why})")
    yield from _container(keyspace)


def _external(settings: Settings) -> Iterator[Settings]:
    try:
        yield settings
    finally:
        from rlplatform.store.cassandra import CassandraStore

        store = CassandraStore(settings.cassandra)
        try:
            store._session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra.keyspace}", timeout=120)
        finally:
            store.close()


def _container(keyspace: str) -> Iterator[Settings]:
    from testcontainers.community.cassandra import CassandraContainer

    container = CassandraContainer(CASSANDRA_IMAGE)
    try:
        container.start()
        host, port = container.get_contact_points()[0]
        yield Settings(
            store="cassandra",
            cassandra=CassandraSettings(
                contact_points=host, port=port, local_dc=container.get_local_datacenter(), keyspace=keyspace
            ),
        )
    finally:
        container.stop()


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack_node.LocalStackNode]:
    """LocalStack on this machine (``tests/localstack_node.py``), with the stream and bucket its READY hook
    makes from the default settings, shared by the tests that need it. Under ``CI`` a LocalStack that cannot
    start fails them; elsewhere they are skipped, saying what is missing (``make localstack-install``)."""
    why = localstack_node.missing()
    if why is not None and not os.environ.get("CI"):
        pytest.skip(f"localstack: {why}")
    with localstack_node.LocalStackNode(Path(tmp_path_factory.mktemp("localstack"))) as node:
        yield node
