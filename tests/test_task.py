"""Defining tasks (every option checked at decoration) and sending their jobs."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from afterwork import (
    Afterwork,
    InvalidArguments,
    JobHandle,
    JobStatus,
    ManualClock,
    PayloadTooLarge,
    RetryPolicy,
    SerializationError,
    Task,
    TaskConfigurationError,
)


def send_email(user_id: int, subject: str = "hello") -> str:
    """Send a greeting."""
    return f"{user_id}:{subject}"


async def resize_image(path: str, width: int) -> str:
    return f"{path}@{width}"


class Mailer:
    def send(self) -> None: ...

    @staticmethod
    def send_static() -> None: ...


# -- definition ---------------------------------------------------------------------------


def test_a_task_is_named_after_its_module_and_qualified_name() -> None:
    jobs = Afterwork("memory://")
    task = jobs.task(send_email)
    assert task.name == f"{__name__}.send_email"
    assert jobs.tasks[task.name] is task


def test_both_the_bare_decorator_and_the_called_decorator_make_a_task() -> None:
    jobs = Afterwork("memory://")
    bare = jobs.task(send_email)
    called = jobs.task(queue="images")(resize_image)
    assert isinstance(bare, Task)
    assert isinstance(called, Task)
    assert called.queue == "images"


def test_a_task_has_the_documented_defaults() -> None:
    task = Afterwork("memory://").task(send_email)
    assert task.queue == "default"
    assert task.priority == 0
    assert task.retry == RetryPolicy()
    assert task.retry.max_attempts == 3
    assert task.timeout is None
    assert task.result_ttl == 24 * 3600


def test_a_task_takes_every_option() -> None:
    jobs = Afterwork("memory://")
    task = jobs.task(
        name="mail.send",
        queue="emails",
        priority=-100,
        retries=5,
        timeout="30s",
        result_ttl=timedelta(hours=1),
    )(send_email)
    assert task.name == "mail.send"
    assert jobs.tasks["mail.send"] is task
    assert (task.queue, task.priority, task.timeout, task.result_ttl) == ("emails", -100, 30, 3600)
    # retries counts the retries after the first attempt.
    assert task.retry.max_attempts == 6


def test_retries_may_be_a_whole_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=3, factor=3, jitter=False)
    task = Afterwork("memory://").task(retries=policy)(send_email)
    assert task.retry is policy


def test_the_apps_result_ttl_is_the_default_for_its_tasks() -> None:
    task = Afterwork("memory://", result_ttl="1h").task(send_email)
    assert task.result_ttl == 3600


def test_a_task_called_directly_runs_here_and_now() -> None:
    task = Afterwork("memory://").task(send_email)
    assert task(7, subject="hi") == "7:hi"
    assert task.__doc__ == send_email.__doc__


def test_a_task_knows_whether_it_is_async() -> None:
    jobs = Afterwork("memory://")
    assert jobs.task(resize_image).is_async
    assert not jobs.task(send_email).is_async


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"priority": 101}, "-100..100"),
        ({"priority": -101}, "-100..100"),
        ({"priority": 1.5}, "priority must be an int"),
        ({"priority": True}, "priority must be an int"),
        ({"timeout": 0}, "more than 0"),
        ({"timeout": -1}, "zero or more"),
        ({"timeout": "soon"}, "not understood"),
        ({"retries": -1}, "0 or more"),
        ({"retries": 2.5}, "0 or more"),
        ({"result_ttl": "-1h"}, "zero or more"),
        ({"queue": ""}, "non-empty"),
        ({"queue": "a,b"}, "without commas"),
        ({"name": "a:b"}, "without ':'"),
        ({"retires": 3}, "did you mean 'retries'"),
        ({"priorty": 3}, "did you mean 'priority'"),
        ({"colour": "red"}, "known options"),
    ],
)
def test_a_bad_option_fails_at_decoration_naming_the_task_and_the_fix(
    options: dict[str, Any], fix: str
) -> None:
    jobs = Afterwork("memory://")
    with pytest.raises(TaskConfigurationError) as excinfo:
        jobs.task(**options)(send_email)
    assert "send_email" in str(excinfo.value)
    assert fix in str(excinfo.value)
    assert not jobs.tasks


def test_a_task_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Afterwork("memory://").task(priority=1000)(send_email)


def test_a_lambda_is_refused_at_decoration_saying_why() -> None:
    jobs = Afterwork("memory://")
    with pytest.raises(ValueError, match=r"lambda.*cannot find by name.*module level"):
        jobs.task(lambda: None)
    with pytest.raises(TaskConfigurationError):
        jobs.task(retries=1)(lambda: None)


def test_a_nested_function_is_refused_at_decoration_saying_why() -> None:
    def inner() -> None: ...

    with pytest.raises(ValueError, match=r"inside another function.*move it to module level"):
        Afterwork("memory://").task(inner)


def test_a_method_is_refused_at_decoration() -> None:
    jobs = Afterwork("memory://")
    with pytest.raises(TaskConfigurationError, match="module-level function"):
        jobs.task(Mailer().send)
    with pytest.raises(TaskConfigurationError):
        jobs.task(Mailer)  # type: ignore[call-overload]


def test_two_functions_cannot_share_a_task_name() -> None:
    jobs = Afterwork("memory://")
    jobs.task(name="work")(send_email)
    with pytest.raises(TaskConfigurationError, match=r"already used.*name="):
        jobs.task(name="work")(resize_image)


def test_decorating_the_same_function_again_is_harmless() -> None:
    jobs = Afterwork("memory://")
    first = jobs.task(send_email)
    second = jobs.task(send_email)
    assert jobs.tasks[second.name] is second
    assert first.name == second.name


# -- using() --------------------------------------------------------------------------------


def test_using_changes_one_call_and_leaves_the_task_unchanged() -> None:
    task = Afterwork("memory://").task(queue="emails", priority=1)(send_email)
    variant = task.using(delay="10s", priority=50, queue="urgent", unique_key="k")
    assert (variant.delay, variant.priority, variant.queue, variant.unique_key) == (
        10,
        50,
        "urgent",
        "k",
    )
    assert (task.delay, task.priority, task.queue, task.unique_key) == (None, 1, "emails", None)
    assert variant.name == task.name


@pytest.mark.parametrize("delay", ["10s", 10, 10.0, timedelta(seconds=10)])
def test_using_takes_a_delay_in_every_duration_form(delay: Any) -> None:
    clock = ManualClock()
    jobs = Afterwork("memory://", clock=clock)
    record = jobs.task(send_email).using(delay=delay).prepare(1)
    assert record.run_at == clock.now() + 10
    assert record.status == JobStatus.SCHEDULED


def test_using_run_at_schedules_at_that_moment() -> None:
    clock = ManualClock()
    jobs = Afterwork("memory://", clock=clock)
    when = datetime.fromtimestamp(clock.now(), UTC) + timedelta(minutes=5)
    record = jobs.task(send_email).using(run_at=when).prepare(1)
    assert record.run_at == clock.now() + 300
    assert record.status == JobStatus.SCHEDULED


def test_a_later_using_replaces_an_earlier_delay_or_run_at() -> None:
    task = Afterwork("memory://").task(send_email)
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert task.using(delay=5).using(run_at=when).delay is None
    assert task.using(run_at=when).using(delay=5).run_at is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "10 seconds"}, "not understood"),
        ({"delay": "-5s"}, "zero or more"),
        ({"delay": -1}, "zero or more"),
        ({"run_at": datetime(2030, 1, 1)}, "no time zone"),
        ({"delay": 5, "run_at": datetime(2030, 1, 1, tzinfo=UTC)}, "not both"),
        ({"priority": 500}, "out of range"),
        ({"queue": ""}, "non-empty"),
        ({"unique_key": ""}, "unique_key"),
    ],
)
def test_using_refuses_bad_options_with_a_value_error(
    options: dict[str, Any], message: str
) -> None:
    task = Afterwork("memory://").task(send_email)
    with pytest.raises(ValueError, match=message) as excinfo:
        task.using(**options)
    assert task.name in str(excinfo.value)


def test_using_returns_a_new_task_and_the_task_cannot_be_changed_in_place() -> None:
    task = Afterwork("memory://").task(queue="emails")(resize_image)
    variant = task.using(queue="urgent")
    assert variant is not task
    assert isinstance(variant, Task)
    assert (variant.func, variant.app, variant.is_async) == (task.func, task.app, True)
    assert variant.__wrapped__ is resize_image
    for attribute, value in [("queue", "other"), ("priority", 5), ("app", None), ("delay", 1)]:
        with pytest.raises(AttributeError):
            setattr(task, attribute, value)
        with pytest.raises(AttributeError):
            setattr(variant, attribute, value)
    assert (task.queue, variant.queue) == ("emails", "urgent")


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"priority": 1.5}, "priority must be an int"),
        ({"priority": True}, "priority must be an int"),
        ({"priority": -101}, "-100..100"),
        ({"queue": "a,b"}, "without commas"),
        ({"queue": 7}, "non-empty name"),
    ],
)
def test_using_checks_the_options_it_shares_with_the_decorator_the_same_way(
    options: dict[str, Any], fix: str
) -> None:
    jobs = Afterwork("memory://")
    task = jobs.task(send_email)
    with pytest.raises(TaskConfigurationError, match=fix) as at_using:
        task.using(**options)
    with pytest.raises(TaskConfigurationError, match=fix) as at_decoration:
        jobs.task(**options)(resize_image)
    assert str(at_using.value).startswith(f"task {task.name}: ")
    assert str(at_decoration.value).removeprefix(f"task {__name__}.resize_image: ") == str(
        at_using.value
    ).removeprefix(f"task {task.name}: ")


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"name": ""}, "non-empty string"),
        ({"name": "t", "priority": 500}, "out of range"),
        ({"name": "t", "queue": ""}, "non-empty name"),
        ({"name": "t", "retry": 3}, "RetryPolicy"),
        ({"name": "t", "timeout": 0}, "more than 0 seconds"),
        ({"name": "t", "timeout": float("inf")}, "zero or more seconds"),
        ({"name": "t", "result_ttl": -1}, "zero or more seconds"),
        ({"name": "t", "delay": 5, "run_at": 1e9}, "not both"),
        ({"name": "t", "unique_key": ""}, "unique_key"),
    ],
)
def test_a_task_built_directly_is_checked_like_a_decorated_one(
    options: dict[str, Any], fix: str
) -> None:
    with pytest.raises(TaskConfigurationError, match=fix):
        Task(Afterwork("memory://"), send_email, **options)


def test_a_task_built_directly_has_the_documented_defaults() -> None:
    task = Task(Afterwork("memory://"), send_email, name="mail.send")
    assert (task.queue, task.priority, task.retry, task.timeout) == (
        "default",
        0,
        RetryPolicy(),
        None,
    )
    assert (task.delay, task.run_at, task.unique_key) == (None, None, None)
    assert task(1) == "1:hello"
    assert task.__doc__ == send_email.__doc__


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_from_sync_code_returns_a_handle_with_an_id(app: Afterwork) -> None:
    task = app.task(send_email)
    handle = task.enqueue(42, subject="welcome")
    assert isinstance(handle, JobHandle)
    assert handle.id
    record = handle.info()
    assert record.task == task.name
    assert record.status == JobStatus.QUEUED
    assert app.serializer.loads(record.payload) == [[42], {"subject": "welcome"}]


async def test_aenqueue_from_async_code_returns_a_handle_with_an_id(app: Afterwork) -> None:
    task = app.task(resize_image)
    handle = await task.aenqueue("a.png", width=100)
    assert handle.id
    assert (await handle.ainfo()).task == task.name


def test_each_enqueue_makes_a_new_job(app: Afterwork) -> None:
    task = app.task(send_email)
    assert task.enqueue(1).id != task.enqueue(1).id


def test_a_job_carries_its_tasks_options(app: Afterwork) -> None:
    task = app.task(queue="emails", priority=7, retries=1, timeout=9, result_ttl=60)(send_email)
    record = task.enqueue(1).info()
    assert (record.queue, record.priority, record.max_attempts) == ("emails", 7, 2)
    assert (record.timeout, record.result_ttl, record.attempts) == (9, 60, 0)


def test_a_job_enqueued_with_using_carries_the_changed_options(app: Afterwork) -> None:
    task = app.task(send_email)
    record = task.using(priority=-3, queue="low").enqueue(1).info()
    assert (record.priority, record.queue) == (-3, "low")
    assert task.enqueue(1).info().queue == "default"


def test_a_delayed_job_is_scheduled_until_its_time_comes(manual_app: Afterwork) -> None:
    clock = manual_app.clock
    assert isinstance(clock, ManualClock)
    handle = manual_app.task(send_email).using(delay="1m").enqueue(1)
    assert handle.status() == JobStatus.SCHEDULED
    clock.advance(59)
    assert handle.status() == JobStatus.SCHEDULED
    clock.advance(1)
    assert handle.status() == JobStatus.QUEUED


def test_arguments_the_codec_cannot_carry_fail_at_enqueue_naming_task_and_argument(
    app: Afterwork,
) -> None:
    task = app.task(send_email)
    with pytest.raises(SerializationError) as excinfo:
        task.enqueue(1, subject=Mailer())  # type: ignore[arg-type]
    assert task.name in str(excinfo.value)
    assert "'subject' (Mailer)" in str(excinfo.value)


async def test_arguments_the_codec_cannot_carry_fail_at_aenqueue_too(app: Afterwork) -> None:
    task = app.task(resize_image)
    with pytest.raises(SerializationError, match=r"#0 \(Mailer\)"):
        await task.aenqueue(Mailer(), 1)  # type: ignore[arg-type]


def test_a_payload_over_the_size_limit_is_refused_at_enqueue(url: str) -> None:
    jobs = Afterwork(url, max_payload_size=1000)
    try:
        task = jobs.task(send_email)
        task.enqueue(1, subject="x" * 900)
        with pytest.raises(PayloadTooLarge, match=f"cannot enqueue {task.name}.*1000"):
            task.enqueue(1, subject="x" * 1000)
        with pytest.raises(SerializationError):  # PayloadTooLarge is a SerializationError
            task.prepare(1, subject="x" * 1000)
    finally:
        jobs.close()


def test_a_unique_key_makes_a_second_enqueue_return_the_first_job(app: Afterwork) -> None:
    task = app.task(send_email).using(unique_key="report:2024-01")
    first = task.enqueue(1)
    second = task.enqueue(2)
    assert second.id == first.id
    assert app.serializer.loads(second.info().payload) == [[1], {}]
    # Another key is another job.
    assert app.task(send_email).using(unique_key="report:2024-02").enqueue(1).id != first.id


def test_the_same_unique_key_twice_in_one_batch_makes_one_job(app: Afterwork) -> None:
    task = app.task(send_email).using(unique_key="k")
    first, second = app.enqueue_many([task.prepare(1), task.prepare(2)])
    assert first.id == second.id


def test_enqueue_many_sends_prepared_jobs_in_one_batch(app: Afterwork) -> None:
    task = app.task(send_email)
    handles = app.enqueue_many(task.prepare(i) for i in range(5))
    assert len({h.id for h in handles}) == 5
    assert [app.serializer.loads(h.info().payload)[0] for h in handles] == [[i] for i in range(5)]


async def test_aenqueue_many_sends_prepared_jobs_from_async_code(app: Afterwork) -> None:
    task = app.task(resize_image)
    handles = await app.aenqueue_many(task.prepare(f"{i}.png", 10) for i in range(3))
    assert [(await h.ainfo()).status for h in handles] == [JobStatus.QUEUED] * 3


def test_prepare_encodes_now_so_a_bad_argument_fails_before_the_batch(app: Afterwork) -> None:
    task = app.task(send_email)
    with pytest.raises(SerializationError):
        app.enqueue_many([task.prepare(1), task.prepare(Mailer())])  # type: ignore[arg-type]


BAD_CALLS = {
    "a missing argument": ((), {}, "missing a required argument: 'user_id'"),
    "one too many": ((1, "hi", 3), {}, "too many positional arguments"),
    "a misspelt keyword": ((1,), {"subjet": "hi"}, "unexpected keyword argument 'subjet'"),
}


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_CALLS.values(), ids=BAD_CALLS)
async def test_arguments_that_do_not_fit_the_signature_are_refused_at_enqueue(
    app: Afterwork, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    task = app.task(send_email)

    for send in (task.enqueue, task.prepare):
        with pytest.raises(InvalidArguments, match=message) as raised:
            send(*args, **kwargs)
        assert task.name in str(raised.value)
        assert "send_email(user_id, subject='hello')" in str(raised.value)
    with pytest.raises(InvalidArguments, match=message):
        await task.aenqueue(*args, **kwargs)
    assert await app.broker.list_jobs() == []
    assert isinstance(raised.value, TypeError)


def with_session(func: Any) -> Any:
    """A decorator that supplies the first argument itself."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func("session", *args, **kwargs)

    return wrapper


@with_session
def save_user(session: str, user_id: int) -> str:
    return f"{session}:{user_id}"


async def test_a_decorated_function_is_checked_as_the_worker_will_call_it(app: Afterwork) -> None:
    task = app.task(save_user)

    handle = await task.aenqueue(7)

    await asyncio.wait_for(app.worker(burst=True).run(), 5)
    assert await handle.aresult(timeout=5) == "session:7"
