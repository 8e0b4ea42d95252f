"""What the benches share: a fresh store of their own for one run."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from rlplatform.settings import Settings, SqliteSettings
from rlplatform.store import ExperienceStore, open_reachable, open_store


@contextlib.contextmanager
def fresh_store(name: str, work_dir: Path) -> Iterator[tuple[Settings, ExperienceStore]]:
    """A store of its own for one run, open, with the settings that point a stage at it: a new SQLite file in
    ``work_dir``, or a ``bench_<hex>`` keyspace on the Cassandra that ``RLP_CASSANDRA_*`` names, dropped at
    the end (a keyspace that cannot be dropped is reported, not fatal: the measurement stands)."""
    if name == "sqlite":
        path = work_dir / "experience.sqlite"
        path.unlink(missing_ok=True)
        settings = Settings(store="sqlite", sqlite=SqliteSettings(path=path))
        with open_store(settings) as store:
            yield settings, store
        return
    keyspace = f"bench_{uuid.uuid4().hex[:12]}"
    settings = Settings(store="cassandra", cassandra=Settings().cassandra.model_copy(update={"keyspace": keyspace}))
    store = open_reachable(settings)  # StoreUnreachable names where it looked
    try:
        yield settings, store
    finally:
        try:
            store._session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        except Exception as exc:  # noqa: BLE001 - the measurement stands; say what is left behind
            print(f"bench: could not drop keyspace {keyspace} ({exc}); drop it by hand", file=sys.stderr)
        store.close()
