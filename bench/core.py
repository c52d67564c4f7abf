"""Core benchmark: SQLite and memory brokers, one process, no-op tasks.

    python bench/core.py [--jobs 20000]

Prints one table. Each figure is the best of three runs, so a stray
background process on the machine does not decide the number.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def fresh_app(url: str):  # type: ignore[no-untyped-def]
    """A new app (and a fresh broker) for each measurement."""
    os.environ["AFTERWORK_URL"] = url
    import bench_app

    from afterwork import Afterwork

    app = Afterwork(url)
    # Tasks are immutable: the app gets copies bound to it.
    app.tasks = {n: dataclasses.replace(t, app=app) for n, t in bench_app.jobs.tasks.items()}
    return app, bench_app


def best(runs: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(runs))


def sqlite_url(tmp: str, name: str) -> str:
    path = Path(tmp) / f"{name}-{time.monotonic_ns()}.db"
    return f"sqlite:///{path}"


def sync_enqueue(url: str, n: int) -> float:
    app, _ = fresh_app(url)
    task = app.tasks["bench_app.noop"]
    task.enqueue(0)  # open the connection outside the timing
    start = time.perf_counter()
    for i in range(n):
        task.enqueue(i)
    return n / (time.perf_counter() - start)


def run_async(fn: Callable[[], Awaitable[float]]) -> float:
    return asyncio.run(fn())


def async_enqueue(url: str, n: int) -> float:
    async def go() -> float:
        app, _ = fresh_app(url)
        task = app.tasks["bench_app.noop"]
        await task.aenqueue(0)
        start = time.perf_counter()
        for i in range(n):
            await task.aenqueue(i)
        return n / (time.perf_counter() - start)

    return run_async(go)


def batch_enqueue(url: str, n: int, size: int = 1000) -> float:
    async def go() -> float:
        app, _ = fresh_app(url)
        task = app.tasks["bench_app.noop"]
        await task.aenqueue(0)
        batches = [[task.prepare(i) for i in range(size)] for _ in range(n // size)]
        start = time.perf_counter()
        for batch in batches:
            await app.aenqueue_many(batch)
        return n / (time.perf_counter() - start)

    return run_async(go)


def drain(url: str, n: int, task_name: str = "bench_app.noop", concurrency: int = 100) -> float:
    async def go() -> float:
        app, _ = fresh_app(url)
        task = app.tasks[task_name]
        for start in range(0, n, 1000):
            await app.aenqueue_many(task.prepare(i) for i in range(start, min(n, start + 1000)))
        worker = app.worker(concurrency=concurrency, burst=True)
        began = time.perf_counter()
        await worker.run()
        assert worker.processed == n, (worker.processed, n)
        return n / (time.perf_counter() - began)

    return run_async(go)


def end_to_end(url: str, n: int) -> float:
    """Enqueue in batches and drain, timed together: what one process can push through."""

    async def go() -> float:
        app, _ = fresh_app(url)
        task = app.tasks["bench_app.noop"]
        began = time.perf_counter()
        for start in range(0, n, 1000):
            await app.aenqueue_many(task.prepare(i) for i in range(start, min(n, start + 1000)))
        worker = app.worker(concurrency=100, burst=True)
        await worker.run()
        return n / (time.perf_counter() - began)

    return run_async(go)


def idle_worker_peak_rss(url: str) -> float:
    """Peak resident memory (MiB) of an `afterwork worker` process that has started and idles."""
    env = dict(os.environ, AFTERWORK_URL=url, PYTHONPATH=str(HERE))
    proc = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "bench_app:jobs", "--log-level", "info"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the worker to say it started
            if "started" in line:
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
        return peak_kib / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n, runs = args.jobs, args.runs
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:

        def sq() -> str:
            return sqlite_url(tmp, "bench")

        measures: list[tuple[str, str, Callable[[], float], str, str]] = [
            (
                "sqlite",
                "enqueue one by one, sync",
                lambda: sync_enqueue(sq(), n // 4),
                "jobs/s",
                ">= 5,000",
            ),
            (
                "sqlite",
                "enqueue one by one, async",
                lambda: async_enqueue(sq(), n // 4),
                "jobs/s",
                ">= 5,000",
            ),
            (
                "sqlite",
                "enqueue in batches of 1,000",
                lambda: batch_enqueue(sq(), n),
                "jobs/s",
                ">= 50,000",
            ),
            (
                "sqlite",
                f"drain {n:,} async no-ops, concurrency 10",
                lambda: drain(sq(), n, concurrency=10),
                "jobs/s",
                ">= 3,000",
            ),
            (
                "sqlite",
                f"drain {n:,} async no-ops, concurrency 100",
                lambda: drain(sq(), n),
                "jobs/s",
                ">= 3,000",
            ),
            (
                "sqlite",
                f"drain {n // 4:,} sync no-ops, concurrency 10",
                lambda: drain(sq(), n // 4, "bench_app.noop_sync", 10),
                "jobs/s",
                "",
            ),
            (
                "memory",
                f"enqueue + drain {n:,} no-ops, one process",
                lambda: end_to_end("memory://", n),
                "jobs/s",
                ">= 50,000",
            ),
        ]
        for broker, label, measure, unit, target in measures:
            rows.append((broker, label, f"{best(runs, measure):,.0f} {unit}", target))
        rss = idle_worker_peak_rss(sq())
        rows.append(("sqlite", "idle worker process, peak RSS", f"{rss:.1f} MiB", ""))
    print(
        f"afterwork core benchmark: Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, best of {runs}\n"
    )
    headers = ("broker", "measure", "result", "target")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
