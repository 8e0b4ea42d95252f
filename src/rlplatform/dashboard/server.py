"""Serving the dashboard: a collector thread refreshes the snapshot every ``refresh_s``, whatever number of
browsers watch (each page render reads the latest snapshot), and waitress serves the Dash app.

Bound to loopback (the default) anyone on the machine may look; bound to another address the page shows game,
model and player data to the network, so every request must carry the token: once as ``?token=...`` (which
sets a cookie), or as ``Authorization: Bearer ...``."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import signal
import threading
from collections.abc import Callable

from flask import Flask, Response, redirect, request

from rlplatform.dashboard.collect import Collector, Snapshot
from rlplatform.dashboard.page import build_app
from rlplatform.settings import DEFAULT_DASHBOARD_LIST_S, DEFAULT_DASHBOARD_REFRESH_S, Settings

log = logging.getLogger(__name__)

TOKEN_COOKIE = "rlp_dashboard_token"


class Refresher:
    """The latest snapshot, renewed on a thread of its own until ``stop``."""

    def __init__(self, collector: Collector, refresh_s: float) -> None:
        self.collector, self.refresh_s = collector, refresh_s
        self.latest: Snapshot = collector.refresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.latest = self.collector.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.collector.close()


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token(server: Flask, token: str) -> None:
    """Every request must carry ``token`` (query, cookie or bearer header); a query token is moved to a cookie."""

    @server.before_request
    def check() -> Response | None:
        given = request.args.get("token")
        if given is not None and secrets.compare_digest(given, token):
            response = redirect(request.path)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return response
        header = request.headers.get("Authorization", "")
        for candidate in (request.cookies.get(TOKEN_COOKIE, ""), header.removeprefix("Bearer ")):
            if candidate and secrets.compare_digest(candidate, token):
                return None
        return Response("a token is required: open the URL rlplatform dashboard printed\n", status=401)


def serve(
    settings: Settings,
    host: str,
    port: int,
    refresh_s: float = DEFAULT_DASHBOARD_REFRESH_S,
    list_s: float = DEFAULT_DASHBOARD_LIST_S,
    token: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGTERM or SIGINT. Off loopback without a ``token``, one is made and printed in the URL."""
    from waitress import create_server

    if not loopback(host) and not token:
        token = secrets.token_urlsafe(24)
    refresher = Refresher(Collector(settings, list_s=list_s), refresh_s)
    app = build_app(lambda: refresher.latest, refresh_s)
    if token:
        require_token(app.server, token)
    server = create_server(app.server, host=host, port=port, threads=8)
    url = f"http://{host}:{server.effective_port}/" + (f"?token={token}" if token else "")
    announce(f"dashboard at {url}")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        log.info("dashboard stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        refresher.stop()
