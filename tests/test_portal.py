"""Sync calls from many threads: served by one loop, leaving nothing behind per thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from afterwork import Afterwork
from afterwork.brokers.sqlite import SQLiteBroker


def noop(i: int) -> None: ...


def test_sync_calls_from_short_lived_threads_leave_no_connection_or_descriptor_behind(
    tmp_path: Path,
) -> None:
    jobs = Afterwork(f"sqlite:///{tmp_path}/jobs.db")
    task = jobs.task(noop)

    def enqueue_from_threads(count: int) -> None:
        for i in range(count):
            thread = threading.Thread(target=task.enqueue, args=(i,))
            thread.start()
            thread.join()

    enqueue_from_threads(5)
    descriptors = len(os.listdir("/proc/self/fd"))
    enqueue_from_threads(40)

    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert isinstance(jobs.broker, SQLiteBroker)
    assert len(jobs.broker._connections) == 1
    assert len(jobs.portal.call(jobs.broker.list_jobs(limit=100))) == 45
    jobs.close()
