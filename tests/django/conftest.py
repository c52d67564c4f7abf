"""A small Django project (dj_settings, dj_views, dj_tasks) served on a loopback port.

Django is set up once for the test process with ``dj_settings``; each test
that needs a broker gets a SQLite file of its own through ``TASKS``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pytest

os.environ["DJANGO_SETTINGS_MODULE"] = "dj_settings"
django.setup()

import dj_settings  # noqa: E402
import dj_views  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import override_settings  # noqa: E402

from afterwork.integrations.django import get_backend  # noqa: E402


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client for the project, served by Django's own threaded server."""
    httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    httpd.set_app(get_wsgi_application())
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{httpd.server_port}", timeout=10) as http:
        yield http
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def state() -> Iterator[dict[str, Any]]:
    """What the views call after the response; tests fill it in."""
    dj_views.state.clear()
    yield dj_views.state
    dj_views.state.clear()


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite broker of the test's own, as TASKS["default"] sees it."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    with override_settings(TASKS=dj_settings.tasks_setting(url)):
        yield url
        app = get_backend().app
        app.stop_in_thread(grace_period=1)
        app.close()
