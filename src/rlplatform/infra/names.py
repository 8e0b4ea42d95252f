"""Names derived from game ids (any string of 1..64 characters on the wire) for files, stages and tables."""

from __future__ import annotations

import re


def slug(name: str, keep: str = "") -> str:
    """``name`` with every character other than ASCII letters, digits, ``_`` and those in ``keep`` replaced by
    ``_``: a file name with ``keep=".-"`` (gymnasium ids hold '/'), an SQL identifier with the default."""
    return re.sub(f"[^A-Za-z0-9_{re.escape(keep)}]", "_", name)
