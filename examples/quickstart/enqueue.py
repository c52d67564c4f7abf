"""Enqueue a few jobs, from sync and from async code, and wait for their results.

Start a worker in another terminal (``afterwork worker tasks:jobs``) to run them.
"""

from __future__ import annotations

import asyncio

from tasks import build_sales_report, jobs, make_thumbnail, send_welcome_email

from afterwork import JobFailed, JobHandle, ResultTimeout


async def sign_up(user_id: int, email: str) -> JobHandle[str]:
    """What an async view does: hand the email off and answer at once."""
    return await send_welcome_email.aenqueue(user_id, email)


def main() -> None:
    handles: dict[str, JobHandle[object]] = {}

    # From sync code (a script, a Flask or Django view).
    handles["welcome email"] = send_welcome_email.enqueue(42, "ada@example.com")
    # From async code.
    handles["welcome email (async)"] = asyncio.run(sign_up(43, "grace@example.com"))
    # Later, and with a key: enqueueing the same key again returns the waiting job.
    report = build_sales_report.using(delay="1s", unique_key="sales-report:2025-06")
    handles["sales report"] = report.enqueue("2025-06")
    assert report.enqueue("2025-06") == handles["sales report"]
    # Many at once, in one round trip to the broker.
    photos = [f"uploads/photo-{n}.jpg" for n in range(1, 4)]
    thumbnails = jobs.enqueue_many(make_thumbnail.prepare(path) for path in photos)
    for path, handle in zip(photos, thumbnails, strict=True):
        handles[f"thumbnail of {path}"] = handle

    print(f"enqueued {len(handles)} jobs; waiting for a worker (afterwork worker tasks:jobs)")
    for what, handle in handles.items():
        try:
            print(f"  {what}: {handle.result(timeout=60)!r}")
        except JobFailed as exc:
            print(f"  {what}: failed with {exc.error_type}: {exc.message}")
        except ResultTimeout:
            print(f"  {what}: still {handle.status()} after 60s; is a worker running?")
    jobs.close()


if __name__ == "__main__":
    main()
