"""Arguments and results get back the types their annotations name, though JSON loses them."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from afterwork import Afterwork, JobFailed, JobStatus
from afterwork.serialization import JSONSerializer, encode_arguments

if TYPE_CHECKING:
    from decimal import Context as OnlyForTypeCheckers

received: list[tuple[Any, ...]] = []

WHEN = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Colour(enum.Enum):
    RED = "red"


def typed(
    when: dt.datetime,
    day: dt.date,
    at: dt.time,
    key: uuid.UUID,
    price: Decimal,
    pair: tuple[int, int],
    tags: set[str],
    names: dict[int, str],
    raw: bytes,
    colour: Colour,
    maybe: dt.datetime | None,
    dates: list[dt.date],
) -> None:
    received.append((when, day, at, key, price, pair, tags, names, raw, colour, maybe, dates))


async def typed_async(*stamps: dt.datetime, sent: dt.date, **extra: uuid.UUID) -> None:
    received.append((stamps, sent, extra))


def file_paths(source: Path, targets: list[Path], label: Any) -> None:
    received.append((source, targets, label))


def report(month: str, extra: object) -> dict[str, object]:
    return {"month": month, "orders": 12, "extra": extra}


def untyped(when, anything: Any, text: str, count: float):  # type: ignore[no-untyped-def]
    received.append((when, anything, text, count))


def hidden_annotation(value: OnlyForTypeCheckers, when: dt.datetime) -> None:
    received.append((value, when))


def next_day(day: dt.date) -> dt.date:
    return day + dt.timedelta(days=1)


def when_and_count(when: dt.datetime) -> tuple[dt.datetime, int]:
    return when, 3


def lies_about_its_result() -> dt.datetime:
    return "not a datetime"  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def nothing_received() -> None:
    received.clear()


async def run_burst(app: Afterwork) -> None:
    await asyncio.wait_for(app.worker(burst=True).run(), 5)


async def test_annotated_parameters_receive_the_types_json_cannot_carry(app: Afterwork) -> None:
    handle = await app.task(typed).aenqueue(
        WHEN,
        WHEN.date(),
        dt.time(12, 30),
        ID,
        Decimal("19.90"),
        (1, 2),
        {"a", "b"},
        {1: "one"},
        b"\x00\xff",
        Colour.RED,
        maybe=None,
        dates=[dt.date(2025, 5, 1)],
    )
    await run_burst(app)
    await handle.aresult(timeout=5)
    assert received == [
        (
            WHEN,
            WHEN.date(),
            dt.time(12, 30),
            ID,
            Decimal("19.90"),
            (1, 2),
            {"a", "b"},
            {1: "one"},
            b"\x00\xff",
            Colour.RED,
            None,
            [dt.date(2025, 5, 1)],
        )
    ]
    assert type(received[0][0]) is dt.datetime


async def test_paths_travel_as_text_and_arrive_as_paths_where_annotated(app: Afterwork) -> None:
    handle = await app.task(file_paths).aenqueue(
        Path("/srv/in.csv"), [Path("out/a.csv")], label=Path("/tmp/label")
    )
    await run_burst(app)
    await handle.aresult(timeout=5)
    assert received == [(Path("/srv/in.csv"), [Path("out/a.csv")], "/tmp/label")]


async def test_object_annotations_take_any_value_as_json_carried(app: Afterwork) -> None:
    handle = await app.task(report).aenqueue("2025-06", {"a": [1]})
    await run_burst(app)
    assert await handle.aresult(timeout=5) == {
        "month": "2025-06",
        "orders": 12,
        "extra": {"a": [1]},
    }


async def test_star_args_keyword_only_and_star_kwargs_are_converted_too(app: Afterwork) -> None:
    task = app.task(typed_async)
    handle = await task.aenqueue(WHEN, WHEN, sent=WHEN.date(), first=ID)
    await run_burst(app)
    await handle.aresult(timeout=5)
    assert received == [((WHEN, WHEN), WHEN.date(), {"first": ID})]


async def test_parameters_without_a_usable_annotation_get_what_json_carried(
    app: Afterwork,
) -> None:
    handle = await app.task(untyped).aenqueue(WHEN, WHEN, "text", 2)
    await run_burst(app)
    await handle.aresult(timeout=5)
    assert received == [("2025-01-02T03:04:05Z", "2025-01-02T03:04:05Z", "text", 2.0)]
    assert type(received[0][3]) is float


async def test_annotations_that_cannot_be_resolved_leave_every_value_as_it_came(
    app: Afterwork,
) -> None:
    handle = await app.task(hidden_annotation).aenqueue("context", WHEN)
    await run_burst(app)
    await handle.aresult(timeout=5)
    assert received == [("context", "2025-01-02T03:04:05Z")]


async def test_a_value_that_is_not_its_annotated_type_sends_the_job_to_the_dead_letter_queue(
    app: Afterwork,
) -> None:
    task = app.task(next_day)
    bad = await task.aenqueue("next tuesday")  # type: ignore[arg-type]
    good = await task.aenqueue(dt.date(2025, 1, 31))
    await run_burst(app)

    assert await good.aresult(timeout=5) == dt.date(2025, 2, 1)
    with pytest.raises(JobFailed) as excinfo:
        await bad.aresult(timeout=5)
    assert excinfo.value.error_type == "afterwork.errors.SerializationError"
    assert excinfo.value.message.startswith(
        f"cannot run {task.name}: argument 'day' is 'next tuesday', which is not a valid date"
    )
    record = await bad.ainfo()
    assert (record.status, record.attempts) == (JobStatus.FAILED, 1)  # not retried


async def test_a_result_gets_its_annotated_type_back_when_the_task_is_known_here(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    web, other = Afterwork(url), Afterwork(url)
    try:
        task = web.task(when_and_count)
        handle = await task.aenqueue(WHEN)
        await run_burst(web)

        assert await handle.aresult(timeout=5) == (WHEN, 3)
        # An app that does not know the task reads the result as JSON carried it.
        assert await other.job(handle.id).aresult(timeout=5) == ["2025-01-02T03:04:05Z", 3]
    finally:
        await web.aclose()
        await other.aclose()


async def test_a_result_that_is_not_its_annotated_type_is_returned_as_it_came(
    app: Afterwork,
) -> None:
    handle = await app.task(lies_about_its_result).aenqueue()
    await run_burst(app)
    assert await handle.aresult(timeout=5) == "not a datetime"


async def test_with_pickle_values_arrive_as_they_were_sent(tmp_path: Path) -> None:
    app = Afterwork(f"sqlite:///{tmp_path}/jobs.db", serializer="pickle")
    try:
        handle = await app.task(next_day).aenqueue(WHEN.date())
        await run_burst(app)
        assert await handle.aresult(timeout=5) == dt.date(2025, 1, 3)
    finally:
        await app.aclose()


def test_the_encoding_error_says_annotations_bring_types_back() -> None:
    with pytest.raises(ValueError, match="arrive as such when the task's parameter is annotated"):
        encode_arguments(JSONSerializer(), "app.send", (object(),), {})
