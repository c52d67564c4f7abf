"""Redis benchmark: afterwork and the libraries users would pick instead.

    python bench/redis_peers.py [--only afterwork,rq] [--jobs 10000] [--runs 3]

Run it with the project's environment (afterwork installed with its redis
extra). Each peer gets a virtualenv of its own under ``bench/.peers/<name>/``,
made on the first run and reused while its requirements stay the same
(``--reinstall`` makes them anew, with the newest releases): one per peer
because their pins cannot share one (taskiq-redis wants redis-py 8, saq below 8,
arq below 6). afterwork runs from this environment, so the working tree is what
is measured, with nothing to reinstall after a change.

Everything runs against one redis-server the bench starts on a free loopback
port (``--save "" --appendonly no``), flushed before every measurement; each
library's producer and worker are processes of their own, one library after
another. Prints one table; ``--json`` also writes every figure to a file.
See docs/benchmarks.md for the method, library by library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"

#: name -> (what pip installs into its virtualenv, distributions whose versions are shown).
#: Peers on redis-py get hiredis too, as afterwork[redis] does: each at its fastest.
PEERS: dict[str, tuple[list[str], list[str]]] = {
    "afterwork": ([], ["afterwork", "redis", "hiredis"]),
    "rq": (["rq", "hiredis"], ["rq", "redis"]),
    "celery": (["celery[redis]", "hiredis"], ["celery", "kombu", "redis"]),
    "dramatiq": (["dramatiq[redis]", "hiredis"], ["dramatiq", "redis"]),
    "arq": (["arq"], ["arq", "redis"]),
    "huey": (["huey", "redis", "hiredis"], ["huey", "redis"]),
    "taskiq": (["taskiq", "taskiq-redis", "hiredis"], ["taskiq", "taskiq-redis", "redis"]),
    "saq": (["saq[redis,hiredis]", "typing_extensions"], ["saq", "redis"]),
    "streaq": (["streaq"], ["streaq", "coredis"]),
}
#: The signal that stops a worker gracefully, where it is not SIGTERM.
STOP_SIGNAL = {"huey": signal.SIGINT}
#: Commands the bench itself sends between two snapshots, left out of the counts.
OURS = {"info", "flushall", "ping", "config|resetstat"}


class Unavailable(Exception):
    """A library that cannot be installed or run: its row says why."""


# -- virtualenvs -------------------------------------------------------------------------------


def peer_python(name: str, reinstall: bool) -> str:
    """The python of the library's virtualenv, made (or remade) if need be."""
    if name == "afterwork":
        return sys.executable
    requirements, _ = PEERS[name]
    venv = PEERS_DIR / name
    python = venv / "bin" / "python"
    marker = venv / "bench-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if not reinstall and python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)
    log(f"{name}: installing {' '.join(requirements)} into {venv}")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"install timed out: {' '.join(step[-len(requirements) :])}"
            ) from None
        if done.returncode != 0:
            raise Unavailable(f"install failed: {last_line(done.stderr or done.stdout)}")
    marker.write_text(wanted)
    return str(python)


