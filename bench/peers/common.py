"""What every library's harness shares: the task's recorder, the producer's timed
loops, and a tiny Redis client that is the same for all of them.

Only the standard library here: this module runs in every peer's virtualenv.

The worker side is told what to do by the environment:

* ``BENCH_MODE=drain``: the task counts its calls; the call that reaches
  ``BENCH_JOBS`` writes ``BENCH_DONE`` (a JSON file) with the monotonic times of
  the first and the last call, the CPU time the worker process used between
  them (all its threads) and its pid.
* ``BENCH_MODE=latency``: the task reads the wall clock as it starts and pushes
  ``"<i> <time>"`` to the Redis list :data:`STARTED` for the producer to read.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

STARTED = "bench:started"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "10"))


class MiniRedis:
    """Just enough RESP for RPUSH and BLPOP, so every harness talks to Redis alike."""

    def __init__(self, url: str = REDIS_URL) -> None:
        parts = urlsplit(url)
        self._sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def call(self, *args: Any) -> Any:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
        with self._lock:
            self._sock.sendall(b"".join(out))
            return self._reply()

    def _reply(self) -> Any:
        line = self._file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line!r}")


# -- the task's side ------------------------------------------------------------------------

MODE = os.environ.get("BENCH_MODE", "drain")
_TARGET = int(os.environ.get("BENCH_JOBS", "0"))
_DONE = os.environ.get("BENCH_DONE", "")
_count = itertools.count(1)  # next() on it is atomic, so threaded workers count right
_first = 0.0
_first_cpu = 0.0
_pusher: MiniRedis | None = None
_pusher_lock = threading.Lock()


def record(i: int) -> None:
    """Called by every library's no-op task with its argument."""
    global _first, _first_cpu, _pusher
    if MODE == "latency":
        started = time.time()
        if _pusher is None:
            with _pusher_lock:
                if _pusher is None:
                    _pusher = MiniRedis()
        _pusher.call("RPUSH", STARTED, f"{i} {started!r}")
        return
    now = time.perf_counter()
    n = next(_count)
    if n == 1:
        _first, _first_cpu = now, time.process_time()
    if n == _TARGET and _DONE:
        tmp = f"{_DONE}.tmp"
        last, cpu = time.perf_counter(), time.process_time() - _first_cpu
        data = {"first": _first, "last": last, "cpu": cpu, "pid": os.getpid(), "jobs": n}
        Path(tmp).write_text(json.dumps(data))
        os.replace(tmp, _DONE)


def script(name: str) -> str:
    """A console script of this virtualenv (next to its python)."""
    return str(Path(sys.executable).parent / name)


def exec_worker(argv: list[str]) -> None:
    """Become the library's own worker command: same pid, nothing of ours left in it."""
    sys.stdout.flush()
    os.execv(argv[0], argv)


# -- the producer's side --------------------------------------------------------------------


class Producer:
    """How a library enqueues one job with argument ``i`` (and many, if it can)."""

    #: The batch call's name, or None when the library has no batch API.
    batch_api: str | None = None

    async def open(self) -> None:
        pass

    async def one(self, i: int) -> None:
        raise NotImplementedError

    async def many(self, ids: range) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        """Anything the harness wants to add to a phase's result."""
        return {}


async def enqueue_one(producer: Producer, jobs: int, limit: float) -> dict[str, Any]:
    for i in range(3):  # connect (and warm up) outside the timing
        await producer.one(-1 - i)
    start = time.perf_counter()
    done = 0
    for i in range(jobs):
        await producer.one(i)
        done += 1
        if done % 100 == 0 and time.perf_counter() - start > limit:
            break
    elapsed = time.perf_counter() - start
    return {"rate": done / elapsed, "jobs": done, "seconds": elapsed}


async def enqueue_batch(producer: Producer, jobs: int, size: int, limit: float) -> dict[str, Any]:
    if producer.batch_api is None:
        return {"skip": "no batch API"}
    await producer.many(range(-size, 0))  # connect outside the timing
    start = time.perf_counter()
    done = 0
    for first in range(0, jobs, size):
        await producer.many(range(first, min(jobs, first + size)))
        done = min(jobs, first + size)
        if time.perf_counter() - start > limit:
            break
    elapsed = time.perf_counter() - start
    return {"rate": done / elapsed, "jobs": done, "seconds": elapsed, "api": producer.batch_api}


