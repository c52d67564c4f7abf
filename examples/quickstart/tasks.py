"""The work a small shop's web app hands off instead of making its users wait.

Run a worker for these tasks from this directory::

    afterwork worker tasks:jobs
"""

from __future__ import annotations

import asyncio
import time

from afterwork import Afterwork

# Jobs go to ./afterwork.db (SQLite, no server) unless AFTERWORK_URL names a broker.
jobs = Afterwork()


@jobs.task(retries=3, timeout="30s")
async def send_welcome_email(user_id: int, email: str) -> str:
    """Async: runs on the worker's event loop."""
    await asyncio.sleep(0.2)  # stands in for an SMTP or HTTP call
    return f"welcome email sent to {email} (user {user_id})"


@jobs.task(timeout="2m")
def make_thumbnail(path: str, width: int = 400) -> str:
    """Sync and blocking: runs in the worker's thread pool, so it never stalls the loop."""
    time.sleep(0.3)  # stands in for an image library call
    stem, dot, extension = path.rpartition(".")
    return f"{stem}-{width}w{dot}{extension}"


@jobs.task(priority=-10, result_ttl="7d")
def build_sales_report(month: str) -> dict[str, object]:
    """Low priority: runs after the emails and thumbnails that wait with it."""
    time.sleep(0.5)  # stands in for a slow query
    return {"month": month, "orders": 1284, "revenue": 58210.5}
