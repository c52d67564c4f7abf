"""Fixtures for the integration tests: a SQLite file, the test's app on it, and processes.

Whatever a test started and left running is killed when it ends, children
included (each process is started in a session of its own).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from afterwork import Afterwork

from .app_under_test import build
from .integration_support import HERE, Processes


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AFTERWORK_")}
    pythonpath = os.pathsep.join(filter(None, [str(HERE), environ.get("PYTHONPATH")]))
    return {**environ, "AFTERWORK_URL": db_url, "PYTHONPATH": pythonpath}


@pytest.fixture
def procs(tmp_path: Path, env: dict[str, str]) -> Iterator[Processes]:
    processes = Processes(tmp_path, env)
    try:
        yield processes
    finally:
        processes.kill_all()


@pytest.fixture
def app(db_url: str) -> Iterator[Afterwork]:
    """The test's side of the database: enqueue jobs, read their records."""
    jobs = build(db_url)
    yield jobs
    jobs.close()


@pytest.fixture
def where(tmp_path: Path) -> str:
    """The directory tasks write their marker files to."""
    folder = tmp_path / "markers"
    folder.mkdir()
    return str(folder)
