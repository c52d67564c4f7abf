"""Sync calls from many threads: served by one loop, leaving nothing behind per thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from afterwork import Afterwork, BrokerConnectionError
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


def test_an_embedded_worker_that_cannot_start_leaves_no_thread_behind() -> None:
    jobs = Afterwork("sqlite:////nonexistent/afterwork/jobs.db")
    for _ in range(3):
        with pytest.raises(BrokerConnectionError, match=r"/nonexistent/afterwork/jobs\.db"):
            jobs.start_in_thread()
    assert not jobs.running
    assert not [t for t in threading.enumerate() if t.name == "afterwork-embedded" and t.is_alive()]