def versions(python: str, dists: list[str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "def v(d):\n"
        "    try: return m.version(d)\n"
        "    except m.PackageNotFoundError: return '-'\n"
        "print(json.dumps({d: v(d) for d in sys.argv[1:]}))"
    )
    out = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Unavailable(f"cannot start its python: {last_line(out.stderr)}")
    found: dict[str, str] = json.loads(out.stdout)
    return found


# -- the Redis server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(binary: str, workdir: str) -> Iterator[tuple[str, redis.Redis]]:
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", workdir, "--logfile", str(Path(workdir) / "redis.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start: {' '.join(argv)}") from None
                time.sleep(0.02)
        yield url, client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far, including those that scripts make."""
    stats: dict[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def redis_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the server has used (user and system)."""
    cpu: dict[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def commands_between(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(n - before.get(k, 0) for k, n in after.items() if k not in OURS)


# -- one library -------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    versions: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, name: str, python: str, url: str, client: redis.Redis, args: Any) -> None:
        self.name = name
        self.python = python
        self.url = url
        self.client = client
        self.args = args
        self.tmp = Path(args.tmp)
        self.env = dict(
            os.environ,
            BENCH_REDIS_URL=url,
            BENCH_CONCURRENCY=str(args.concurrency),
            PYTHONPATH=str(HERE),
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("AFTERWORK_URL", None)

    def fresh(self) -> dict[str, int]:
        self.client.flushall()
        return command_calls(self.client)

    def producer(self, phase: str, *options: str, env: dict[str, str] | None = None) -> Any:
        argv = [self.python, "-m", "peers", self.name, phase, *options]
        try:
            done = subprocess.run(
                argv,
                cwd=HERE,
                env=self.env | (env or {}),
                capture_output=True,
                text=True,
                timeout=self.args.limit * 3 + 60,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{phase} did not finish in time") from None
        for line in reversed(done.stdout.splitlines()):
            if line.startswith("BENCH-RESULT "):
                return json.loads(line.removeprefix("BENCH-RESULT "))
        raise Unavailable(f"{phase} failed: {last_line(done.stderr or done.stdout)}")

    @contextlib.contextmanager
    def worker(self, mode: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
        self.log_path = log_path = self.tmp / f"{self.name}-worker-{mode}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [self.python, "-m", "peers", self.name, "worker"],
                cwd=HERE,
                env=self.env | {"BENCH_MODE": mode, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                yield proc
            finally:
                self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop gracefully, so what the worker still had to write is counted;
        kill its whole process group if it takes longer than 30 s."""
        if proc.poll() is None:
            proc.send_signal(STOP_SIGNAL.get(self.name, signal.SIGTERM))
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind, if any

    def worker_failed(self, proc: subprocess.Popen[bytes], what: str) -> Unavailable:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        status = f"exited with {proc.returncode}" if proc.poll() is not None else "still running"
        return Unavailable(f"worker {what} ({status}): {last_line(text)}")

    # -- the measurements ------------------------------------------------------------------------

    def enqueue(self, phase: str) -> dict[str, Any]:
        before = self.fresh()
        options = ["--jobs", str(self.args.jobs), "--limit", str(self.args.limit)]
        result: dict[str, Any] = self.producer(phase, *options)
        if "rate" in result:
            result["commands"] = commands_between(before, command_calls(self.client))
        return result

    def drain(self, counts: str | None = None, concurrency: int | None = None) -> dict[str, Any]:
        jobs = self.args.jobs
        before = self.fresh()
        self.producer("fill", "--jobs", str(jobs), "--limit", str(self.args.limit))
        filled, filled_cpu = command_calls(self.client), redis_cpu(self.client)
        del before
        done_file = self.tmp / f"{self.name}-done.json"
        done_file.unlink(missing_ok=True)
        env = {"BENCH_JOBS": str(jobs), "BENCH_DONE": str(done_file)}
        if counts:
            env["BENCH_COUNTS"] = counts
        if concurrency:
            env["BENCH_CONCURRENCY"] = str(concurrency)
        with self.worker("drain", **env) as proc:
            deadline = time.monotonic() + self.args.limit * 2
            while not done_file.exists():
                if proc.poll() is not None:
                    raise self.worker_failed(proc, "stopped before the drain was done")
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"drain of {jobs:,} jobs not done in {self.args.limit * 2:.0f}s"
                    )
                time.sleep(0.005)
            done = json.loads(done_file.read_text())
            peak = peak_rss(done["pid"])
        after, after_cpu = command_calls(self.client), redis_cpu(self.client)
        return {
            "rate": jobs / (done["last"] - done["first"]),
            "seconds": done["last"] - done["first"],
            "worker_cpu": done["cpu"] / jobs,
            "redis_cpu": (after_cpu - filled_cpu) / jobs,
            "commands": commands_between(filled, after),
            "jobs": jobs,
            "peak_rss_mib": peak,
        }

    def latency(self) -> dict[str, Any]:
        self.fresh()
        with self.worker("latency") as proc:
            result = self.producer(
                "latency", "--samples", str(self.args.samples), "--limit", str(self.args.limit)
            )
            if "error" in result:
                raise self.worker_failed(proc, result["error"])
        return dict(result)


def peak_rss(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(x.split()[1]) / 1024 for x in status.splitlines() if x.startswith("VmHWM"))


def run_all(names: list[str], url: str, client: redis.Redis, args: Any) -> list[Row]:
    """Every library's measurements, in rounds: each round measures every library once,
    so a load that comes and goes on the machine falls on all of them alike, and each
    keeps its best round. Then each one's latency (and afterwork's details)."""
    rows = {name: Row(name) for name in names}
    benches: dict[str, Bench] = {}

    def attempt(name: str, what: str, step: Any) -> None:
        if name not in benches:
            return
        log(f"{name}: {what}")
        try:
            step(benches[name], rows[name].results)
        except Unavailable as exc:
            rows[name].notes.append(str(exc))
            log(f"{name}: {exc}")
            del benches[name]

    for name in names:
        try:
            python = peer_python(name, args.reinstall)
            rows[name].versions = versions(python, PEERS[name][1])
            benches[name] = Bench(name, python, url, client, args)
        except Unavailable as exc:
            rows[name].notes.append(str(exc))
            log(f"{name}: {exc}")

    def keep_best(results: dict[str, Any], key: str, result: dict[str, Any]) -> None:
        if key not in results or result.get("rate", 0) > results[key].get("rate", 0):
            results[key] = result

    def one_round(bench: Bench, results: dict[str, Any]) -> None:
        keep_best(results, "one", bench.enqueue("enqueue-one"))
        if bench.name == "afterwork":  # the machine's floor, next to it in time
            floor = bench.producer("ping", "--jobs", str(bench.args.jobs))
            if floor.get("asyncio", 0) > results.get("ping", {}).get("asyncio", 0):
                results["ping"] = floor
        keep_best(results, "batch", bench.enqueue("enqueue-batch"))
        drain = bench.drain()
        peak = max(drain["peak_rss_mib"] or 0, results.get("drain", {}).get("peak_rss_mib") or 0)
        keep_best(results, "drain", drain)
        results["drain"]["peak_rss_mib"] = peak

    for n in range(args.runs):
        for name in names:
            attempt(name, f"round {n + 1} of {args.runs}: enqueue, drain {args.jobs:,}", one_round)
    for name in names:

        def latency(bench: Bench, results: dict[str, Any]) -> None:
            results["latency"] = bench.latency() | {"requested": args.samples}

        attempt(name, f"latency over {args.samples} single jobs", latency)
    if "afterwork" in names:

        def details(bench: Bench, results: dict[str, Any]) -> None:
            results["round_trips"] = afterwork_round_trips(bench)
            log("afterwork: drain with concurrency 100")
            results["drain_100"] = bench.drain(concurrency=100)

        attempt("afterwork", "round trips and concurrency 100", details)
    return list(rows.values())


def afterwork_round_trips(bench: Bench) -> dict[str, Any]:
    """One more run of each phase with afterwork's round trips counted (not timed)."""
    log("afterwork: counting round trips")
    counted = {"BENCH_COUNTS": "1"}
    found: dict[str, Any] = {}
    for phase in ("enqueue-one", "enqueue-batch"):
        before = bench.fresh()
        jobs = str(bench.args.jobs)
        result = bench.producer(
            phase, "--jobs", jobs, "--limit", str(bench.args.limit), env=counted
        )
        commands = commands_between(before, command_calls(bench.client))
        trips, sent, enqueued = result["counts"]["enqueue"]
        found[phase] = {
            "round_trips": trips / enqueued,
            "sent": sent / enqueued,
            # the warm-up jobs are in the server's count too
            "commands": commands / enqueued,
        }
    path = bench.tmp / "afterwork-counts.json"
    drain = bench.drain(counts=str(path))
    tally = json.loads(path.read_text())
    jobs = drain["jobs"]
    found["drain"] = {
        tag: {"round_trips": t / jobs, "sent": s / jobs, "jobs": handled}
        for tag, (t, s, handled) in tally.items()
    }
    found["drain"]["commands"] = drain["commands"] / jobs
    return found


# -- the report --------------------------------------------------------------------------------


def rate(result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    if "skip" in result:
        return "no batch API"
    return f"{result['rate']:,.0f}/s"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def table(rows: list[Row], jobs: int) -> list[str]:
    headers = (
        "library",
        "version",
        "enqueue 1 by 1",
        "enqueue batch",
        f"drain {jobs:,}",
        "start p50",
        "start p99",
        "cmds/job",
        "CPU/job: worker",
        "Redis",
        "worker peak RSS",
    )
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    for row in rows:
        r = row.results
        drain, lat = r.get("drain"), r.get("latency", {})
        version = row.versions.get(row.name, "-")
        cells = (
            row.name,
            version,
            rate(r.get("one")),
            rate(r.get("batch")),
            rate(drain),
            ms(lat.get("p50")),
            ms(lat.get("p99")),
            f"{drain['commands'] / drain['jobs']:.1f}" if drain else "-",
            f"{drain['worker_cpu'] * 1e6:.0f} us" if drain else "-",
            f"{drain['redis_cpu'] * 1e6:.0f} us" if drain else "-",
            f"{drain['peak_rss_mib']:.1f} MiB" if drain and drain["peak_rss_mib"] else "-",
        )
        lines.append(cells)
        notes += [f"{row.name}: {note}" for note in row.notes]
        if lat and lat["samples"] < lat["requested"]:
            notes.append(
                f"{row.name}: start latency over {lat['samples']} jobs, all that fit in the "
                "phase's time limit"
            )
    widths = [max(len(r[i]) for r in [headers, *lines]) for i in range(len(headers))]
    out = []
    for cells in [headers, tuple("-" * w for w in widths), *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return out + (["", *notes] if notes else [])


def targets(rows: list[Row]) -> list[str]:
    ours = next((r for r in rows if r.name == "afterwork"), None)
    if ours is None or "drain" not in ours.results:
        return []
    r = ours.results
    peers = [(row.results["drain"]["rate"], row.name) for row in rows if "drain" in row.results]
    peers = [p for p in peers if p[1] != "afterwork"]
    fastest = max(peers, default=None)
    drain = r["drain"]["rate"]
    lat = r.get("latency", {})
    checks: list[tuple[str, str, bool | None]] = [
        ("drain >= 10,000 jobs/s, one worker process", f"{drain:,.0f}/s", drain >= 10_000),
    ]
    if fastest:
        ratio = drain / fastest[0]
        label = f"drain >= 3x the fastest peer ({fastest[1]}, {fastest[0]:,.0f}/s)"
        checks.append((label, f"{ratio:.1f}x", ratio >= 3))
    one = r.get("one", {}).get("rate", 0)
    batch = r.get("batch", {}).get("rate", 0)
    checks.append(("enqueue >= 10,000 jobs/s one by one", f"{one:,.0f}/s", one >= 10_000))
    checks.append(("enqueue >= 100,000 jobs/s in batches", f"{batch:,.0f}/s", batch >= 100_000))
    if "p50" in lat:
        p50, p99 = lat["p50"], lat["p99"]
        checks.append(("enqueue-to-start p50 < 1 ms", f"{p50 * 1e6:,.0f} us", p50 < 0.001))
        checks.append(("enqueue-to-start p99 < 5 ms", f"{p99 * 1e6:,.0f} us", p99 < 0.005))
    width = max(len(c[0]) for c in checks)
    out = ["afterwork against its targets:"]
    for label, value, met in checks:
        out.append(f"  {label.ljust(width)}  {value:>10}  {'met' if met else 'NOT met'}")
    floor = r.get("ping")
    if floor:
        out.append(
            f"  (the floor under any one-by-one enqueue here, PING answered before the next: "
            f"{floor['asyncio']:,.0f}/s over an asyncio stream, {floor['blocking']:,.0f}/s over "
            "a blocking socket)"
        )
    wide = r.get("drain_100")
    if wide:
        out.append(
            f"  (drain with concurrency 100, so claims and settles of up to 100 jobs: "
            f"{wide['rate']:,.0f}/s; CPU per job {wide['worker_cpu'] * 1e6:.0f} us in the "
            f"worker, {wide['redis_cpu'] * 1e6:.0f} us in Redis)"
        )
    trips = r.get("round_trips")
    if trips:
        out += [
            "",
            "afterwork's Redis traffic per job: round trips, commands sent, commands Redis ran",
        ]
        names = {"enqueue-one": "enqueue one by one", "enqueue-batch": "enqueue in batches"}
        for phase, label in names.items():
            t = trips[phase]
            out.append(
                f"  {label:<34} {t['round_trips']:6.3f}  {t['sent']:6.2f}  {t['commands']:5.1f}"
            )
        drain_trips = trips["drain"]
        labels = {
            "claim": "drain: claim script",
            "wait": "drain: waiting for work (BLPOP)",
            "settle": "drain: settle script",
            "upkeep": "drain: leases, registry, recovery",
            "other": "drain: other",
        }
        for tag, label in labels.items():
            if tag in drain_trips:
                t = drain_trips[tag]
                out.append(f"  {label:<34} {t['round_trips']:6.3f}  {t['sent']:6.3f}")
        total = sum(t["round_trips"] for k, t in drain_trips.items() if k in labels)
        sent = sum(t["sent"] for k, t in drain_trips.items() if k in labels)
        out.append(
            f"  {'drain, all':<34} {total:6.3f}  {sent:6.3f}  {drain_trips['commands']:5.1f}"
        )
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def machine(client: redis.Redis) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    server: dict[str, Any] = client.info("server")
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, Redis {server['redis_version']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated libraries (default: all)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per enqueue run and drain")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs")
    parser.add_argument("--samples", type=int, default=200, help="single jobs for latency")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once per worker")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds any one phase may take")
    parser.add_argument("--reinstall", action="store_true", help="remake the peers' virtualenvs")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    names = list(PEERS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown libraries {unknown}; known: {', '.join(PEERS)}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        with redis_server(args.redis_server, tmp) as (url, client):
            about = machine(client)
            rows = run_all(names, url, client, args)
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    print(f"afterwork and its peers on Redis: {about}; {load}")
    print(
        f"best of {args.runs} runs; drain of {args.jobs:,} no-op jobs by one worker process, "
        f"concurrency {args.concurrency}; start latency over {args.samples} single jobs\n"
    )
    for line in table(rows, args.jobs):
        print(line)
    report = targets(rows)
    if report:
        print()
        for line in report:
            print(line)
    print()
    print(
        "versions: "
        + "; ".join(
            ", ".join(f"{d} {v}" for d, v in row.versions.items()) for row in rows if row.versions
        )
    )
    if args.json:
        data = {
            "machine": about,
            "load": load,
            "args": {k: v for k, v in vars(args).items() if k != "tmp"},
        }
        data["rows"] = [vars(row) for row in rows]
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
