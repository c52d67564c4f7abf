"""Real ``redis-server`` processes the Redis tests start for themselves: one with
persistence to restart under a worker, one with a password or a Unix socket, and a
three-node cluster. Each lives in a temporary directory and is shut down after."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on (and, for a cluster node, its bus port + 10000)."""
    for _ in range(100):
        port = random.randint(20_000, 50_000)
        ports = [port, port + 10_000] if with_bus else [port]
        try:
            for p in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


class RedisServer:
    """A ``redis-server`` on a loopback port, its files in ``directory``."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise FileNotFoundError("redis-server is not installed")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", ".",
             "--save", "", *self.args],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"redis-server exited with {code}") from None
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    def stop(self) -> None:
        """Shut down as an operator would: SIGTERM, which flushes the append-only file."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def cli(self, *args: str) -> str:
        assert REDIS_CLI is not None
        return subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout


class RedisCluster:
    """Three master nodes on loopback ports, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", "5000", "--appendonly", "no"]
        self.nodes = [
            RedisServer(directory / f"node{i}", *options, port=free_port(with_bus=True))
            for i in range(nodes)
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        if REDIS_CLI is None:
            raise FileNotFoundError("redis-cli is not installed")
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [REDIS_CLI, "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
