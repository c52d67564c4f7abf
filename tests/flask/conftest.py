"""A real Werkzeug server on a loopback port for the Flask tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server


class Server:
    def __init__(self, app: Flask) -> None:
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def close(self) -> None:
        self.client.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], httpx.Client]]:
    """``serve(app)`` runs ``app`` on a threaded Werkzeug server; returns a client for it."""
    servers: list[Server] = []

    def start(app: Flask) -> httpx.Client:
        server = Server(app)
        servers.append(server)
        return server.client

    yield start
    for server in servers:
        server.close()
