"""Shared fixtures: an app on every embedded broker, and a clock tests can move by hand.

Task functions live at module level in each test module (a worker finds tasks
by name, so nested functions are refused); the fixtures here only build apps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from afterwork import Afterwork, ManualClock

BROKER_URLS = ["memory://", "sqlite:///{tmp_path}/jobs.db"]


def broker_url(template: str, tmp_path: Path) -> str:
    return template.format(tmp_path=tmp_path)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=BROKER_URLS, ids=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return broker_url(request.param, tmp_path)


@pytest.fixture
def app(url: str) -> Iterator[Afterwork]:
    """An app on each embedded broker, on the system clock.

    Its ``home_package`` is ``conftest`` (the module that created it); tests of
    ad hoc imports build their own app in their own module.
    """
    jobs = Afterwork(url)
    yield jobs
    jobs.close()


@pytest.fixture
def manual_app(url: str, clock: ManualClock) -> Iterator[Afterwork]:
    """An app whose time moves only with ``clock.advance()``: delays without sleeping."""
    jobs = Afterwork(url, clock=clock)
    yield jobs
    jobs.close()
