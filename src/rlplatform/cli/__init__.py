"""The ``rlplatform`` command line: stage commands (``app``), the ``games`` and ``bench`` sub-apps. Thin: each
command parses, calls one module and prints; heavy imports (pyspark, ray) happen inside the command that needs them."""

from rlplatform.cli.app import app

__all__ = ["app"]
