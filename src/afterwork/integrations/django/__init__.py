"""Django integration: a backend for Django's tasks framework, and after-response tasks.

- ``AfterworkBackend``: ``TASKS = {"default": {"BACKEND":
  "afterwork.integrations.django.AfterworkBackend", "OPTIONS": {"url": ...}}}``
  stores ``@task`` functions' jobs on afterwork's brokers; ``python manage.py
  afterwork_worker`` (with ``"afterwork.integrations.django"`` in
  ``INSTALLED_APPS``) or :func:`start_worker_in_thread` runs them.
- ``AfterworkMiddleware``: ``request.background`` and :func:`after_response` in
  views, run after the response is sent.

The backend needs Django's tasks framework (Django 6.0+, or the
``django-tasks`` package before it); the middleware needs only Django.
"""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING, Any

from ...defaults import DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD
from .middleware import AfterworkMiddleware

if TYPE_CHECKING:
    from .backend import AfterworkBackend

__all__ = [
    "AfterworkBackend",
    "AfterworkMiddleware",
    "get_backend",
    "start_worker_in_thread",
    "stop_worker_in_thread",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the middleware works without the tasks framework.
    if name == "AfterworkBackend":
        from .backend import AfterworkBackend

        return AfterworkBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_backend(alias: str = "default") -> AfterworkBackend:
    """The tasks backend ``alias``, which must be an :class:`AfterworkBackend`."""
    from ._compat import task_backends
    from .backend import AfterworkBackend

    backend = task_backends[alias]
    if not isinstance(backend, AfterworkBackend):
        raise TypeError(
            f"TASKS[{alias!r}] uses {type(backend).__module__}.{type(backend).__qualname__}, "
            "not afterwork.integrations.django.AfterworkBackend"
        )
    return backend


def start_worker_in_thread(
    alias: str = "default",
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    **options: Any,
) -> None:
    """Run the backend's jobs inside this process (say, from ``wsgi.py``), on a thread.

    Serves the backend's ``QUEUES``; it stops at interpreter exit, giving
    running jobs ``grace_period`` seconds. Start it where requests are served,
    not in ``AppConfig.ready()``, which management commands run too.
    """
    backend = get_backend(alias)
    app = backend.app
    app.start_in_thread(queues=backend.worker_queues(), concurrency=concurrency, **options)
    atexit.register(app.stop_in_thread, grace_period=grace_period)


def stop_worker_in_thread(
    alias: str = "default", *, grace_period: float = DEFAULT_GRACE_PERIOD
) -> None:
    """Stop the worker :func:`start_worker_in_thread` started."""
    get_backend(alias).app.stop_in_thread(grace_period=grace_period)
