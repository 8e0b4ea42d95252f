"""Whether a Docker engine answers, for tests that need containers (testcontainers)."""

from __future__ import annotations

import functools


@functools.cache
def docker_unreachable() -> str | None:
    """Why no Docker engine answers (None when one does); one ping with a short timeout per session."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # no socket, no daemon, no permission, no docker package: all mean "unreachable"
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return None
