"""A broker client in its own OS process, for the conformance suite's cross-process tests.

    python broker_process.py claim URL QUEUE WORKER LIMIT
        print "ready", wait for a line on stdin, then claim LIMIT jobs at a time
        until none is left and print the claimed ids as one JSON list
    python broker_process.py enqueue URL QUEUE JOB_ID
        enqueue one job that is ready now

Both use the real clock.
"""

from __future__ import annotations

import asyncio
import json
import sys

from records import job

from afterwork.brokers import create_broker
from afterwork.clock import Clock

LEASE = 300.0


async def claim(url: str, queue: str, worker: str, limit: int) -> None:
    broker = create_broker(url, clock=Clock())
    await broker.connect()
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        claimed: list[str] = []
        while jobs := await broker.reserve([queue], limit, worker=worker, lease=LEASE):
            claimed.extend(job.id for job in jobs)
        print(json.dumps(claimed), flush=True)
    finally:
        await broker.close()


async def enqueue(url: str, queue: str, job_id: str) -> None:
    clock = Clock()
    broker = create_broker(url, clock=clock)
    await broker.connect()
    try:
        await broker.enqueue([job(job_id, clock, queue=queue, max_attempts=1)])
    finally:
        await broker.close()


def main(argv: list[str]) -> None:
    command, url, queue, *rest = argv
    if command == "claim":
        worker, limit = rest
        asyncio.run(claim(url, queue, worker, int(limit)))
    elif command == "enqueue":
        (job_id,) = rest
        asyncio.run(enqueue(url, queue, job_id))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
