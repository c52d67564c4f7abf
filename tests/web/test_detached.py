"""The middleware's runner: calls handed over in one turn start together, each on its own terms."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from afterwork import BackgroundTask, BackgroundTasks, after_response
from afterwork.integrations.asgi import DetachedRunner

from .conftest import serve, within
from .test_after_response import starlette_app

user: contextvars.ContextVar[str | None] = contextvars.ContextVar("user", default=None)


def hand_over(runner: DetachedRunner, func: Any, *args: Any) -> BackgroundTasks:
    """What the middleware does once a request that collected ``func(*args)`` is over."""
    tasks = BackgroundTasks()
    tasks.add_task(func, *args)
    runner.spawn(tasks, tasks.seal(), shared=False)
    return tasks


async def test_a_call_that_waits_runs_to_the_end_and_holds_up_no_other(events: Any) -> None:
    runner = DetachedRunner()
    done: list[str] = []

    async def send_receipt() -> None:
        events["receipt started"].set()
        await events["release"].wait()
        done.append("receipt")

    async def count_visit() -> None:  # finishes without waiting
        done.append("visit")
        events["visit"].set()

    hand_over(runner, send_receipt)  # the same turn of the loop: started together
    hand_over(runner, count_visit)
    await within(events["visit"].wait())
    assert events["receipt started"].is_set()
    assert done == ["visit"]
    events["release"].set()
    assert await runner.drain(5) == 0  # waits for the receipt
    assert done == ["visit", "receipt"]
    assert runner.running == 0


async def test_a_call_that_finishes_at_once_runs_once(events: Any) -> None:
    runner = DetachedRunner()
    calls: list[int] = []

    async def record(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            events["done"].set()

    for n in range(3):
        hand_over(runner, record, n)
    assert calls == []  # nothing runs before the request's turn is over
    await within(events["done"].wait())
    assert await runner.drain(5) == 0
    assert calls == [0, 1, 2]


async def test_a_failure_in_a_calls_first_step_is_logged_and_the_next_runs(
    caplog: pytest.LogCaptureFixture, events: Any
) -> None:
    runner = DetachedRunner()
    reported: list[str] = []

    async def charge_card(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    async def cancel_itself() -> None:
        raise asyncio.CancelledError

    async def notify(order: int) -> None:
        events["notified"].set()

    def on_error(task: BackgroundTask, exc: BaseException) -> None:
        reported.append(f"{task.name}: {type(exc).__name__}")

    failing = BackgroundTasks(on_error=on_error)
    failing.add_task(charge_card, 5)
    with caplog.at_level(logging.ERROR, logger="afterwork"):
        runner.spawn(failing, failing.seal(), shared=False)
        hand_over(runner, cancel_itself)
        hand_over(runner, notify, 5)
        await within(events["notified"].wait())
    assert reported == [f"{charge_card.__qualname__}: ValueError"]
    [record] = [r for r in caplog.records if r.name == "afterwork.background"]
    assert record.getMessage() == (
        f"background task {charge_card.__qualname__} failed with ValueError: "
        "card declined for order 5"
    )
    assert await runner.drain(5) == 0


async def test_a_call_that_fails_after_waiting_is_reported_in_its_context(
    caplog: pytest.LogCaptureFixture, events: Any
) -> None:
    runner = DetachedRunner()
    reported: list[tuple[str, str | None]] = []

    async def upload(name: str) -> None:
        await events["release"].wait()
        raise ConnectionError(f"storage went away during {name}")

    async def on_error(task: BackgroundTask, exc: BaseException) -> None:
        await asyncio.sleep(0)  # a handler that waits, too
        reported.append((type(exc).__name__, user.get()))
        events["reported"].set()

    tasks = BackgroundTasks(on_error=on_error)
    token = user.set("ada")
    tasks.add_task(upload, "avatar.png")
    user.reset(token)
    with caplog.at_level(logging.ERROR, logger="afterwork"):
        runner.spawn(tasks, tasks.seal(), shared=False)
        events["release"].set()
        await within(events["reported"].wait())
    assert reported == [("ConnectionError", "ada")]
    [record] = [r for r in caplog.records if r.name == "afterwork.background"]
    assert record.getMessage().endswith(
        "upload failed with ConnectionError: storage went away during avatar.png"
    )
    assert await runner.drain(5) == 0


async def test_each_call_sees_its_own_requests_context_variables(events: Any) -> None:
    runner = DetachedRunner()
    seen: list[tuple[str | None, str | None]] = []

    async def audit() -> None:
        before = user.get()
        user.set("changed by the task")  # stays in this call's context
        await asyncio.sleep(0)
        seen.append((before, user.get()))
        if len(seen) == 2:
            events["done"].set()

    for name in ("ada", "grace"):
        token = user.set(name)  # as a request's middleware would
        hand_over(runner, audit)
        user.reset(token)
    await within(events["done"].wait())
    assert seen == [("ada", "changed by the task"), ("grace", "changed by the task")]
    assert user.get() is None


async def test_timeouts_and_cancel_scopes_work_in_a_call_that_waits(events: Any) -> None:
    """A call runs in one asyncio task from its first line to its last."""
    runner = DetachedRunner()
    outcome: list[str] = []

    async def call_slow_service() -> None:
        first = asyncio.current_task()
        try:
            async with asyncio.timeout(0.05):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("asyncio timeout")
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep_forever()
        if scope.cancelled_caught:
            outcome.append("anyio timeout")
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 0)
        outcome.append("task group")
        assert asyncio.current_task() is first
        events["done"].set()

    async def quick() -> None:
        outcome.append("quick")

    hand_over(runner, call_slow_service)
    hand_over(runner, quick)
    await within(events["done"].wait())
    assert await runner.drain(5) == 0
    assert outcome == ["quick", "asyncio timeout", "anyio timeout", "task group"]


async def test_shutdown_cancels_and_logs_what_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture, events: Any
) -> None:
    runner = DetachedRunner()
    cancelled: list[str] = []

    async def stuck() -> None:
        events["stuck"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    async def quick() -> None:
        events["quick"].set()

    hand_over(runner, stuck)
    hand_over(runner, quick)
    await within(events["stuck"].wait())
    await within(events["quick"].wait())  # the call behind the stuck one ran
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        assert await runner.drain(0.1) == 1
    assert cancelled == ["stuck"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "did not finish within 0.1s" in warning
    assert warning.endswith(stuck.__qualname__)
    assert runner.running == 0


async def test_many_requests_at_once_each_run_their_call_after_the_response(
    events: Any,
) -> None:
    ran: list[int] = []
    requests = 40

    async def record(n: int) -> None:
        if n % 4 == 0:  # some wait, most do not
            await events["release"].wait()
        ran.append(n)
        if len(ran) == requests * 3 // 4:
            events["quick ones done"].set()

    async def endpoint(request: Request) -> Response:
        after_response(record, int(request.query_params["n"]))
        return PlainTextResponse("ok")

    app = starlette_app(Route("/", endpoint), grace_period=10)
    async with serve(app) as server:
        async with server.client() as client:
            replies = await asyncio.gather(
                *(client.get("/", params={"n": n}) for n in range(requests))
            )
        assert all(r.text == "ok" for r in replies)
        await within(events["quick ones done"].wait())
        assert not any(n % 4 == 0 for n in ran)
        events["release"].set()  # leaving the block: the shutdown waits for the rest
    assert sorted(ran) == list(range(requests))
