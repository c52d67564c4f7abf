"""Sync task threads never hold up the exit of a process whose worker has stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from afterwork.threads import DaemonThreadPool

SCRIPT = """
    import asyncio, threading
    from afterwork import Afterwork

    jobs = Afterwork("memory://")

    @jobs.task(timeout=0.2, retries=0)
    def stuck() -> None:
        threading.Event().wait()  # never returns

    async def main() -> None:
        await stuck.aenqueue()
        worker = jobs.worker(burst=True)
        await worker.run()
        print("abandoned", worker.abandoned_threads)

    asyncio.run(main())
"""


def test_a_process_exits_although_a_sync_task_it_abandoned_never_returns(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "abandoned 1" in done.stdout


def test_the_pool_runs_work_and_hands_back_results_and_errors() -> None:
    pool = DaemonThreadPool(2, "test")
    assert pool.submit(lambda a, b: a + b, 1, 2).result(timeout=5) == 3
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(print)
