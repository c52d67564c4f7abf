"""``AfterworkFlask``: after-response tasks and the app's background jobs in a Flask app.

::

    from afterwork import Afterwork, after_response
    from afterwork.integrations.flask import AfterworkFlask

    jobs = Afterwork("memory://")
    app = Flask(__name__)
    AfterworkFlask(app, jobs)

Per request it provides ``flask.g.background`` (a :class:`BackgroundTasks`)
and makes :func:`after_response` work anywhere in the request's code; a view
may also return ``{"background": [callable, *args], ...}``. The tasks run once
the server has sent the response (on the response's close), one after the
other, each with the request's context variables; a failure is logged and
never stops the next. Given ``jobs``, the in-process queue
(``memory://``) or an embedded worker (a durable broker) starts with the first
request, or at :meth:`AfterworkFlask.start`, and stops at interpreter exit (or
:meth:`AfterworkFlask.stop`) after a bounded drain.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g

from ..background import BackgroundTasks, ErrorHandler, _current_tasks, split_background
from ..defaults import DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD
from ..errors import OutsideRequest
from ._request import run_sync, take

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ["AfterworkFlask", "background_tasks"]

logger = logging.getLogger("afterwork.flask")

_EXTENSION = "afterwork"
_TOKEN = "_afterwork_token"
_SCHEDULED = "_afterwork_scheduled"


def background_tasks() -> BackgroundTasks:
    """The current request's :class:`BackgroundTasks` (also ``flask.g.background``)."""
    tasks = _current_tasks.get()
    if tasks is None:
        raise OutsideRequest(
            "background_tasks() was called outside a request handled by an app with "
            "AfterworkFlask(app); outside requests use jobs.enqueue(...)"
        )
    return tasks


def _shorthand(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and callable(value[0])


class AfterworkFlask:
    """The Flask extension; ``AfterworkFlask(app, jobs)`` or ``init_app(app)`` later.

    ``jobs`` is optional: without it the extension only runs after-response
    tasks, and durable tasks can still be enqueued from views for workers
    elsewhere. With it, this process also runs ``jobs``' work (its in-process
    queue on ``memory://``, an embedded worker serving ``queues`` on a durable
    broker), started by the first request and stopped at exit within
    ``grace_period`` seconds.
    """

    def __init__(
        self,
        app: Flask | None = None,
        jobs: Afterwork | None = None,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.jobs = jobs
        self.queues = list(queues) if queues is not None else None
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.on_error = on_error
        self._lock = threading.Lock()
        self._started = False
        self._atexit = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("AfterworkFlask is already set up on this app")
        app.extensions[_EXTENSION] = self
        # First before the app's own hooks, so they can add tasks too; after_request
        # hooks run in reverse, so ours runs last and sees the final response.
        app.before_request_funcs.setdefault(None, []).insert(0, self._before_request)
        app.after_request_funcs.setdefault(None, []).insert(0, self._after_request)
        app.teardown_request_funcs.setdefault(None, []).insert(0, self._teardown_request)
        # The {"background": [...]} shorthand is read where a view's return value
        # becomes a response, so it works for tuples and error handlers alike.
        make_response = app.make_response

        def make_response_with_background(rv: Any) -> Response:
            return make_response(self._take_background(rv))

        setattr(app, "make_response", make_response_with_background)  # noqa: B010

    # -- the app's jobs ---------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start running ``jobs``' work in this process (done by the first request)."""
        if self.jobs is None or self._started:
            return
        with self._lock:
            if self._started:
                return
            self.jobs.start_in_thread(queues=self.queues, concurrency=self.concurrency)
            self._started = True
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True

    def stop(self, grace_period: float | None = None) -> None:
        """Stop taking jobs; queued and running ones get ``grace_period`` seconds."""
        if self.jobs is None:
            return
        with self._lock:
            if not self._started:
                return
            self._started = False
            self.jobs.stop_in_thread(
                grace_period=self.grace_period if grace_period is None else grace_period
            )

    # -- per request ------------------------------------------------------------------

    def _before_request(self) -> None:
        if self.jobs is not None and not self._started:
            self.start()
        tasks = BackgroundTasks(on_error=self.on_error)
        g.background = tasks
        setattr(g, _TOKEN, _current_tasks.set(tasks))

    def _after_request(self, response: Response) -> Response:
        tasks = g.get("background")
        if isinstance(tasks, BackgroundTasks) and not g.get(_SCHEDULED):
            setattr(g, _SCHEDULED, True)
            response.call_on_close(lambda: run_sync(tasks))
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        token: contextvars.Token[BackgroundTasks | None] | None = g.pop(_TOKEN, None)
        if token is not None:
            _current_tasks.reset(token)
        tasks = g.get("background")
        if isinstance(tasks, BackgroundTasks) and tasks.tasks and not g.get(_SCHEDULED):
            # An unhandled error escaped the app (PROPAGATE_EXCEPTIONS): no response.
            dropped = len(take(tasks))
            logger.warning(
                "request failed without a response; dropping %d after-response tasks",
                dropped,
                extra={"dropped": dropped},
            )

    def _take_background(self, rv: Any) -> Any:
        body = rv[0] if isinstance(rv, tuple) and rv else rv
        if not isinstance(body, dict) or not _shorthand(body.get("background")):
            return rv
        rest, task = split_background(body)
        assert task is not None
        background_tasks().add_task(task.func, *task.args)
        return (rest, *rv[1:]) if isinstance(rv, tuple) else rest