async def ping(jobs: int) -> dict[str, Any]:
    """The floor under any one-by-one enqueue on this machine: ``PING`` one at a time,
    each answered before the next, over an asyncio stream and over a blocking socket
    (no library, no work in Redis)."""
    parts = urlsplit(REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    command = b"*1\r\n$4\r\nPING\r\n"
    start = time.perf_counter()
    for _ in range(jobs):
        writer.write(command)
        await reader.readline()
    stream = jobs / (time.perf_counter() - start)
    writer.close()
    blocking = MiniRedis()
    start = time.perf_counter()
    for _ in range(jobs):
        blocking.call("PING")
    return {"asyncio": stream, "blocking": jobs / (time.perf_counter() - start)}


async def fill(producer: Producer, jobs: int, size: int) -> dict[str, Any]:
    """Queue jobs 0..jobs-1 for a drain, the fastest way the library has (not timed)."""
    for first in range(0, jobs, size):
        ids = range(first, min(jobs, first + size))
        if producer.batch_api is not None:
            await producer.many(ids)
        else:
            for i in ids:
                await producer.one(i)
    return {"jobs": jobs}


async def latency(producer: Producer, samples: int, limit: float) -> dict[str, Any]:
    """Enqueue single jobs on an idle worker; each job's start minus the time just before
    its enqueue call. The next job goes only once the last one has started, after a
    pause of 2-6 ms (random, so a polling worker is not met in step) for the worker to
    settle and go idle."""
    redis = MiniRedis()
    deadline = time.monotonic() + limit

    async def started(i: int, wait: float) -> float | None:
        """The start time the worker pushed for job ``i``, skipping any older pushes."""
        while True:
            left = min(wait, deadline - time.monotonic())
            if left <= 0:
                return None
            reply = redis.call("BLPOP", STARTED, f"{left:.3f}")
            if reply is None:
                return None
            job, at = reply[1].decode().split()
            if int(job) == i:
                return float(at)

    # Wait for the worker to be up: a warm-up job at a time until one starts.
    warm = -1
    while True:
        await producer.one(warm)
        if await started(warm, 2.0) is not None:
            break
        if time.monotonic() > deadline:
            return {"error": "the worker never started a job"}
        warm -= 1
    values: list[float] = []
    for i in range(samples):
        await asyncio.sleep(random.uniform(0.002, 0.006))
        sent = time.time()
        await producer.one(i)
        at = await started(i, 30.0)
        if at is None:
            break
        values.append(at - sent)
    if not values:
        return {"error": "no job started in time"}
    values.sort()
    return {
        "p50": statistics.median(values),
        "p99": values[min(len(values) - 1, round(0.99 * (len(values) - 1)))],
        "samples": len(values),
    }


def main(make_producer: Callable[[], Producer], worker: Callable[[], None]) -> None:
    """``python -m peers.<library> worker | enqueue-one | enqueue-batch | fill | latency |
    ping``;
    producer phases print their result as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("phase")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--limit", type=float, default=60.0)
    args = parser.parse_args()
    if args.phase == "worker":
        worker()
        return

    async def go() -> dict[str, Any]:
        producer = make_producer()
        await producer.open()
        try:
            if args.phase == "enqueue-one":
                return await enqueue_one(producer, args.jobs, args.limit)
            if args.phase == "enqueue-batch":
                return await enqueue_batch(producer, args.jobs, args.size, args.limit)
            if args.phase == "fill":
                return await fill(producer, args.jobs, args.size)
            if args.phase == "latency":
                return await latency(producer, args.samples, args.limit)
            if args.phase == "ping":
                return await ping(args.jobs)
            raise SystemExit(f"unknown phase {args.phase!r}")
        finally:
            await producer.close()
            extra.update(producer.extra())

    extra: dict[str, Any] = {}

    result = asyncio.run(go()) | extra
    print("BENCH-RESULT " + json.dumps(result), flush=True)
