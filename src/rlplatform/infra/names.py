"""Names derived from game ids (any string of 1..64 characters on the wire) for files, stages and tables."""

from __future__ import annotations

import hashlib
import re


def slug(name: str, keep: str = "") -> str:
    """``name`` with every character other than ASCII letters, digits, ``_`` and those in ``keep`` replaced by
    ``_``: a file name with ``keep=".-"`` (gymnasium ids hold '/'), an SQL identifier with the default."""
    return re.sub(f"[^A-Za-z0-9_{re.escape(keep)}]", "_", name)


def unique_name(prefix: str, name: str) -> str:
    """An SQL identifier of its own for every distinct ``name`` (any Unicode, case and punctuation variants
    included): ``prefix``, a readable slug, and 64 bits of the name's SHA-256. Slugs alone collide
    ("a-b" and "a.b"; SQLite's names ignore case), the digest does not."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix}{slug(name)[:24]}_{digest}"
