"""The complete example at the top of docs/flask.md runs as written."""

from __future__ import annotations

import re
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask

DOC = Path(__file__).parents[2] / "docs" / "flask.md"


@pytest.fixture
def example() -> Iterator[types.ModuleType]:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0]
    module = types.ModuleType("flask_docs_example")
    module.__file__ = str(DOC)
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        yield module
    finally:
        module.app.extensions["afterwork"].stop(grace_period=1)
        module.jobs.close()
        del sys.modules[module.__name__]


def test_the_first_example(
    example: types.ModuleType, serve: Callable[[Flask], httpx.Client]
) -> None:
    client = serve(example.app)
    response = client.post(
        "/signup", data={"email": "ada@example.com"}, headers={"X-Request-Id": "r-1"}
    )
    assert response.json() == {"email": "ada@example.com"}
    deadline = time.monotonic() + 5
    while len(example.sent) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(example.sent, key=str) == sorted(
        [
            ("r-1", "signup", "ada@example.com"),
            ("r-1", "welcome queued", "ada@example.com"),
            ("r-1", "welcome", "ada@example.com"),
            ("r-1", "count", None),
        ],
        key=str,
    )
