"""Worker processes sharing one SQLite file split the jobs: each runs exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

from .integration_support import Processes, lines, live_workers, wait_for

JOBS = 300


@pytest.mark.timeout(40)
def test_two_worker_processes_on_one_sqlite_file_run_every_job_exactly_once(
    app: Afterwork, procs: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    first = procs.worker("--concurrency", "4")
    second = procs.worker("--concurrency", "4")
    wait_for(lambda: len(live_workers(app)) == 2, what="both workers to be up")

    app.enqueue_many(app.tasks["record"].prepare(str(log), n) for n in range(JOBS))
    wait_for(lambda: len(lines(log)) >= JOBS, timeout=20, what=f"{JOBS} runs")

    runs = [line.split() for line in lines(log)]
    counts = Counter(int(n) for n, _ in runs)
    assert [n for n, seen in counts.items() if seen > 1] == []
    assert sorted(counts) == list(range(JOBS))
    assert {int(pid) for _, pid in runs} == {first.pid, second.pid}  # both took part

    def all_settled() -> dict[str, int]:
        counts = app.portal.call(app.broker.stats())["default"]
        return counts if counts.get(str(JobStatus.SUCCEEDED)) == JOBS else {}

    wait_for(all_settled, what="every job to be settled as succeeded")
    finished = app.portal.call(app.broker.list_jobs(status=JobStatus.SUCCEEDED, limit=JOBS))
    assert {job.attempts for job in finished} == {1}
