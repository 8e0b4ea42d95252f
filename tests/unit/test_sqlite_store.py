"""SQLite-specific guarantees beyond the store contract: sampling never scans the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlplatform.store.sqlite import SqliteStore
from tests.contract.test_store_contract import make_batch


def test_sample_uses_primary_key_lookups_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite")
    store.write("CartPole-v1", make_batch(1000))
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.sample("CartPole-v1", 64, np.random.default_rng(0))
    store._conn.set_trace_callback(None)

    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "exp_" in s]
    assert len(selects) >= 2, statements  # the seq range, then the rows
    plans = [row[-1] for s in selects for row in store._conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()]
    assert not [p for p in plans if p.startswith("SCAN exp_")], plans
    store.close()
