"""Web benchmark: after-response tasks under uvicorn, and the in-process queue.

    python bench/web.py [--duration 5] [--connections 50] [--runs 3] [--jobs 100000]

Starts one uvicorn server (one worker, loopback) per variant of the same
Starlette app, whose handler adds one no-op after-response task (with
Starlette's own BackgroundTasks, the baseline; with one Starlette
BackgroundTask, for reference; with afterwork's two ways), and loads
each with ``wrk`` (or, if wrk is not installed, a small asyncio load
generator), taking turns, in the same run. Then times ``jobs.enqueue`` of
no-op coroutines on ``memory://`` in this process until the last one has run.
Prints one table; each figure is the best of ``--runs`` runs. On Linux it
also shows the server's CPU time per request, which a busy machine disturbs
less than requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

VARIANTS = {
    "starlette": "Starlette BackgroundTasks.add_task on the response",
    "starlette_one": "Starlette BackgroundTask on the response",
    "state": "afterwork: request.state.background.add_task",
    "after_response": "afterwork: after_response(...)",
}
#: The baseline: Starlette's own BackgroundTasks, as a handler that adds a task
#: to the response uses it (what FastAPI hands a handler too).
BASELINE = "starlette"


# -- the app under load (run in a server subprocess) ----------------------------------


def build_app(variant: str) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask, BackgroundTasks
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from afterwork import after_response
    from afterwork.integrations.asgi import AfterworkMiddleware

    async def noop() -> None:
        pass

    async def starlette_endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(noop)
        return PlainTextResponse("ok", background=tasks)

    async def starlette_one_endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", background=BackgroundTask(noop))

    async def state_endpoint(request: Request) -> Response:
        request.state.background.add_task(noop)
        return PlainTextResponse("ok")

    async def after_response_endpoint(request: Request) -> Response:
        after_response(noop)
        return PlainTextResponse("ok")

    if variant == "starlette":
        return Starlette(routes=[Route("/", starlette_endpoint)])
    if variant == "starlette_one":
        return Starlette(routes=[Route("/", starlette_one_endpoint)])
    endpoint = state_endpoint if variant == "state" else after_response_endpoint
    return Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(AfterworkMiddleware)])


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(variant),
        host="127.0.0.1",
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


# -- load -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the server on port {port} did not start within {timeout}s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, duration: float, connections: int) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", f"http://127.0.0.1:{port}/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if match is None or total is None or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk failed against port {port}:\n{out}")
    return float(match.group(1)), int(total.group(1))


async def _load(port: int, duration: float, connections: int) -> tuple[float, int]:
    """Fallback load generator: keep-alive GETs on ``connections`` sockets."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    done = 0
    stop_at = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            done += 1
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.monotonic() - start), done


def load(port: int, duration: float, connections: int) -> tuple[float, int]:
    """Requests per second, and requests served."""
    if shutil.which("wrk"):
        return wrk(port, duration, connections)
    return asyncio.run(_load(port, duration, connections))


# -- the in-process queue -------------------------------------------------------------


def inprocess(n: int) -> float:
    from afterwork import Afterwork

    async def go() -> float:
        jobs = Afterwork("memory://", max_pending=n)
        await jobs.start()
        left = n
        finished = asyncio.Event()

        async def noop() -> None:
            nonlocal left
            left -= 1
            if not left:
                finished.set()

        start = time.perf_counter()
        for _ in range(n):
            jobs.enqueue(noop)
        await finished.wait()
        rate = n / (time.perf_counter() - start)
        await jobs.stop()
        return rate

    return asyncio.run(go())


def best(runs: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(runs))


# -- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--serve", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    tool = "wrk" if shutil.which("wrk") else "asyncio load generator (wrk not found)"
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        for variant in VARIANTS:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, str(HERE), "--serve", variant, "--port", str(port)]
            )
            servers[variant] = (port, proc)
        for port, proc in servers.values():
            wait_listening(port, proc)
            load(port, 1.0, args.connections)  # warm up
        for _ in range(args.runs):  # take turns, so drift on the machine hits each alike
            for variant, (port, proc) in servers.items():
                before = cpu_seconds(proc.pid)
                rate, served = load(port, args.duration, args.connections)
                after = cpu_seconds(proc.pid)
                rates[variant].append(rate)
                if before is not None and after is not None:
                    cpu[variant].append((after - before) / served * 1e6)
    finally:
        for _port, proc in servers.values():
            proc.terminate()
        for _port, proc in servers.values():
            proc.wait(timeout=30)

    baseline = max(rates[BASELINE])
    base_cpu = min(cpu[BASELINE], default=0.0)
    rows: list[tuple[str, ...]] = []
    for variant, label in VARIANTS.items():
        rate = max(rates[variant])
        used = min(cpu[variant], default=0.0)
        cpu_cell = f"{used:.0f} us" if used else ""
        if variant == BASELINE:
            rows.append((label, f"{rate:,.0f} req/s", "baseline", cpu_cell, ""))
            continue
        if used and base_cpu:
            cpu_cell += f" ({used / base_cpu - 1:+.1%})"
        change = f"{rate / baseline - 1:+.1%}"
        target = "within 5%" if variant.startswith(("state", "after")) else ""
        rows.append((label, f"{rate:,.0f} req/s", change, cpu_cell, target))
    rate = best(args.runs, lambda: inprocess(args.jobs))
    rows.append(
        (
            f"in-process queue: enqueue + run {args.jobs:,} no-op coroutines",
            f"{rate:,.0f} jobs/s",
            "",
            "",
            ">= 100,000",
        )
    )
    print(
        f"afterwork web benchmark: Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"uvicorn (1 worker, loopback) under {tool}, {args.connections} connections, "
        f"{args.duration:g}s runs, best of {args.runs}\n"
    )
    headers = ("measure", "result", "vs BackgroundTasks", "server CPU/request", "target")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
